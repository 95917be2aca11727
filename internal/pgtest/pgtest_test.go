package pgtest

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testMajors are the servers `make deps` installs: Debian's 15 and those of
// WALSHIP_PG_VERSIONS.
func testMajors() []int {
	majors := []int{DefaultMajor}
	versions, ok := os.LookupEnv("WALSHIP_PG_VERSIONS")
	if !ok {
		versions = "13 17 18"
	}
	for _, f := range strings.Fields(versions) {
		m, err := strconv.Atoi(f)
		if err == nil && m != DefaultMajor {
			majors = append(majors, m)
		}
	}
	return majors
}

func TestChecksumsFollowData(t *testing.T) {
	t.Parallel()
	for _, major := range testMajors() {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			t.Parallel()
			c := Start(t, Options{Major: major})
			if got := c.Major(); got != major {
				t.Fatalf("Major() = %d, want %d", got, major)
			}
			version := c.Psql(t, "SHOW server_version_num")
			if !strings.HasPrefix(version, strconv.Itoa(major)) {
				t.Fatalf("server_version_num = %s, want PostgreSQL %d", version, major)
			}
			c.Pgbench(t, "-i", "-s", "1", "-q")
			tables := []string{"pgbench_accounts", "pgbench_branches", "public.pgbench_history"}

			before := c.TableChecksums(t, "postgres", tables...)
			again := c.TableChecksums(t, "", tables...)
			for _, table := range tables {
				if before[table] != again[table] {
					t.Errorf("%s: checksum changed without writes: %s, then %s", table, before[table], again[table])
				}
			}
			if want := "d41d8cd98f00b204e9800998ecf8427e"; before["public.pgbench_history"] != want {
				t.Errorf("empty table checksum = %s, want md5 of nothing %s", before["public.pgbench_history"], want)
			}

			c.Psql(t, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1")
			after := c.TableChecksums(t, "postgres", tables...)
			if after["pgbench_accounts"] == before["pgbench_accounts"] {
				t.Errorf("pgbench_accounts checksum unchanged after UPDATE: %s", after["pgbench_accounts"])
			}
			if after["pgbench_branches"] != before["pgbench_branches"] {
				t.Errorf("pgbench_branches checksum changed though only pgbench_accounts was written")
			}

			// A physical rewrite of the same rows leaves the checksum alone.
			c.Psql(t, "VACUUM FULL pgbench_accounts")
			if got := c.TableChecksums(t, "", "pgbench_accounts")["pgbench_accounts"]; got != after["pgbench_accounts"] {
				t.Errorf("checksum changed by VACUUM FULL: %s, then %s", after["pgbench_accounts"], got)
			}
		})
	}
}

func TestSmallSegments(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{
		InitdbArgs: []string{"--wal-segsize=1"},
		Conf:       map[string]string{"archive_mode": "on", "archive_command": "/bin/true %p 'quoted'"},
	})
	if got := c.Psql(t, "SHOW wal_segment_size"); got != "1MB" {
		t.Errorf("wal_segment_size = %s, want 1MB", got)
	}
	if got := c.Psql(t, "SHOW archive_command"); got != "/bin/true %p 'quoted'" {
		t.Errorf("archive_command = %q", got)
	}
	if got := c.Psql(t, "SHOW data_checksums"); got != "on" {
		t.Errorf("data_checksums = %s, want on", got)
	}
	// Switching segments goes through archive_command as the server user.
	c.Psql(t, "CREATE TABLE t AS SELECT 1 AS x; SELECT pg_switch_wal()")
	c.WaitFor(t, "SELECT archived_count > 0 FROM pg_stat_archiver", "t", 30*time.Second)
}

func TestCleanupLeavesNoProcess(t *testing.T) {
	t.Parallel()
	var (
		pids    []int
		baseDir string
	)
	t.Run("cluster", func(t *testing.T) {
		c := Start(t, Options{})
		c.Psql(t, "SELECT 1")
		baseDir = filepath.Dir(c.DataDir())
		pid, err := c.postmasterPID()
		if err != nil {
			t.Fatal(err)
		}
		pids = append([]int{pid}, childrenOf(pid)...)
		if len(pids) < 3 {
			t.Fatalf("postmaster %d has children %v; want checkpointer, walwriter and more", pid, pids[1:])
		}
		if !isPostgres(pid) {
			t.Fatalf("postmaster %d is not a running postgres", pid)
		}
		if got := postmastersOf(c.DataDir()); len(got) != 1 || got[0] != pid {
			t.Errorf("postmastersOf(%s) = %v, want [%d]", c.DataDir(), got, pid)
		}
	})
	for _, pid := range pids {
		if isPostgres(pid) {
			t.Errorf("postgres process %d still running after cleanup", pid)
		}
	}
	if _, err := os.Stat(baseDir); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s left behind: %v", baseDir, err)
	}
}

