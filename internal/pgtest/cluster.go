package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// confFile holds the harness's settings and Options.Conf, included at
	// the end of postgresql.conf so it overrides what initdb wrote and what
	// a restored copy brought along.
	confFile = "walship_pgtest.conf"

	startTimeout = 120 * time.Second
	stopTimeout  = 120 * time.Second
	logTailLines = 60
)

// Options says what server to start.
type Options struct {
	// Major is the PostgreSQL major version; 0 means DefaultMajor.
	Major int
	// BinDir overrides the server binaries (initdb, pg_ctl, postgres);
	// empty means BinDir(t, Major).
	BinDir string
	// InitdbArgs are extra initdb arguments, e.g. "--wal-segsize=1".
	InitdbArgs []string
	// Conf holds extra postgresql.conf settings, e.g. "archive_mode": "on",
	// overriding the harness's defaults; listen_addresses, port and
	// unix_socket_directories are the harness's alone.
	// Values are written as quoted string literals (PostgreSQL accepts
	// that for every setting), so pass them raw: "walship wal-push %p",
	// not "'walship wal-push %p'"; a value already in single quotes is
	// written as it is.
	Conf map[string]string
	// Env is extra environment for the server, and so for archive_command
	// and restore_command, e.g. AWS_ACCESS_KEY_ID=... for an S3 archive.
	Env []string
	// DataDir, when set, starts an existing data directory, e.g. a
	// restored copy, instead of running initdb. The harness takes it over:
	// it is chowned to the server user, set to mode 0700, and its
	// walship_pgtest.conf is rewritten, so settings a copied primary had
	// there (archive_command, ...) give way to this Conf. To recover from
	// an archive, write recovery.signal into it and pass restore_command
	// in Conf. It is not removed at the end; make it inside a NewDir
	// directory for that.
	DataDir string
	// KeepDataDirMode leaves DataDir's mode as it is (PostgreSQL refuses
	// to start unless it is 0700, or 0750 for group access): for tests
	// of the modes a restore leaves.
	KeepDataDirMode bool
	// NoWait returns as soon as the server is launched, without waiting
	// for it to accept connections: for a server that recovers for a long
	// time or shuts itself down. Use WaitFor afterwards.
	NoWait bool
}

// Cluster is a running PostgreSQL server owned by one test.
type Cluster struct {
	binDir  string
	major   int
	dir     string // socket directory, server log, HOME of the server user
	dataDir string
	logPath string
	env     []string // environment of pg_ctl and the server
	user    serverUser
	port    int

	mu  sync.Mutex
	pid int // last postmaster PID seen, for the kill of last resort
}

// Start starts a PostgreSQL server for the test and stops it when the test
// ends, printing the tail of its log if the test failed.
//
// A new cluster has a superuser postgres and trusts every local and
// 127.0.0.1 connection, replication included; it runs with wal_level
// replica, max_wal_senders 10 and fsync on.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	binDir := opts.BinDir
	if binDir == "" {
		binDir = BinDir(t, opts.Major)
	}
	u := lookupServerUser(t)
	c := &Cluster{binDir: binDir, user: u}
	c.dir = newBaseDir(t, u)
	c.logPath = filepath.Join(c.dir, "server.log")
	c.env = append(setEnv(cleanEnv(), "HOME", c.dir), opts.Env...)
	if err := u.reachable(binDir); err != nil {
		t.Fatalf("pgtest: server binaries in %s: %v (run make deps)", binDir, err)
	}
	major, err := c.serverMajor()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c.major = major
	if opts.Major != 0 && opts.Major != major {
		t.Fatalf("pgtest: %s is PostgreSQL %d, want %d", binDir, major, opts.Major)
	}
	for _, k := range []string{"listen_addresses", "port", "unix_socket_directories"} {
		if _, ok := opts.Conf[k]; ok {
			t.Fatalf("pgtest: Options.Conf may not set %s: the harness chooses it", k)
		}
	}

	if opts.DataDir == "" {
		c.dataDir = filepath.Join(c.dir, "data")
	} else if c.dataDir, err = filepath.Abs(opts.DataDir); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { c.cleanup(t) })
	if opts.DataDir == "" {
		err = c.initdb(opts.InitdbArgs)
	} else {
		err = c.adopt(opts.KeepDataDirMode)
	}
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}

	// The free port may be taken by someone else between our probe and
	// the server's bind; try another one then.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("pgtest: %v", err)
		}
		c.port = port
		if err := c.writeConf(opts.Conf); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
		logStart := fileSize(c.logPath)
		err = c.start(!opts.NoWait)
		if err == nil {
			break
		}
		if attempt < 3 && portTaken(c.logPath, logStart) {
			continue
		}
		t.Fatalf("pgtest: starting PostgreSQL %d: %v", c.major, err)
	}
	return c
}

