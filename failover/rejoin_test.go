package failover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/wal"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name, output string
		impossible   bool
		says         string
	}{
		{"no hint bits", "pg_rewind: error: target server needs to use either data checksums or \"wal_log_hints = on\"\n", true, "wal_log_hints = on"},
		{"no common ancestor", "pg_rewind: error: could not find common ancestor of the source and target cluster's timelines\n", true, "no timeline history"},
		{"WAL not archived", "pg_rewind: servers diverged at WAL location 0/7000000 on timeline 1\npg_rewind: error: could not restore file \"000000010000000000000003\" from archive\npg_rewind: error: could not find previous WAL record at 0/3000060\n", true, "neither in pg_wal nor in the archive"},
		{"PG13 fatal", "pg_rewind: fatal: could not find common ancestor of the source and target cluster's timelines\n", true, "no timeline history"},
		{"source down", "pg_rewind: error: connection to server at \"127.0.0.1\", port 5433 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n", false, "Connection refused"},
		{"PG13 source down", "pg_rewind: fatal: could not connect to server: Connection refused\n", false, "cannot connect"},
		{"restore_command broken", "time=... level=ERROR msg=\"wal-fetch 000000010000000000000003: storage down\"\npg_rewind: error: restore_command failed: child process exited with exit code 255\n", false, "exit code 255"},
		{"other cluster", "pg_rewind: error: source and target clusters are from different systems\n", false, "another cluster"},
		{"unknown", "pg_rewind: error: something new went wrong\n", true, "something new went wrong"},
		{"silent", "", true, "without saying why"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason, impossible := Classify(tc.output)
			if impossible != tc.impossible || !strings.Contains(reason, tc.says) {
				t.Fatalf("Classify = %q, %v; want impossible %v and a reason saying %q", reason, impossible, tc.impossible, tc.says)
			}
		})
	}
}

func TestNewestBackupOn(t *testing.T) {
	const sysID = 7300000000000000001
	id := fmt.Sprint(uint64(sysID))
	lsn := func(s string) wal.LSN {
		l, err := wal.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	// Timeline 2 branched off timeline 1 at 0/7000000.
	history := []wal.HistoryEntry{{TLI: 1, SwitchPoint: lsn("0/7000000")}}
	before := basebackup.Backup{Name: "before", Timeline: 1, StartLSN: lsn("0/2000028"), StopLSN: lsn("0/2000100"), SystemID: id, PGVersion: 150018}
	acrossFork := basebackup.Backup{Name: "across", Timeline: 1, StopTimeline: 1, StartLSN: lsn("0/6000028"), StopLSN: lsn("0/7000100"), SystemID: id, PGVersion: 150018}
	divergent := basebackup.Backup{Name: "divergent", Timeline: 1, StartLSN: lsn("0/9000028"), StopLSN: lsn("0/9000100"), SystemID: id, PGVersion: 150018}
	onNew := basebackup.Backup{Name: "new", Timeline: 2, StartLSN: lsn("0/8000028"), StopLSN: lsn("0/8000100"), SystemID: id, PGVersion: 150018}
	otherCluster := basebackup.Backup{Name: "other", Timeline: 2, StartLSN: lsn("0/8000028"), StopLSN: lsn("0/8000100"), SystemID: "42", PGVersion: 150018}
	otherMajor := basebackup.Backup{Name: "major", Timeline: 2, StartLSN: lsn("0/8000028"), StopLSN: lsn("0/8000100"), SystemID: id, PGVersion: 160002}
	laterTimeline := basebackup.Backup{Name: "tl3", Timeline: 3, StartLSN: lsn("0/9000028"), StopLSN: lsn("0/9000100"), SystemID: id, PGVersion: 150018}

	for _, tc := range []struct {
		name    string
		backups []basebackup.Backup // oldest first
		want    string
	}{
		{"newest on the new timeline", []basebackup.Backup{before, onNew, divergent, otherCluster, otherMajor, laterTimeline}, "new"},
		{"an ancestor's backup from before the fork", []basebackup.Backup{before, acrossFork, divergent}, "before"},
		{"only backups of the lost history", []basebackup.Backup{divergent, acrossFork}, ""},
		{"none", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewestBackupOn(tc.backups, sysID, 15, 2, history)
			if tc.want == "" {
				if !errors.Is(err, basebackup.ErrNotFound) || !strings.Contains(err.Error(), "backup-push") {
					t.Fatalf("NewestBackupOn = %s, %v; want ErrNotFound with advice", b.Name, err)
				}
				return
			}
			if err != nil || b.Name != tc.want {
				t.Fatalf("NewestBackupOn = %s, %v; want %s", b.Name, err, tc.want)
			}
		})
	}
}

