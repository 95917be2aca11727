// Package s3test starts a real MinIO server on 127.0.0.1 for tests, so the
// S3 backend is checked against a real implementation of the protocol
// rather than a mock of it.
//
// Each server listens on free loopback ports, keeps its data in a temporary
// directory that the test owns, and is killed (and waited for) when the test
// ends. Stop, Restart, Pause and Resume let fault tests take it away and
// bring it back on the same address with the same data.
//
// The minio binary is found through WALSHIP_MINIO, then
// $(go env GOPATH)/bin/minio, then PATH. Without one the test is skipped,
// except under CI=true, where a missing server is a failure.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIOModule is what `make deps` installs with go install.
const MinIOModule = "github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"

// Region is the region every test server answers for.
const Region = "us-east-1"

// Every server uses the same credentials, so a test binary can put them
// in its environment once (see Env) and still run several servers.
const (
	accessKey = "walship-test"
	secretKey = "walship-test-secret-key"
)

// startTimeout bounds how long a server may take to become healthy. A cold
// start of the 150 MB binary on a loaded two-core machine running -race
// tests takes a few seconds; a minute means something is wrong.
const startTimeout = 60 * time.Second

// Server is a MinIO server run for one test.
type Server struct {
	bin     string
	dir     string // holds data/ and minio.log
	addr    string // S3 API, 127.0.0.1:port
	console string // web console, 127.0.0.1:port
	client  *minio.Client
	opts    Options
	tls     *tlsFiles // with Options.TLS

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is one run of the minio binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been waited for
	err  error         // the result of Wait, valid after done is closed
}

// Start starts a MinIO server with an empty data directory, waits until it
// serves requests and registers its shutdown with t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start for a server set up as o says.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	bin := findMinIO(t)
	s := &Server{bin: bin, dir: t.TempDir(), opts: o}
	if err := os.Mkdir(s.dataDir(), 0o700); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	if o.TLS {
		var err error
		if s.tls, err = newTLSFiles(s.dir); err != nil {
			t.Fatalf("s3test: %v", err)
		}
	}
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("s3test: last lines of the MinIO log:\n%s", s.logTail())
		}
	})

	// A free port can be taken by someone else between our probe and
	// MinIO's bind; a server that exits at once gets fresh ports.
	var err error
	for range 3 {
		s.addr, s.console = freeAddr(t), freeAddr(t)
		if err = s.start(); err == nil || !errors.Is(err, errExited) {
			break
		}
	}
	if err != nil {
		t.Fatalf("s3test: %v\nlast lines of the MinIO log:\n%s", err, s.logTail())
	}

	s.client, err = minio.New(s.addr, &minio.Options{
		Creds:        credentials.NewStaticV4(accessKey, secretKey, ""),
		Region:       Region,
		BucketLookup: minio.BucketLookupPath,
		Secure:       s.tls != nil,
		Transport:    s.transport(),
	})
	if err != nil {
		t.Fatalf("s3test: minio client: %v", err)
	}
	return s
}

// Endpoint is the S3 API's URL, "http://127.0.0.1:PORT" (https with
// Options.TLS).
func (s *Server) Endpoint() string {
	if s.tls != nil {
		return "https://" + s.addr
	}
	return "http://" + s.addr
}

// AccessKey is the server's root user, usable as AWS_ACCESS_KEY_ID.
func (s *Server) AccessKey() string { return accessKey }

// SecretKey is the server's root password, usable as AWS_SECRET_ACCESS_KEY.
func (s *Server) SecretKey() string { return secretKey }

// Env is the environment that points the AWS SDK (and so walship) at this
// server. AWS_EC2_METADATA_DISABLED keeps the SDK from probing the EC2
// metadata address for credentials: tests must not leave the machine.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + accessKey,
		"AWS_SECRET_ACCESS_KEY=" + secretKey,
		"AWS_REGION=" + Region,
		"AWS_ENDPOINT_URL=" + s.Endpoint(),
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Client is an independent S3 client (minio-go) for checking what walship
// wrote without going through walship's own S3 code.
func (s *Server) Client() *minio.Client { return s.client }

// NewBucket creates an empty bucket with a name no other test uses.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := "walship-" + randomHex(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: Region}); err != nil {
		t.Fatalf("s3test: create bucket %s: %v", name, err)
	}
	return name
}

// NewLockedBucket creates an empty bucket with Object Lock enabled (and
// so versioning, which Object Lock needs), without a default retention:
// objects are locked only when their writer asks. MinIO supports this on
// a single drive with no extra setting.
func (s *Server) NewLockedBucket(t testing.TB) string {
	t.Helper()
	name := "walship-lock-" + randomHex(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: Region, ObjectLocking: true}); err != nil {
		t.Fatalf("s3test: create bucket %s with object locking: %v", name, err)
	}
	return name
}

// NewVersionedBucket creates an empty bucket with versioning enabled and
// no Object Lock.
func (s *Server) NewVersionedBucket(t testing.TB) string {
	t.Helper()
	name := s.NewBucket(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.EnableVersioning(ctx, name); err != nil {
		t.Fatalf("s3test: enable versioning on %s: %v", name, err)
	}
	return name
}

// Stop kills the server with SIGKILL, as a crash or power loss would, and
// waits for it to exit. The data directory stays for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.kill()
}

