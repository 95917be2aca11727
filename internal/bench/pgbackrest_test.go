package bench

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
)

// pgbackrestSegments is how many WAL segments the archive-push and
// archive-get rows move.
const pgbackrestSegments = 16

var segmentName = regexp.MustCompile(`^[0-9A-F]{24}$`)

// TestBenchPgBackRest runs walship beside pgBackRest (Debian's package,
// when installed: make bench-deps) on the same data, both with a local
// directory repository and zstd level 3: archive-push and archive-get of
// the same pgbench WAL segments, one process per segment as PostgreSQL
// calls them and with each tool's way of working ahead (walship's
// look-ahead and prefetch, pgBackRest's asynchronous archiving), then a
// full backup of a pgbench database of about 1 GB (WALSHIP_BENCH_SCALE,
// default 70, as TestBenchBackup) and its restore into an empty
// directory. Every fetched segment must equal the pushed one, and both
// restored clusters must recover to the source's data.
func TestBenchPgBackRest(t *testing.T) {
	skipUnlessBench(t)
	pgbackrest, err := exec.LookPath("pgbackrest")
	if err != nil {
		t.Skip("pgbackrest is not installed: run make bench-deps (Debian's pgbackrest package) to compare walship with it")
	}
	scale := 70
	if v, err := strconv.Atoi(os.Getenv("WALSHIP_BENCH_SCALE")); err == nil && v > 0 {
		scale = v
	}
	version, err := exec.Command(pgbackrest, "version").Output()
	if err != nil {
		t.Fatalf("pgbackrest version: %v", err)
	}
	bin := buildWalship(t)

	// The source cluster copies its WAL aside, for the archive-push rows.
	walCopy := pgtest.NewDir(t, "walcopy")
	c := pgtest.Start(t, pgtest.Options{Conf: map[string]string{
		"archive_mode": "on", "archive_command": "cp %p " + walCopy + "/%f", "max_wal_size": "4GB",
	}})
	c.Pgbench(t, "-i", "-s", strconv.Itoa(scale), "-q")
	last := c.Psql(t, "SELECT pg_walfile_name(pg_switch_wal())")
	c.WaitFor(t, fmt.Sprintf("SELECT coalesce(last_archived_wal, '') >= '%s' FROM pg_stat_archiver", last), "t", 5*time.Minute)
	want := c.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts")
	size, _ := strconv.ParseInt(c.Psql(t, "SELECT sum(pg_database_size(oid)) FROM pg_database"), 10, 64)
	segs := steadySegments(t, walCopy, pgbackrestSegments)

	// pgBackRest reads its settings from a file of its own, never from
	// /etc; each command names its repository (and, for the archive rows,
	// its data directory and spool) on the command line.
	confDir := pgtest.NewDir(t, "pgbackrest")
	pbLocks := pgtest.NewDir(t, "pgbr-lock")
	conf := fmt.Sprintf(`[global]
log-path=%s
lock-path=%s
log-level-console=warn
log-level-stderr=off
log-level-file=off
compress-type=zst
compress-level=3
start-fast=y

[bench]
pg1-path=%s
pg1-port=%d
pg1-socket-path=%s
`, pgtest.NewDir(t, "pgbr-log"), pbLocks, c.DataDir(), c.Port(), c.Psql(t, "SHOW unix_socket_directories"))
	if err := os.WriteFile(filepath.Join(confDir, "pgbackrest.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	pgbrArgs := []string{"--config-path=" + confDir, "--stanza=bench"}
	pgbr := func(args ...string) *exec.Cmd {
		cmd := exec.Command(pgbackrest, append(slicesClone(pgbrArgs), args...)...)
		cmd.Dir = confDir
		return cmd
	}
	cacheDirs := map[string]string{} // walship's cache, one per archive
	walship := func(archive string, args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"--log-level", "warn"}, args...)...)
		cmd.Env = append(os.Environ(), "WALSHIP_REPO=file://"+archive, "WALSHIP_CACHE_DIR="+cacheDirs[archive])
		return cmd
	}
	// run runs cmd as PostgreSQL's OS user, which both tools must be to
	// read the data directory, and returns how long it took. Its output
	// goes to a file, as PostgreSQL's does to its log: helpers both tools
	// leave running in the background (walship's prefetcher, pgBackRest's
	// asynchronous process) may keep it open after cmd exits.
	outputs := t.TempDir()
	run := func(what string, cmd *exec.Cmd) time.Duration {
		t.Helper()
		c.RunAsServerUser(cmd)
		out, err := os.CreateTemp(outputs, "out")
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		cmd.Stdout, cmd.Stderr = out, out
		start := time.Now()
		err = cmd.Run()
		d := time.Since(start)
		if err != nil {
			text, _ := os.ReadFile(out.Name())
			t.Fatalf("%s: %v\n%s", what, err, text)
		}
		return d
	}
	newRepo := func() string {
		t.Helper()
		repo := pgtest.NewDir(t, "pgbr-repo")
		run("pgbackrest stanza-create", pgbr("--repo1-path="+repo, "stanza-create"))
		return repo
	}
	newArchive := func() string {
		archive := pgtest.NewDir(t, "archive")
		cacheDirs[archive] = pgtest.NewDir(t, "cache")
		return archive
	}

	type result struct {
		what, unit      string
		walship, pgbr   float64 // the figures printed
		walshipT, pgbrT time.Duration
	}
	var rows []result
	// add records a row whose figures are amount per second, or seconds
	// when amount is 0.
	add := func(what, unit string, amount float64, ws, pb time.Duration) {
		r := result{what: what, unit: unit, walshipT: ws, pgbrT: pb}
		if amount > 0 {
			r.walship, r.pgbr = amount/ws.Seconds(), amount/pb.Seconds()
		} else {
			r.walship, r.pgbr = ws.Seconds(), pb.Seconds()
		}
		rows = append(rows, r)
	}

	// archive-push, as PostgreSQL's archiver calls it: one process for the
	// oldest .ready file, mark it .done, repeat.
	n := float64(len(segs))
	push := func(what string, command func(dataDir, seg string) *exec.Cmd) time.Duration {
		t.Helper()
		dataDir := fakeDataDir(t, c, segs, true)
		start := time.Now()
		for _, seg := range segs {
			name := filepath.Base(seg)
			cmd := command(dataDir, filepath.Join("pg_wal", name))
			cmd.Dir = dataDir
			run(what+" "+name, cmd)
			status := filepath.Join(dataDir, "pg_wal", "archive_status", name)
			if err := os.Rename(status+".ready", status+".done"); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(start)
	}
	wsSeq, wsAhead := newArchive(), newArchive()
	pbSync, pbAsync := newRepo(), newRepo()
	wsPush1 := push("walship wal-push --parallel 1", func(_, seg string) *exec.Cmd {
		return walship(wsSeq, "wal-push", "--parallel", "1", seg)
	})
	pbPush1 := push("pgbackrest archive-push", func(dataDir, seg string) *exec.Cmd {
		return pgbr("--repo1-path="+pbSync, "--pg1-path="+dataDir, "archive-push", seg)
	})
	add("archive-push: --parallel 1 / sync (one process per segment)", "segments/s", n, wsPush1, pbPush1)
	wsPush4 := push("walship wal-push --parallel 4", func(_, seg string) *exec.Cmd {
		return walship(wsAhead, "wal-push", "--parallel", "4", seg)
	})
	pbSpool := pgtest.NewDir(t, "pgbr-spool")
	pbPush4 := push("pgbackrest archive-push --archive-async", func(dataDir, seg string) *exec.Cmd {
		return pgbr("--repo1-path="+pbAsync, "--pg1-path="+dataDir, "--spool-path="+pbSpool,
			"--archive-async", "--process-max=4", "archive-push", seg)
	})
	waitGone(t, "pgBackRest's asynchronous archive-push", pbSpool)
	add("archive-push: --parallel 4 / archive-async, process-max=4", "segments/s", n, wsPush4, pbPush4)
	for _, archive := range []string{wsSeq, wsAhead, pbSync, pbAsync} {
		assertArchived(t, archive, segs)
	}

	// archive-get, as archive recovery calls it: one process per segment,
	// into pg_wal/RECOVERYXLOG, which PostgreSQL reads and removes.
	mb := n * 16
	get := func(what string, command func(dataDir, name, dest string) *exec.Cmd) time.Duration {
		t.Helper()
		dataDir := fakeDataDir(t, c, nil, false)
		signal := filepath.Join(dataDir, "recovery.signal")
		if err := os.WriteFile(signal, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		chownTree(t, signal, dataDir)
		dest := filepath.Join("pg_wal", "RECOVERYXLOG")
		start := time.Now()
		for _, seg := range segs {
			name := filepath.Base(seg)
			cmd := command(dataDir, name, dest)
			cmd.Dir = dataDir
			run(what+" "+name, cmd)
			if !sameFile(t, seg, filepath.Join(dataDir, dest)) {
				t.Fatalf("%s of %s returned other bytes", what, name)
			}
			if err := os.Remove(filepath.Join(dataDir, dest)); err != nil {
				t.Fatal(err)
			}
		}
		d := time.Since(start)
		// Recovery ends: walship's prefetcher sees that and exits.
		if err := os.Remove(signal); err != nil {
			t.Fatal(err)
		}
		waitGone(t, "walship's prefetcher", dataDir)
		return d
	}
	wsGet1 := get("walship wal-fetch --prefetch 0", func(_, name, dest string) *exec.Cmd {
		return walship(wsSeq, "wal-fetch", "--prefetch", "0", name, dest)
	})
	pbGet1 := get("pgbackrest archive-get", func(dataDir, name, dest string) *exec.Cmd {
		return pgbr("--repo1-path="+pbSync, "--pg1-path="+dataDir, "archive-get", name, dest)
	})
	add("archive-get: --prefetch 0 / sync (one process per segment)", "MB/s", mb, wsGet1, pbGet1)
	wsGet8 := get("walship wal-fetch --prefetch 8", func(_, name, dest string) *exec.Cmd {
		return walship(wsAhead, "wal-fetch", "--prefetch", "8", name, dest)
	})
	pbGetSpool := pgtest.NewDir(t, "pgbr-spool")
	pbGet4 := get("pgbackrest archive-get --archive-async", func(dataDir, name, dest string) *exec.Cmd {
		return pgbr("--repo1-path="+pbAsync, "--pg1-path="+dataDir, "--spool-path="+pbGetSpool,
			"--archive-async", "--process-max=4", "archive-get", name, dest)
	})
	waitGone(t, "pgBackRest's asynchronous archive-get", pbGetSpool)
	add("archive-get: --prefetch 8 / archive-async, process-max=4", "MB/s", mb, wsGet8, pbGet4)

	// Backups: from now on the source archives into one repository of
	// each tool, since a backup is complete only once its last WAL
	// segment is archived (pgBackRest's archive-check, walship's
	// backup-push).
	wsMain, pbMain := newArchive(), newRepo()
	archiveCommand := fmt.Sprintf("%s --log-level warn --repo file://%s wal-push %%p && %s %s --repo1-path=%s archive-push %%p",
		bin, wsMain, pgbackrest, strings.Join(pgbrArgs, " "), pbMain)
	c.Psql(t, "ALTER SYSTEM SET archive_command = '"+strings.ReplaceAll(archiveCommand, "'", "''")+"'")
	c.Psql(t, "SELECT pg_reload_conf()")
	c.Psql(t, "CHECKPOINT")
	readTree(t, c.DataDir()) // both backups read the same warm files
	stopSwitching := make(chan struct{})
	switched := make(chan struct{})
	go func() { // the backup's last segment must be archived
		defer close(switched)
		for {
			select {
			case <-stopSwitching:
				return
			case <-time.After(time.Second):
				c.Exec("SELECT pg_switch_wal()")
			}
		}
	}()
	conn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port())
	wsBackup := run("walship backup-push", walship(wsMain, "backup-push", "--pg", conn))
	pbBackup := run("pgbackrest backup", pgbr("--repo1-path="+pbMain, "--process-max=2", "--type=full", "backup"))
	close(stopSwitching)
	<-switched
	add(fmt.Sprintf("backup of %d MB: backup-push / backup --type=full, process-max=2", size>>20), "seconds", 0, wsBackup, pbBackup)

	emptyDir := func() string {
		dir := filepath.Join(pgtest.NewDir(t, "restore"), "data")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		chownTree(t, dir, filepath.Dir(dir))
		return dir
	}
	wsDest, pbDest := emptyDir(), emptyDir()
	wsRestore := run("walship backup-fetch", walship(wsMain, "backup-fetch", "LATEST", wsDest))
	pbRestore := run("pgbackrest restore", pgbr("--repo1-path="+pbMain, "--pg1-path="+pbDest, "--process-max=2", "restore"))
	add("restore: backup-fetch / restore, process-max=2", "seconds", 0, wsRestore, pbRestore)
	c.Stop(t)
	for _, dest := range []string{wsDest, pbDest} {
		r := pgtest.Start(t, pgtest.Options{DataDir: dest, NoWait: true, Conf: map[string]string{"archive_mode": "off", "max_wal_size": "4GB"}})
		r.WaitFor(t, "SELECT pg_is_in_recovery()", "f", 5*time.Minute)
		if got := r.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts"); got != want {
			t.Fatalf("cluster restored into %s holds %q, want %q", dest, got, want)
		}
		r.Stop(t)
	}

	fmt.Printf("\nwalship beside %s, same data, local directory repositories, zstd level 3 for both\n", strings.TrimSpace(string(version)))
	fmt.Printf("(%d segments of pgbench WAL; time ratio = walship time / pgBackRest time, below 1: walship is faster;\n", len(segs))
	fmt.Printf("S3 not compared: pgBackRest's S3 repositories need TLS, and the test MinIO serves plain HTTP)\n")
	fmt.Printf("%-68s %-11s %9s %11s %11s\n", "operation: walship / pgBackRest", "unit", "walship", "pgBackRest", "time ratio")
	for _, r := range rows {
		fmt.Printf("%-68s %-11s %9.1f %11.1f %10.2fx\n", r.what, r.unit, r.walship, r.pgbr, r.walshipT.Seconds()/r.pgbrT.Seconds())
	}
}