// Port returns the TCP port the server listens on at 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// Major returns the server's PostgreSQL major version.
func (c *Cluster) Major() int { return c.major }

// DataDir returns the server's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// Log returns the path of the server log.
func (c *Cluster) Log() string { return c.logPath }

// ConnString returns a libpq connection string for database db ("" means
// postgres) as the superuser postgres, usable by pgx and every client tool.
func (c *Cluster) ConnString(db string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s", c.port, db)
}

// Psql runs sql (one or more statements) in database postgres and returns
// its output, unaligned and tuples only, trimmed; it fails the test on any
// error.
func (c *Cluster) Psql(t testing.TB, sql string) string {
	t.Helper()
	out, err := c.query("", sql)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return out
}

// Exec runs sql like Psql but returns the error, with psql's message, to
// the caller.
func (c *Cluster) Exec(sql string) error {
	_, err := c.query("", sql)
	return err
}

func (c *Cluster) query(db, sql string) (string, error) {
	cmd := exec.Command(ClientBin("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1",
		"-d", c.ConnString(db), "-f", "-")
	cmd.Env = append(cleanEnv(), "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(sql)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", errorf(fmt.Sprintf("psql %q", abbreviate(sql)), err, stderr.Bytes())
	}
	return strings.TrimSpace(string(out)), nil
}

// Pgbench runs pgbench against database postgres (unless args name another
// one) and returns its standard output, e.g. Pgbench(t, "-i", "-s", "2") or
// Pgbench(t, "-T", "10", "-c", "4").
func (c *Cluster) Pgbench(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(ClientBin("pgbench"),
		append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", "postgres"}, args...)...)
	cmd.Env = append(cleanEnv(), "PGDATABASE=postgres")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pgtest: %v", errorf("pgbench "+strings.Join(args, " "), err, stderr.Bytes()))
	}
	return string(out)
}

// WaitFor polls sql until it returns want, failing the test after timeout;
// errors (the server is still starting, say) count as not yet. Use it as
// WaitFor(t, "SELECT pg_is_in_recovery()", "f", time.Minute) before reading
// a restored cluster, which accepts connections before recovery ends.
func (c *Cluster) WaitFor(t testing.TB, sql, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 250*time.Millisecond) {
		got, err := c.query("", sql)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("pgtest: %q did not return %q within %v: %v", sql, want, timeout, err)
			}
			t.Fatalf("pgtest: %q returned %q, not %q, within %v", sql, got, want, timeout)
		}
		time.Sleep(delay)
	}
}

// TableChecksums returns, for each table of database db ("" means
// postgres), the md5 of its rows as text in a stable order: equal maps mean
// equal data, whatever the physical layout. Table names go into the SQL as
// written, so they may be schema-qualified.
func (c *Cluster) TableChecksums(t testing.TB, db string, tables ...string) map[string]string {
	t.Helper()
	var sql strings.Builder
	for _, table := range tables {
		fmt.Fprintf(&sql, "SELECT md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text COLLATE \"C\"), '')) FROM %s r;\n", table)
	}
	out, err := c.query(db, sql.String())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != len(tables) {
		t.Fatalf("pgtest: checksums of %d tables: got %q", len(tables), out)
	}
	sums := make(map[string]string, len(tables))
	for i, table := range tables {
		sums[table] = lines[i]
	}
	return sums
}

// RunAsServerUser makes cmd run as the user PostgreSQL runs as (postgres,
// when the tests run as root; otherwise it changes nothing), e.g. for
// pg_basebackup writing into a NewDir directory, or walship writing files a
// server will read. It sets HOME to a directory of that user.
func (c *Cluster) RunAsServerUser(cmd *exec.Cmd) {
	c.user.apply(cmd, c.dir)
}

