package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
)

// TestStandbyRejoin: after a failover in which the old primary went on
// writing, standby-rejoin rewinds it with pg_rewind, fetching through
// walship wal-fetch the WAL the old primary had already recycled; it
// starts as a streaming standby of the new primary, its divergent rows
// are gone, and it follows the new primary's writes.
func TestStandbyRejoin(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { rejoinByRewind(t, b) })
	}
}

// TestStandbyRejoinRebootstrap: an old primary without data checksums
// and without wal_log_hints cannot be rewound; standby-rejoin sets its
// data directory aside and restores the newest backup of the new
// primary's timeline, and the result follows the new primary.
func TestStandbyRejoinRebootstrap(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	f := startFailoverPair(t, b, false)
	f.fork(t)

	// --no-rebootstrap stops at the reason and leaves the directory alone.
	r := f.rejoin(t, "--no-rebootstrap")
	if r.code != 1 || !strings.Contains(r.stderr, "wal_log_hints = on") || strings.Contains(r.stderr, "panic") {
		t.Fatalf("standby-rejoin --no-rebootstrap: exit %d, want 1 and the reason\n%s", r.code, r.stderr)
	}
	if asides, _ := filepath.Glob(f.old.DataDir() + ".rejoin-*"); len(asides) != 0 {
		t.Fatalf("--no-rebootstrap moved the data directory: %v", asides)
	}

	backup := backupPush(t, b, f.new) // on timeline 2
	r = f.rejoin(t)
	r.mustSucceed(t, "standby-rejoin")
	t.Logf("standby-rejoin:\n%s", r.stderr)
	if strings.TrimSpace(r.stdout) != "rebootstrapped" {
		t.Fatalf("standby-rejoin printed %q, want rebootstrapped\n%s", r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "wal_log_hints = on") || !strings.Contains(r.stderr, "backup "+backup) {
		t.Fatalf("standby-rejoin does not say why it could not rewind, or which backup it restored:\n%s", r.stderr)
	}
	asides, _ := filepath.Glob(f.old.DataDir() + ".rejoin-*")
	if len(asides) != 1 {
		t.Fatalf("want the old data directory set aside once, got %v", asides)
	}
	for _, name := range []string{"PG_VERSION", "global/pg_control", "postmaster.opts"} {
		if _, err := os.Stat(filepath.Join(asides[0], name)); err != nil {
			t.Fatalf("the set-aside directory lost %s: %v", name, err)
		}
	}
	f.followsNew(t)
}

func rejoinByRewind(t *testing.T, b backend) {
	f := startFailoverPair(t, b, true)
	commonSeg := f.fork(t)

	// A primary that still runs is refused.
	f.rejoinRunning(t)
	f.old.Stop(t)

	// A slot that does not exist on the new primary is refused before
	// anything changes; once created, the rejoined server streams from it.
	r := walship(t, t.TempDir(), f.b.env, f.rejoinArgs("--primary-slot", "rejoined")...)
	r.mustFail(t, "standby-rejoin with a missing slot", 1, "pg_create_physical_replication_slot('rejoined')")
	f.new.Psql(t, "SELECT pg_create_physical_replication_slot('rejoined')")

	r = f.rejoin(t, "--primary-slot", "rejoined")
	r.mustSucceed(t, "standby-rejoin")
	t.Logf("standby-rejoin:\n%s", r.stderr)
	if strings.TrimSpace(r.stdout) != "rewound" {
		t.Fatalf("standby-rejoin printed %q, want rewound\n%s", r.stdout, r.stderr)
	}
	// pg_rewind ran restore_command = walship wal-fetch for the WAL from
	// the last common checkpoint, which the old primary had recycled.
	fetched := regexp.MustCompile(`restored (0000000[0-9A-F]{17})`).FindAllStringSubmatch(r.stderr, -1)
	var names []string
	for _, m := range fetched {
		names = append(names, m[1])
	}
	if !strings.Contains(strings.Join(names, " "), commonSeg) {
		t.Fatalf("pg_rewind did not fetch %s (the last common checkpoint's) through walship wal-fetch; fetched %v\n%s", commonSeg, names, r.stderr)
	}
	t.Logf("pg_rewind fetched %d segments through walship wal-fetch: %v", len(names), names)
	if asides, _ := filepath.Glob(f.old.DataDir() + ".rejoin-*"); len(asides) != 0 {
		t.Fatalf("a rewind moved the data directory aside: %v", asides)
	}
	f.followsNew(t)
	if active := f.new.Psql(t, "SELECT active FROM pg_replication_slots WHERE slot_name = 'rejoined'"); active != "t" {
		t.Fatalf("the rejoined server does not stream through slot rejoined (active %q)", active)
	}
}

// failoverPair is a primary archiving through walship, a hot standby of
// it, and later the standby promoted.
type failoverPair struct {
	b        backend
	old, new *pgtest.Cluster
	cacheDir string
}

// startFailoverPair starts the primary (with wal_log_hints, or without
// it and without data checksums: pg_rewind cannot work then) and a hot
// standby made by backup-fetch that streams from it and archives once
// promoted.
func startFailoverPair(t *testing.T, b backend, rewindable bool) *failoverPair {
	t.Helper()
	// No checkpoint but the test's own before the fork: the last common
	// checkpoint is known.
	conf := map[string]string{"wal_keep_size": "0", "max_wal_size": "1GB", "min_wal_size": "32MB", "checkpoint_timeout": "1h"}
	if rewindable {
		conf["wal_log_hints"] = "on"
	}
	f := &failoverPair{b: b, cacheDir: pgtest.NewDir(t, "cache")}
	f.old = primaryFor(t, b, 15, conf)
	if !rewindable {
		f.old.Stop(t)
		disable := exec.Command(pgtest.ClientBin("pg_checksums"), "--disable", "-D", f.old.DataDir())
		f.old.RunAsServerUser(disable)
		if out, err := disable.CombinedOutput(); err != nil {
			t.Fatalf("pg_checksums --disable: %v\n%s", err, out)
		}
		f.old.Restart(t)
	}
	f.old.Psql(t, "CREATE TABLE accounts (id int PRIMARY KEY, v text); INSERT INTO accounts SELECT g, 'before' FROM generate_series(1, 1000) g")
	backupPush(t, b, f.old)
	f.new = startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(f.old), "LATEST"), map[string]string{
		"archive_mode":    "on",
		"archive_command": strings.Join(append(append([]string{walshipBin}, b.args...), "wal-push", "%p"), " "),
	})
	f.new.WaitFor(t, "SELECT count(*) FROM accounts", "1000", 2*time.Minute)
	return f
}