func TestCheckStopped(t *testing.T) {
	dir := t.TempDir()
	if err := CheckStopped(dir); err != nil {
		t.Fatalf("no postmaster.pid: %v", err)
	}
	writePID := func(pid int) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(fmt.Sprintf("%d\n%s\n", pid, dir)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A PID file left by a crash, its PID now another program's.
	writePID(os.Getpid())
	if err := CheckStopped(dir); err != nil {
		t.Fatalf("PID of a program that is not postgres: %v", err)
	}
	// A live process named postgres holds it.
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	fake := filepath.Join(t.TempDir(), "postgres")
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fake, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fake, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	writePID(cmd.Process.Pid)
	err = CheckStopped(dir)
	if !errors.Is(err, ErrRunning) || !strings.Contains(err.Error(), "pg_ctl -D") {
		t.Errorf("a running postmaster: %v, want ErrRunning with advice", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := CheckStopped(dir); err != nil {
		t.Fatalf("after the postmaster died: %v", err)
	}
}

func TestConfigFilesAndMoveAside(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "data")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"postgresql.conf":      "port = 5433\ninclude 'local.conf'\n",
		"postgresql.auto.conf": "# Do not edit this file manually!\n",
		"pg_hba.conf":          "local all all peer\n",
		"local.conf":           "shared_buffers = '1GB'\n",
		"PG_VERSION":           "15\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	saved, err := ReadConfigFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved) != 4 {
		t.Fatalf("read %d configuration files, want the 4 *.conf", len(saved))
	}
	// What pg_rewind does: the source's copies replace them.
	for _, name := range []string{"postgresql.conf", "pg_hba.conf"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("from the new primary\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteConfigFiles(dir, saved); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != content {
			t.Fatalf("%s: %q, %v; want %q", name, got, err, content)
		}
		if fi, _ := os.Stat(filepath.Join(dir, name)); fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: mode %v, want 0640", name, fi.Mode().Perm())
		}
	}

	now := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	aside, err := MoveAside(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if want := dir + ".rejoin-20261122T030000Z"; aside != want {
		t.Fatalf("moved to %s, want %s", aside, want)
	}
	if got, err := os.ReadFile(filepath.Join(aside, "local.conf")); err != nil || string(got) != files["local.conf"] {
		t.Fatalf("the set-aside directory lost its files: %q, %v", got, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("the new directory: %v, %v; want it empty", entries, err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o750 {
		t.Errorf("new directory mode %v, want the old one's 0750", fi.Mode().Perm())
	}
	// The same second again: a new name, nothing overwritten.
	again, err := MoveAside(dir, now)
	if err != nil || again != aside+"-2" {
		t.Fatalf("second move: %s, %v; want %s-2", again, err, aside)
	}
}

func TestFindBinDir(t *testing.T) {
	if v, ok := versionMajor("pg_rewind (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"); !ok || v != 15 {
		t.Fatalf("versionMajor = %d, %v", v, ok)
	}
	empty := t.TempDir()
	_, err := FindBinDir(context.Background(), 15, empty)
	if err == nil || !strings.Contains(err.Error(), "--pg-bindir "+empty) || !strings.Contains(err.Error(), "no pg_rewind") {
		t.Fatalf("an empty --pg-bindir: %v", err)
	}
	if dir := "/usr/lib/postgresql/15/bin"; checkBinDir(context.Background(), dir, 15) == "" {
		got, err := FindBinDir(context.Background(), 15, "")
		if err != nil || got != dir {
			t.Fatalf("FindBinDir(15) = %s, %v; want %s", got, err, dir)
		}
		if _, err := FindBinDir(context.Background(), 14, dir); err == nil || !strings.Contains(err.Error(), "not PostgreSQL 14") {
			t.Fatalf("pg_rewind 15 for a PostgreSQL 14 directory: %v", err)
		}
	}
}