// steadySegments returns n segments from the middle of the WAL copied into
// dir, past initdb's, which are unlike the rest.
func steadySegments(t *testing.T, dir string, n int) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var segs []string
	for _, e := range entries {
		if segmentName.MatchString(e.Name()) {
			segs = append(segs, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(segs)
	if len(segs) < n+2 {
		t.Fatalf("the source archived %d segments, want at least %d: raise WALSHIP_BENCH_SCALE", len(segs), n+2)
	}
	first := (len(segs) - n) / 2
	return segs[first : first+n]
}

// fakeDataDir makes a data directory of the source cluster's control file
// and version, as both tools check the WAL they move against them, with
// segs in pg_wal and, when ready, waiting in archive_status.
func fakeDataDir(t *testing.T, c *pgtest.Cluster, segs []string, ready bool) string {
	t.Helper()
	dir := pgtest.NewDir(t, "pgdata")
	status := filepath.Join(dir, "pg_wal", "archive_status")
	for _, d := range []string{status, filepath.Join(dir, "global")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"PG_VERSION", filepath.Join("global", "pg_control")} {
		copyFile(t, filepath.Join(c.DataDir(), f), filepath.Join(dir, f))
	}
	for _, seg := range segs {
		name := filepath.Base(seg)
		dst := filepath.Join(dir, "pg_wal", name)
		if err := os.Link(seg, dst); err != nil {
			copyFile(t, seg, dst)
		}
		if ready {
			if err := os.WriteFile(filepath.Join(status, name+".ready"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	chownTree(t, dir, dir)
	return dir
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// assertArchived fails unless every segment has a zstd-compressed file
// below repo whose name starts with the segment's: both tools name
// archived WAL that way (walship NAME.zst, pgBackRest NAME-SHA1.zst).
func assertArchived(t *testing.T, repo string, segs []string) {
	t.Helper()
	found := map[string]bool{}
	err := filepath.WalkDir(repo, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name := d.Name(); !d.IsDir() && len(name) > 24 && segmentName.MatchString(name[:24]) {
			if !strings.HasSuffix(name, ".zst") {
				return fmt.Errorf("%s is not zstd-compressed", path)
			}
			found[name[:24]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range segs {
		if !found[filepath.Base(seg)] {
			t.Fatalf("%s is not archived in %s", filepath.Base(seg), repo)
		}
	}
}

// waitGone waits until no process has dir in its command line: the
// helpers both tools leave behind a call (walship's prefetcher,
// pgBackRest's asynchronous process) name the data directory or spool
// they serve, and the next measurement must not share the machine with
// them. It fails the test after a minute.
func waitGone(t *testing.T, what, dir string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		pids, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		running := false
		for _, p := range pids {
			if cmdline, err := os.ReadFile(p); err == nil && strings.Contains(string(cmdline), dir) {
				running = true
				break
			}
		}
		if !running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still runs a minute after its last call", what)
		}
	}
}

// readTree reads every file below root once, so that the first timed
// reader does not pay for a cold cache the next one does not.
func readTree(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil // files come and go in a running cluster
		}
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		defer f.Close()
		_, err = io.Copy(io.Discard, f)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