func TestKilledServerIsCleanedUp(t *testing.T) {
	t.Parallel()
	var pid int
	t.Run("cluster", func(t *testing.T) {
		c := Start(t, Options{})
		var err error
		if pid, err = c.postmasterPID(); err != nil {
			t.Fatal(err)
		}
		// A killed postmaster leaves its PID file; Stop treats the
		// server as stopped rather than failing.
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !waitGone(pid, 10*time.Second) {
			t.Fatal("postmaster survived SIGKILL")
		}
		c.Stop(t)
	})
	if isPostgres(pid) {
		t.Errorf("postmaster %d still running", pid)
	}
}

func TestStopRestartAndRestoredCopy(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Conf: map[string]string{"shared_buffers": "16MB"}})
	c.Pgbench(t, "-i", "-s", "1", "-q")
	c.Pgbench(t, "-T", "1", "-c", "2")
	tables := []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}
	want := c.TableChecksums(t, "", tables...)

	c.StopImmediate(t)
	if err := c.Exec("SELECT 1"); err == nil {
		t.Fatal("query succeeded on a stopped server")
	}
	c.Restart(t) // crash recovery
	if got := c.TableChecksums(t, "", tables...); !maps.Equal(got, want) {
		t.Fatalf("after crash recovery: %v, want %v", got, want)
	}
	if got := c.Psql(t, "SHOW shared_buffers"); got != "16MB" {
		t.Errorf("shared_buffers after restart = %s, want 16MB", got)
	}

	// A cold copy made by root, started as a second cluster, holds the
	// same data: the path a restore test takes.
	c.Stop(t)
	c.Stop(t) // already stopped: no-op
	restored := filepath.Join(NewDir(t, "restore"), "data")
	if out, err := exec.Command("cp", "-R", c.DataDir(), restored).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	c.Restart(t)
	r := Start(t, Options{DataDir: restored, NoWait: true})
	r.WaitFor(t, "SELECT pg_is_in_recovery()", "f", time.Minute)
	if r.Port() == c.Port() {
		t.Errorf("restored copy shares port %d with the primary", r.Port())
	}
	if got := r.TableChecksums(t, "", tables...); !maps.Equal(got, want) {
		t.Errorf("restored copy: %v, want %v", got, want)
	}
	c.Psql(t, "UPDATE pgbench_branches SET bbalance = bbalance + 1")
	if maps.Equal(c.TableChecksums(t, "", tables...), r.TableChecksums(t, "", tables...)) {
		t.Error("primary and copy still equal after an UPDATE on the primary")
	}
}

func TestBaseBackupAsServerUser(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{})
	c.Pgbench(t, "-i", "-s", "1", "-q")
	target := filepath.Join(NewDir(t, "basebackup"), "data")
	backup := exec.Command(ClientBin("pg_basebackup"), "-d", c.ConnString(""),
		"-D", target, "-X", "stream", "-c", "fast", "--no-sync")
	c.RunAsServerUser(backup)
	if out, err := backup.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v: %s", err, out)
	}
	verify := exec.Command(ClientBin("pg_verifybackup"), "-q", target)
	c.RunAsServerUser(verify)
	if out, err := verify.CombinedOutput(); err != nil {
		t.Fatalf("pg_verifybackup: %v: %s", err, out)
	}

	id := exec.Command("id", "-u")
	c.RunAsServerUser(id)
	out, err := id.Output()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(c.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if got := strings.TrimSpace(string(out)); got != strconv.Itoa(int(st.Uid)) {
		t.Errorf("RunAsServerUser ran as uid %s; the data directory belongs to %d", got, st.Uid)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v, want 0700", fi.Mode().Perm())
	}
	if os.Geteuid() == 0 && st.Uid == 0 {
		t.Error("running as root, yet the data directory belongs to root")
	}
}

func TestNewDir(t *testing.T) {
	t.Parallel()
	dir := NewDir(t, "archive")
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(dir) != "archive" || fi.Mode().Perm() != 0o700 {
		t.Errorf("NewDir = %s mode %v, want .../archive mode 0700", dir, fi.Mode().Perm())
	}
	u := lookupServerUser(t)
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != u.uid {
		t.Errorf("%s belongs to uid %d, want the server user %d", dir, st.Uid, u.uid)
	}
	if err := u.reachable(dir); err != nil {
		t.Error(err)
	}
	if other := NewDir(t, "archive"); other == dir {
		t.Errorf("NewDir returned %s twice", dir)
	}
}

func TestParseMajor(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", 15, true},
		{"postgres (PostgreSQL) 13.23\n", 13, true},
		{"postgres (PostgreSQL) 18beta1", 18, true},
		{"postgres (PostgreSQL) 9", 9, true},
		{"postgres 15.1", 0, false},
		{"postgres (PostgreSQL) x", 0, false},
	} {
		got, ok := parseMajor(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseMajor(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestConfValue(t *testing.T) {
	for in, want := range map[string]string{
		"on":                  "'on'",
		"walship wal-push %p": "'walship wal-push %p'",
		"it's":                "'it''s'",
		"'already'":           "'already'",
		"":                    "''",
	} {
		if got := confValue(in); got != want {
			t.Errorf("confValue(%q) = %s, want %s", in, got, want)
		}
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		s := string(stat)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		// After "(comm) " come the state and the parent PID.
		fields := strings.Fields(s[end+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}