// Stop shuts the server down (fast mode: sessions are cut off, a shutdown
// checkpoint is written) and waits until it is gone. A server that already
// stopped by itself is left alone.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if err := c.stop("fast"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// StopImmediate stops the server without a shutdown checkpoint, like a
// crash: the next start runs crash recovery.
func (c *Cluster) StopImmediate(t testing.TB) {
	t.Helper()
	if err := c.stop("immediate"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// Restart stops the server (fast mode) if it is running and starts it again
// on the same port, waiting until it accepts connections.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	if err := c.stop("fast"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := c.start(true); err != nil {
		t.Fatalf("pgtest: restarting PostgreSQL %d: %v", c.major, err)
	}
}

func (c *Cluster) serverCmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.binDir, name), args...)
	// PostgreSQL's tools look up their own path with getcwd(), which
	// fails as postgres in a directory only root may read.
	cmd.Dir = c.dir
	cmd.Env = c.env
	c.user.apply(cmd, c.dir)
	return cmd
}

func (c *Cluster) run(cmd *exec.Cmd) error {
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return errorf(filepath.Base(cmd.Path)+" "+strings.Join(cmd.Args[1:], " "), err, stderr.Bytes())
	}
	return nil
}

// serverMajor asks the server binary its version, which also proves the
// server user can run it.
func (c *Cluster) serverMajor() (int, error) {
	cmd := c.serverCmd("postgres", "--version")
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("%s --version: %w", cmd.Path, err)
	}
	major, ok := parseMajor(string(out))
	if !ok {
		return 0, fmt.Errorf("%s --version: unexpected %q", cmd.Path, out)
	}
	return major, nil
}

// parseMajor reads the major version from "postgres (PostgreSQL) 15.18 ...".
func parseMajor(version string) (int, bool) {
	_, rest, ok := strings.Cut(version, "(PostgreSQL) ")
	if !ok {
		return 0, false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	major, err := strconv.Atoi(rest[:end])
	return major, err == nil
}

func (c *Cluster) initdb(extra []string) error {
	args := []string{"-D", c.dataDir, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--data-checksums", "--no-sync"}
	if err := c.run(c.serverCmd("initdb", append(args, extra...)...)); err != nil {
		return err
	}
	// initdb -A trust already trusts everything; spelling it out keeps
	// replication connections (pg_basebackup, pg_receivewal) working
	// whatever a future initdb default becomes.
	hba := "local all all trust\n" +
		"host all all 127.0.0.1/32 trust\n" +
		"local replication all trust\n" +
		"host replication all 127.0.0.1/32 trust\n"
	return c.writeServerFile(filepath.Join(c.dataDir, "pg_hba.conf"), hba)
}

// adopt prepares an existing data directory for the server user.
func (c *Cluster) adopt(keepMode bool) error {
	dir := c.dataDir
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		return fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err := c.user.reachable(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("data directory %s: %w; make it with pgtest.NewDir", dir, err)
	}
	if err := c.user.chownTree(dir); err != nil {
		return err
	}
	if keepMode {
		return nil
	}
	return os.Chmod(dir, 0o700)
}

// writeConf writes the harness's settings and extra into confFile and makes
// sure postgresql.conf includes it last.
func (c *Cluster) writeConf(extra map[string]string) error {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(c.port),
		"unix_socket_directories": c.dir,
		"wal_level":               "replica",
		"max_wal_senders":         "10",
		"fsync":                   "on",
		"logging_collector":       "off",
	}
	for k, v := range extra {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by walship's test harness (internal/pgtest) at each start.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, confValue(settings[k]))
	}
	if err := c.writeServerFile(filepath.Join(c.dataDir, confFile), b.String()); err != nil {
		return err
	}

	conf := filepath.Join(c.dataDir, "postgresql.conf")
	current, err := os.ReadFile(conf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	include := "include '" + confFile + "'"
	if bytes.Contains(current, []byte(include)) {
		return nil
	}
	return c.writeServerFile(conf, string(current)+"\n"+include+"\n")
}

func confValue(v string) string {
	if len(v) >= 2 && strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// writeServerFile writes a file the server must read, owned by the server
// user.
func (c *Cluster) writeServerFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return c.user.chown(path)
}

// start launches the server with pg_ctl and, if wait, returns once it
// accepts connections.
func (c *Cluster) start(wait bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	mode := "-W"
	if wait {
		mode = "-w"
	}
	cmd := c.serverCmd("pg_ctl", mode, "-t", strconv.Itoa(int(startTimeout.Seconds())),
		"-D", c.dataDir, "-l", c.logPath, "start")
	if err := c.run(cmd); err != nil {
		return err
	}
	if !wait {
		// The postmaster writes its PID file first thing; note the PID
		// so cleanup can kill it, unless it exits at once (bad
		// settings), which the caller's WaitFor reports with the log.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if pid, err := c.postmasterPID(); err == nil {
				c.pid = pid
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	}
	pid, err := c.postmasterPID()
	if err != nil {
		return err
	}
	c.pid = pid
	return c.waitReady()
}

// waitReady polls pg_isready until the server accepts connections on its
// TCP port, which is what the tests use.
func (c *Cluster) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		cmd := exec.Command(ClientBin("pg_isready"), "-q", "-h", "127.0.0.1",
			"-p", strconv.Itoa(c.port), "-U", "postgres", "-d", "postgres")
		cmd.Env = cleanEnv()
		err := cmd.Run()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server on port %d not ready after %v: %w", c.port, startTimeout, err)
		}
		time.Sleep(delay)
	}
}