// fork writes on the primary across a checkpoint and a few segments,
// promotes the standby once it has it all (timeline 2), lets the old
// primary write rows of its own and recycle the segments before them,
// and returns the segment of the last checkpoint the two share.
func (f *failoverPair) fork(t *testing.T) string {
	t.Helper()
	f.old.Psql(t, "CHECKPOINT")
	commonSeg := f.old.Psql(t, "SELECT pg_walfile_name(checkpoint_lsn) FROM pg_control_checkpoint()")
	for i := 0; i < 3; i++ {
		f.old.Psql(t, fmt.Sprintf("INSERT INTO accounts SELECT g, 'common' FROM generate_series(%d, %d) g", 1001+100*i, 1100+100*i))
		f.old.Psql(t, "SELECT pg_switch_wal()")
	}
	f.old.Psql(t, "INSERT INTO accounts SELECT g, 'common' FROM generate_series(1301, 1400) g")
	waitArchived(t, f.old)
	lsn := f.old.Psql(t, "SELECT pg_current_wal_lsn()")
	f.new.WaitFor(t, fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'", lsn), "t", 2*time.Minute)

	f.new.Psql(t, "SELECT pg_promote()")
	promoted(t, f.new)
	deadline := time.Now().Add(2 * time.Minute)
	// History files may be stored without compression (they are tiny).
	for !f.b.exists(t, "wal/00000002.history") && !f.b.exists(t, "wal/00000002.history.zst") {
		if time.Now().After(deadline) {
			t.Fatal("the promoted standby did not archive 00000002.history")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Split brain: the old primary goes on writing on timeline 1 and
	// recycles what came before.
	f.old.Psql(t, "INSERT INTO accounts SELECT g, 'divergent' FROM generate_series(5001, 5100) g; UPDATE accounts SET v = 'divergent' WHERE id <= 100")
	for i := 0; i < 3; i++ {
		f.old.Psql(t, "SELECT pg_switch_wal()")
		f.old.Psql(t, "CHECKPOINT")
	}
	if n := f.old.Psql(t, fmt.Sprintf("SELECT count(*) FROM pg_ls_waldir() WHERE name = '%s'", commonSeg)); n != "0" {
		t.Fatalf("the old primary still has %s in pg_wal: the test would not prove pg_rewind fetches from the archive", commonSeg)
	}
	f.new.Psql(t, "INSERT INTO accounts SELECT g, 'new primary' FROM generate_series(2001, 2100) g")
	return commonSeg
}

func (f *failoverPair) rejoinArgs(extra ...string) []string {
	args := append(append([]string{}, f.b.args...), "standby-rejoin", "--pgdata", f.old.DataDir(), "--source", pgConn(f.new))
	return append(args, extra...)
}

func (f *failoverPair) rejoin(t *testing.T, extra ...string) result {
	t.Helper()
	f.old.Stop(t)
	return walship(t, t.TempDir(), append(f.b.env, "WALSHIP_CACHE_DIR="+f.cacheDir), f.rejoinArgs(extra...)...)
}

func (f *failoverPair) rejoinRunning(t *testing.T) {
	t.Helper()
	r := walship(t, t.TempDir(), f.b.env, f.rejoinArgs()...)
	r.mustFail(t, "standby-rejoin of a running server", 1, "PostgreSQL is running")
}

// followsNew starts the rejoined server and checks it is a streaming
// standby of the new primary with exactly its data.
func (f *failoverPair) followsNew(t *testing.T) {
	t.Helper()
	f.old.Restart(t)
	f.old.WaitFor(t, "SELECT pg_is_in_recovery()", "t", time.Minute)
	f.old.WaitFor(t, "SELECT status FROM pg_stat_wal_receiver", "streaming", 2*time.Minute)
	f.new.Psql(t, "INSERT INTO accounts SELECT g, 'after rejoin' FROM generate_series(3001, 3100) g")
	lsn := f.new.Psql(t, "SELECT pg_current_wal_lsn()")
	f.old.WaitFor(t, fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'", lsn), "t", 2*time.Minute)
	if n := f.old.Psql(t, "SELECT count(*) FROM accounts WHERE v = 'divergent'"); n != "0" {
		t.Fatalf("the rejoined server kept %s divergent rows", n)
	}
	if n := f.old.Psql(t, "SELECT count(*) FROM accounts WHERE v = 'after rejoin'"); n != "100" {
		t.Fatalf("the rejoined server has %s of the 100 rows written on the new primary after the rejoin", n)
	}
	want := f.new.TableChecksums(t, "", "accounts")
	if got := f.old.TableChecksums(t, "", "accounts"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the rejoined server's data differs from the new primary's:\n got %v\nwant %v", got, want)
	}
	if tli := f.old.Psql(t, "SELECT received_tli FROM pg_stat_wal_receiver"); tli != "2" {
		t.Fatalf("the rejoined server streams timeline %s, want 2", tli)
	}
	conf := string(readFile(t, filepath.Join(f.old.DataDir(), "postgresql.auto.conf")))
	if !strings.Contains(conf, fmt.Sprintf("primary_conninfo = '%s'", pgConn(f.new))) || !strings.Contains(conf, "wal-fetch %f %p") {
		t.Fatalf("postgresql.auto.conf lacks the standby settings:\n%s", conf)
	}
}

// TestStandbyRejoinUsage: mistakes on the command line are refused with
// exit 2 and one line that says what to do, before anything is touched.
func TestStandbyRejoinUsage(t *testing.T) {
	b := fileBackend(t)
	fake := t.TempDir()
	if err := os.WriteFile(filepath.Join(fake, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		says string
	}{
		{"no --source", []string{"--pgdata", fake}, "--source CONNINFO"},
		{"not a data directory", []string{"--pgdata", t.TempDir(), "--source", "host=x"}, "no PG_VERSION"},
		{"password in --source", []string{"--pgdata", fake, "--source", "host=x password=secret"}, "~/.pgpass"},
		{"bad slot name", []string{"--pgdata", fake, "--source", "host=x", "--primary-slot", "Bad-Slot"}, "slot names"},
		{"configuration elsewhere", []string{"--pgdata", fake, "--source", "host=x"}, "--config-file"},
		{"an argument", []string{"--pgdata", fake, "--source", "host=x", "extra"}, "takes 0 argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := walship(t, t.TempDir(), b.env, append([]string{"standby-rejoin"}, tc.args...)...)
			r.mustFail(t, tc.name, 2, tc.says)
			if strings.Contains(r.stderr, "secret") {
				t.Fatalf("the password went to the log:\n%s", r.stderr)
			}
		})
	}
	if entries, _ := os.ReadDir(fake); len(entries) != 1 {
		t.Fatalf("a refused standby-rejoin wrote into the directory: %v", entries)
	}
}