// Restart starts the server again on the same address and data directory
// and waits until it serves requests. A running server is stopped first.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.kill()
	if err := s.start(); err != nil {
		t.Fatalf("s3test: restart: %v\nlast lines of the MinIO log:\n%s", err, s.logTail())
	}
}

// Pause freezes the server with SIGSTOP: connections are still accepted by
// the kernel but nothing answers, which is how a hung server looks.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	pid := s.signal(t, syscall.SIGSTOP)
	if err := waitStopped(pid); err != nil {
		t.Fatalf("s3test: pause: %v", err)
	}
}

// Resume lets a paused server run again.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT)
}

// signal sends sig to the running server and returns its PID.
func (s *Server) signal(t testing.TB, sig syscall.Signal) int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		t.Fatalf("s3test: %v: server is not running", sig)
	}
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("s3test: %v: %v", sig, err)
	}
	return s.proc.cmd.Process.Pid
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }
func (s *Server) logPath() string { return filepath.Join(s.dir, "minio.log") }

var errExited = errors.New("minio exited during start-up")

// start runs the binary and waits until it is healthy.
func (s *Server) start() error {
	// The log is kept beside the data directory: MinIO would take any
	// entry inside it for a bucket.
	log, err := os.OpenFile(s.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own descriptor

	args := []string{"server", "--address", s.addr, "--console-address", s.console}
	if s.tls != nil {
		args = append(args, "--certs-dir", s.tls.certsDir)
	}
	cmd := exec.Command(s.bin, append(args, s.dataDir())...)
	cmd.Env = append(childEnv(),
		"MINIO_ROOT_USER="+accessKey,
		"MINIO_ROOT_PASSWORD="+secretKey,
		"MINIO_UPDATE=off",
	)
	if s.opts.KMS {
		cmd.Env = append(cmd.Env, "MINIO_KMS_SECRET_KEY="+KMSKeyID+":"+kmsKey)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	if err := s.waitHealthy(p); err != nil {
		s.kill()
		return err
	}
	return nil
}

// waitHealthy polls the health endpoints until the server answers S3
// requests, the process exits or startTimeout passes.
func (s *Server) waitHealthy(p *process) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.healthy(hc) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w (%v)", errExited, p.err)
		case <-deadline.C:
			return fmt.Errorf("minio at %s not healthy after %v", s.addr, startTimeout)
		case <-tick.C:
		}
	}
}

// healthy reports whether the server is live with its object layer up
// (live answers 200 before that, marked by X-Minio-Server-Status), and has
// loaded IAM and bucket metadata (cluster), so that the first authenticated
// request does not fail with "server not initialized".
func (s *Server) healthy(hc *http.Client) bool {
	if tr := s.transport(); tr != nil && hc.Transport == nil {
		c := *hc
		c.Transport = tr
		hc = &c
	}
	get := func(path string) bool {
		resp, err := hc.Get(s.Endpoint() + path)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && resp.Header.Get("X-Minio-Server-Status") == ""
	}
	return get("/minio/health/live") && get("/minio/health/cluster")
}

// kill sends SIGKILL to the running process, if any, and waits for it.
func (s *Server) kill() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill() // fails only if it has exited already
	<-p.done
}

// logTail returns the last lines of the MinIO log.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// childEnv is the test's environment without the variables that would
// change how MinIO behaves or which credentials it uses.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "MINIO_") || strings.HasPrefix(kv, "AWS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// findMinIO returns the path of the minio binary, skipping the test when
// there is none (failing it under CI, where a skipped S3 suite would pass
// unnoticed).
func findMinIO(t testing.TB) string {
	t.Helper()
	p, err := minioPath()
	switch {
	case err == nil:
		return p
	case !errors.Is(err, errNoMinIO):
		t.Fatalf("s3test: %v", err)
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("s3test: %v", err)
	}
	t.Skipf("s3test: %v", err)
	return ""
}

var errNoMinIO = errors.New("minio server not found (looked at $WALSHIP_MINIO, $(go env GOPATH)/bin/minio and PATH): " +
	"run `make deps`, which does go install " + MinIOModule)

// minioPath looks for the binary in the documented order.
func minioPath() (string, error) {
	if p := os.Getenv("WALSHIP_MINIO"); p != "" {
		if !isExecutable(p) {
			return "", fmt.Errorf("WALSHIP_MINIO=%s is not an executable file", p)
		}
		return p, nil
	}
	for _, dir := range filepath.SplitList(gopath()) {
		if p := filepath.Join(dir, "bin", "minio"); isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	return "", errNoMinIO
}

// gopath is what `go env GOPATH` says, or Go's default when the go command
// is not at hand.
func gopath() string {
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if p := strings.TrimSpace(string(out)); err == nil && p != "" {
		return p
	}
	return build.Default.GOPATH
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("s3test: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	return hex.EncodeToString(b)
}
