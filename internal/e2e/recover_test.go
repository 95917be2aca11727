package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walship/walship/internal/pgtest"
)

var pgbenchTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}

// TestArchiveAndRecover: a primary archives through walship wal-push while
// pgbench writes; copies taken with pg_basebackup -X none (no WAL of their
// own) recover through walship wal-fetch, to the end of the archive and to
// a recovery_target_time, and their tables equal the primary's at that
// point. On PostgreSQL 15 with 16 MB and 1 MB segments, and on 13 and 17.
func TestArchiveAndRecover(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	cases := []struct {
		major  int
		segMB  int
		target bool // also recover to a recovery_target_time
	}{
		{major: 15, segMB: 16, target: true},
		{major: 15, segMB: 1},
		{major: 13, segMB: 16, target: true},
		{major: 17, segMB: 16},
	}
	for _, newBackend := range backends() {
		for _, tc := range cases {
			be := newBackend
			tc := tc
			t.Run("", func(t *testing.T) {
				b := be(t)
				t.Logf("PostgreSQL %d, %d MB segments, %s archive", tc.major, tc.segMB, b.name)
				archiveAndRecover(t, b, tc.major, tc.segMB, tc.target)
			})
		}
	}
}

func archiveAndRecover(t *testing.T, b backend, major, segMB int, target bool) {
	pushCmd := strings.Join(append(append([]string{walshipBin}, b.args...), "wal-push", "%p"), " ")
	fetchCmd := strings.Join(append(append([]string{walshipBin}, b.args...), "wal-fetch", "%f", "%p"), " ")
	env := append(b.env, "AWS_EC2_METADATA_DISABLED=true")

	primary := pgtest.Start(t, pgtest.Options{
		Major:      major,
		InitdbArgs: []string{"--wal-segsize=" + strconv.Itoa(segMB)},
		Conf: map[string]string{
			"archive_mode":    "on",
			"archive_command": pushCmd,
		},
		Env: env,
	})
	primary.Pgbench(t, "-i", "-s", "2", "-q")

	base := pgtest.NewDir(t, "base")
	bb := exec.Command(pgtest.ClientBin("pg_basebackup"), "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port()),
		"-U", "postgres", "-D", base, "-X", "none", "-c", "fast")
	if major > 15 {
		// pg_basebackup 15 refuses newer servers: copy the data directory
		// between pg_backup_start and pg_backup_stop instead.
		bb = nil
	}
	if bb != nil {
		primary.RunAsServerUser(bb)
		if out, err := bb.CombinedOutput(); err != nil {
			t.Fatalf("pg_basebackup: %v\n%s", err, out)
		}
	} else {
		coldCopy(t, primary, base)
	}

	primary.Pgbench(t, "-T", "3", "-c", "2")
	atTarget := primary.TableChecksums(t, "", pgbenchTables...)
	targetTime := primary.Psql(t, "SELECT clock_timestamp()")
	primary.Pgbench(t, "-T", "3", "-c", "2")
	atEnd := primary.TableChecksums(t, "", pgbenchTables...)
	if fmt.Sprint(atTarget) == fmt.Sprint(atEnd) {
		t.Fatal("the second pgbench run changed nothing: the target-time check would prove nothing")
	}
	waitArchived(t, primary)
	primary.Stop(t)

	recoverCopy := func(t *testing.T, conf map[string]string) *pgtest.Cluster {
		dir := pgtest.NewDir(t, "restored")
		cp := exec.Command("cp", "-a", base+"/.", dir)
		if out, err := cp.CombinedOutput(); err != nil {
			t.Fatalf("copy base backup: %v\n%s", err, out)
		}
		touch := exec.Command("touch", filepath.Join(dir, "recovery.signal"))
		primary.RunAsServerUser(touch)
		if out, err := touch.CombinedOutput(); err != nil {
			t.Fatalf("recovery.signal: %v\n%s", err, out)
		}
		conf["restore_command"] = fetchCmd
		conf["archive_mode"] = "off"
		conf["recovery_target_action"] = "promote"
		c := pgtest.Start(t, pgtest.Options{Major: major, DataDir: dir, Conf: conf, Env: env, NoWait: true})
		c.WaitFor(t, "SELECT pg_is_in_recovery()", "f", 3*time.Minute)
		return c
	}

	t.Run("to end of archive", func(t *testing.T) {
		c := recoverCopy(t, map[string]string{})
		if got := c.TableChecksums(t, "", pgbenchTables...); fmt.Sprint(got) != fmt.Sprint(atEnd) {
			t.Fatalf("restored tables differ from the primary's:\n got %v\nwant %v", got, atEnd)
		}
		if n := countRestored(t, c); n < 2 {
			t.Fatalf("the server log shows %d segments restored by walship; want several", n)
		}
	})
	if !target {
		return
	}
	t.Run("to recovery_target_time", func(t *testing.T) {
		c := recoverCopy(t, map[string]string{"recovery_target_time": targetTime})
		if got := c.TableChecksums(t, "", pgbenchTables...); fmt.Sprint(got) != fmt.Sprint(atTarget) {
			t.Fatalf("tables restored to %s differ from the primary's then:\n got %v\nwant %v", targetTime, got, atTarget)
		}
	})
}

