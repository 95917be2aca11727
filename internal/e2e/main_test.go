// Package e2e drives the real walship binary from real PostgreSQL servers
// (as archive_command and restore_command) against a local-directory
// archive and a real MinIO server, and checks the restored data.
package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/wal"
)

// binary is the walship binary built for this test run.
var walshipBin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "walship-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// PostgreSQL runs as another OS user when the tests run as root: it
	// must be able to execute the binary.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	walshipBin = filepath.Join(dir, "walship")
	build := exec.Command("go", "build", "-o", walshipBin, "github.com/walship/walship/cmd/walship")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build walship:", err)
		return 1
	}
	return m.Run()
}

// result is what one walship run did.
type result struct {
	code   int
	stdout string
	stderr string
	took   time.Duration
}

// walship runs the binary in dir with env added to a clean environment.
func walship(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(walshipBin, args...)
	cmd.Dir = dir
	cmd.Env = append(baseEnv(), env...)
	return run(t, cmd)
}

// run runs cmd and returns what it did; only a failure to start it at
// all fails the test.
func run(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run %s: %v", cmd.Path, err)
	}
	return r
}

// baseEnv is the environment walship runs with: nothing of the caller's
// AWS or walship settings leaks in, and nothing may contact the EC2
// metadata service.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "AWS_") || strings.HasPrefix(kv, "WALSHIP_") || strings.HasPrefix(kv, "PGDATA=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "AWS_EC2_METADATA_DISABLED=true")
}

func (r result) mustSucceed(t *testing.T, what string) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\nstderr: %s", what, r.code, r.stderr)
	}
}

func (r result) mustFail(t *testing.T, what string, code int, contains string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: exit %d, want %d\nstderr: %s", what, r.code, code, r.stderr)
	}
	if !strings.Contains(r.stderr, contains) {
		t.Fatalf("%s: stderr does not say %q:\n%s", what, contains, r.stderr)
	}
	if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
		t.Fatalf("%s: walship panicked:\n%s", what, r.stderr)
	}
	if lines := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1; lines > 3 {
		t.Errorf("%s: want a short error, got %d lines:\n%s", what, lines, r.stderr)
	}
}

// segment is a synthetic WAL segment.
type segment struct {
	name string
	data []byte
}

func makeSegment(sysID uint64, tli wal.TimeLineID, seg wal.SegNo, segSize int64, fill func([]byte)) segment {
	name, data := waltest.Segment(sysID, tli, seg, segSize, fill)
	return segment{name: name, data: data}
}

var (
	compressible   = waltest.Compressible
	incompressible = waltest.Incompressible
)

// writeSegment writes seg into dir/pg_wal and returns its path.
func writeSegment(t *testing.T, dir string, seg segment) string {
	t.Helper()
	walDir := filepath.Join(dir, "pg_wal")
	if err := os.MkdirAll(walDir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(walDir, seg.name)
	if err := os.WriteFile(path, seg.data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func kill9(p *os.Process) {
	p.Signal(syscall.SIGKILL)
	p.Wait()
}