func (c *Cluster) stop(mode string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	pid, err := c.postmasterPID()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // not running
		}
		return err
	}
	c.pid = pid
	if !isPostgres(pid) {
		return nil // crashed or killed, leaving its PID file behind
	}
	cmd := c.serverCmd("pg_ctl", "-w", "-t", strconv.Itoa(int(stopTimeout.Seconds())),
		"-D", c.dataDir, "-m", mode, "stop")
	if err := c.run(cmd); err != nil {
		return err
	}
	if !waitGone(pid, 10*time.Second) {
		return fmt.Errorf("postmaster %d still running after pg_ctl stop", pid)
	}
	return nil
}

// cleanup stops the server however it can: pg_ctl first, then SIGKILL to
// any postmaster of this data directory still alive, whose children exit
// when they see it gone.
func (c *Cluster) cleanup(t testing.TB) {
	err := c.stop("immediate")
	if err != nil {
		t.Errorf("pgtest: stopping PostgreSQL: %v", err)
	}
	c.mu.Lock()
	pids := postmastersOf(c.dataDir)
	if c.pid != 0 && isPostgres(c.pid) {
		pids = append(pids, c.pid)
	}
	c.mu.Unlock()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if !waitGone(pid, 10*time.Second) {
			t.Errorf("pgtest: postmaster %d survived SIGKILL", pid)
		}
	}
	if t.Failed() {
		t.Logf("pgtest: last lines of %s:\n%s", c.logPath, tail(c.logPath, logTailLines))
	}
}

// postmastersOf finds running postmasters of dataDir by their command line
// (pg_ctl runs "postgres -D dataDir"), for when no PID file names them.
func postmastersOf(dataDir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !isPostgres(pid) {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-D" && filepath.Clean(args[i+1]) == dataDir {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// postmasterPID reads the PID from postmaster.pid; the error wraps
// os.ErrNotExist when the server is not running.
func (c *Cluster) postmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("postmaster.pid: bad PID %q", first)
	}
	return pid, nil
}

// isPostgres reports whether pid is a live (not zombie) postgres process,
// so that a PID reused by something else is never killed.
func isPostgres(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...; comm may itself contain parentheses.
	s := string(stat)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+3 > len(s) {
		return false
	}
	return s[open+1:end] == "postgres" && s[end+2] != 'Z'
}

func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; isPostgres(pid); delay = min(2*delay, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(delay)
	}
	return true
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// portTaken reports whether the log, from offset on, says the port was in
// use.
func portTaken(path string, offset int64) bool {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return false
	}
	return bytes.Contains(b[offset:], []byte("Address already in use"))
}

// tail returns the last n lines of a file, or why it cannot.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func trimOutput(b []byte) string {
	const limit = 4000
	s := strings.TrimSpace(string(b))
	if len(s) > limit {
		s = "..." + s[len(s)-limit:]
	}
	return s
}

func abbreviate(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