// coldCopy makes a base copy of a running primary with the low-level
// backup API (pg_backup_start, copy, pg_backup_stop), for servers
// pg_basebackup 15 cannot talk to.
func coldCopy(t *testing.T, primary *pgtest.Cluster, dest string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, primary.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_backup_start('walship-e2e', true)"); err != nil {
		t.Fatal(err)
	}
	if err := copyDataDir(primary.DataDir(), dest); err != nil {
		t.Fatal(err)
	}
	var label string
	if err := conn.QueryRow(ctx, "SELECT labelfile FROM pg_backup_stop(true)").Scan(&label); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dest, "backup_label")
	if err := os.WriteFile(path, []byte(label), 0o600); err != nil {
		t.Fatal(err)
	}
	chownLikeParent(t, path)
}

// copyDataDir copies a live data directory as a base backup does: pg_wal
// empty, no postmaster.pid, files that vanish while copying skipped.
func copyDataDir(src, dest string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dest, rel)
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		switch {
		case rel == "postmaster.pid" || rel == "postmaster.opts":
			return nil
		case d.IsDir():
			if err := os.MkdirAll(target, info.Mode().Perm()); err != nil {
				return err
			}
			if err := chownAs(target, info); err != nil {
				return err
			}
			if strings.HasPrefix(rel, "pg_wal") && rel != "pg_wal" && rel != filepath.Join("pg_wal", "archive_status") {
				return fs.SkipDir
			}
			return nil
		case strings.HasPrefix(rel, "pg_wal"+string(filepath.Separator)):
			return nil
		case !info.Mode().IsRegular():
			return nil
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		if err := os.WriteFile(target, data, info.Mode().Perm()); err != nil {
			return err
		}
		return chownAs(target, info)
	})
}

func chownAs(path string, like fs.FileInfo) error {
	if uid, gid, ok := owner(like); ok {
		return os.Lchown(path, uid, gid)
	}
	return nil
}

// waitArchived switches to a new segment and waits until the archiver has
// shipped it, so all committed data is in the archive.
func waitArchived(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	last := c.Psql(t, "SELECT pg_walfile_name(pg_switch_wal())")
	c.WaitFor(t, fmt.Sprintf("SELECT coalesce(last_archived_wal, '') >= '%s' FROM pg_stat_archiver", last), "t", 2*time.Minute)
	if failed := c.Psql(t, "SELECT failed_count FROM pg_stat_archiver"); failed != "0" {
		t.Fatalf("the archiver failed %s times; see %s", failed, c.Log())
	}
}

// countRestored counts the segments walship wal-fetch restored, from the
// server log (walship logs to stderr, which the server writes there).
func countRestored(t *testing.T, c *pgtest.Cluster) int {
	t.Helper()
	out, err := exec.Command("grep", "-c", `msg="restored 0`, c.Log()).Output()
	if err != nil && len(out) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}
