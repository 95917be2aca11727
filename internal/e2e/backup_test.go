package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/wal"
)

// primaryFor starts a primary archiving into b through walship.
func primaryFor(t *testing.T, b backend, major int, conf map[string]string) *pgtest.Cluster {
	t.Helper()
	c := map[string]string{
		"archive_mode":    "on",
		"archive_command": strings.Join(append(append([]string{walshipBin}, b.args...), "wal-push", "%p"), " "),
	}
	for k, v := range conf {
		c[k] = v
	}
	return pgtest.Start(t, pgtest.Options{Major: major, Conf: c, Env: serverEnv(b)})
}

func serverEnv(b backend) []string { return append(b.env, "AWS_EC2_METADATA_DISABLED=true") }

func pgConn(c *pgtest.Cluster) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port())
}

// backupPush takes a base backup of c and returns its name.
func backupPush(t *testing.T, b backend, c *pgtest.Cluster, extra ...string) string {
	t.Helper()
	r := walship(t, t.TempDir(), b.env, append(append(b.args, "backup-push", "--wal-timeout", "2m", "--pg", pgConn(c)), extra...)...)
	r.mustSucceed(t, "backup-push")
	name := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(name, "base_") {
		t.Fatalf("backup-push printed %q, not a backup name", r.stdout)
	}
	return name
}

// backupFetch restores a backup into a new directory the server user
// owns and returns it.
func backupFetch(t *testing.T, b backend, args ...string) string {
	t.Helper()
	dir := filepath.Join(pgtest.NewDir(t, "restore"), "data")
	walship(t, t.TempDir(), b.env, append(append(b.args, "backup-fetch"), append(args, dir)...)...).mustSucceed(t, "backup-fetch")
	return dir
}

// startRestored starts PostgreSQL on a restored directory.
func startRestored(t *testing.T, b backend, major int, dir string, conf map[string]string) *pgtest.Cluster {
	t.Helper()
	if conf == nil {
		conf = map[string]string{}
	}
	if _, ok := conf["archive_mode"]; !ok {
		conf["archive_mode"] = "off"
	}
	return pgtest.Start(t, pgtest.Options{Major: major, DataDir: dir, Conf: conf, Env: serverEnv(b), NoWait: true})
}

func promoted(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	c.WaitFor(t, "SELECT pg_is_in_recovery()", "f", 3*time.Minute)
}

// TestBackupDR: a base backup taken while pgbench writes, plus the WAL
// archived after it, restores to exactly the primary's data — with a
// tablespace, relocated — on PostgreSQL 13 (one COPY stream per
// tablespace), 15 and 17 (one stream of typed messages).
func TestBackupDR(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		for _, major := range []int{15, 13, 17} {
			be := newBackend
			t.Run("", func(t *testing.T) {
				b := be(t)
				t.Logf("PostgreSQL %d, %s archive", major, b.name)
				backupDR(t, b, major)
			})
		}
	}
}

func backupDR(t *testing.T, b backend, major int) {
	primary := primaryFor(t, b, major, nil)
	tsDir := pgtest.NewDir(t, "tablespace")
	primary.Psql(t, fmt.Sprintf("CREATE TABLESPACE ts LOCATION '%s'", tsDir))
	primary.Psql(t, "CREATE TABLE in_ts (id int PRIMARY KEY, v text) TABLESPACE ts; INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
	primary.Pgbench(t, "-i", "-s", "2", "-q")

	// Writes go on during the backup.
	load := exec.Command(pgtest.ClientBin("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port()), "-U", "postgres", "-T", "4", "-c", "2", "postgres")
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	name := backupPush(t, b, primary)
	if err := load.Wait(); err != nil {
		t.Fatalf("pgbench during the backup: %v", err)
	}
	primary.Pgbench(t, "-T", "2", "-c", "2")
	primary.Psql(t, "INSERT INTO in_ts SELECT g, 'after' FROM generate_series(5001, 6000) g")
	tables := append([]string{"in_ts"}, pgbenchTables...)
	want := primary.TableChecksums(t, "", tables...)
	waitArchived(t, primary)

	list := walship(t, t.TempDir(), b.env, append(b.args, "backup-list", "--json")...)
	list.mustSucceed(t, "backup-list")
	var backups []map[string]any
	if err := json.Unmarshal([]byte(list.stdout), &backups); err != nil {
		t.Fatalf("backup-list --json: %v\n%s", err, list.stdout)
	}
	if len(backups) != 1 || backups[0]["name"] != name {
		t.Fatalf("backup-list shows %v, want just %s", backups, name)
	}
	for _, field := range []string{"timeline", "start_lsn", "stop_lsn", "start_time", "finish_time", "size", "stored_size", "pg_version", "system_id"} {
		if _, ok := backups[0][field]; !ok {
			t.Errorf("backup-list --json lacks %q", field)
		}
	}

	newTS := filepath.Join(pgtest.NewDir(t, "tablespace-restored"), "ts")
	dir := backupFetch(t, b, "--verify", "--tablespace-map", tsDir+"="+newTS, "LATEST")
	if major <= 15 {
		// pg_verifybackup 15 reads manifests of servers up to 15.
		verify := exec.Command(pgtest.ClientBin("pg_verifybackup"), "-n", dir)
		if out, err := verify.CombinedOutput(); err != nil {
			t.Fatalf("pg_verifybackup rejects the restored directory: %v\n%s", err, out)
		}
	}
	restored := startRestored(t, b, major, dir, nil)
	promoted(t, restored)
	if got := restored.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored tables differ from the primary's:\n got %v\nwant %v", got, want)
	}
	if loc := restored.Psql(t, "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"); loc != newTS {
		t.Fatalf("tablespace restored at %q, want %q", loc, newTS)
	}
}

// TestBackupPITR: recovery to a named restore point and to a time between
// two commits keeps the row before and not the row after.
func TestBackupPITR(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) {
			primary := primaryFor(t, b, 15, nil)
			primary.Psql(t, "CREATE TABLE events (id int, what text)")
			backupPush(t, b, primary)
			primary.Psql(t, "INSERT INTO events VALUES (1, 'before the restore point')")
			primary.Psql(t, "SELECT pg_create_restore_point('before_upgrade')")
			primary.Psql(t, "INSERT INTO events VALUES (2, 'after the restore point')")
			primary.Psql(t, "INSERT INTO events VALUES (3, 'before the time')")
			target := primary.Psql(t, "SELECT clock_timestamp()")
			primary.Psql(t, "INSERT INTO events VALUES (4, 'after the time')")
			waitArchived(t, primary)

			for _, tc := range []struct {
				flags []string
				want  string
			}{
				{[]string{"--target-name", "before_upgrade"}, "1"},
				{[]string{"--target-time", target}, "1,2,3"},
			} {
				dir := backupFetch(t, b, append(tc.flags, "--target-action", "promote", "LATEST")...)
				c := startRestored(t, b, 15, dir, nil)
				promoted(t, c)
				if got := c.Psql(t, "SELECT string_agg(id::text, ',' ORDER BY id) FROM events"); got != tc.want {
					t.Fatalf("%v: rows %q, want %q", tc.flags, got, tc.want)
				}
			}

			// A target before the backup's end is refused.
			r := walship(t, t.TempDir(), b.env, append(b.args, "backup-fetch", "--target-time", "2000-01-01 00:00:00+00", "LATEST", filepath.Join(t.TempDir(), "x"))...)
			if r.code == 0 || !strings.Contains(r.stderr, "ends after the recovery target") {
				t.Fatalf("a target before every backup: exit %d\n%s", r.code, r.stderr)
			}
		})
	}
}

// TestStandbys: a warm standby fed only by the archive, a hot standby that
// streams and catches up from the archive once the primary has recycled
// the WAL it needs, and a cascade: standby A (archive + streaming), B
// bootstrapped from a backup of A and streaming from A, and the warm
// standby; when A is promoted, its timeline-2 history goes through
// walship and B and the warm standby follow it.
func TestStandbys(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { standbys(t, b) })
	}
}

func standbys(t *testing.T, b backend) {
	primary := primaryFor(t, b, 15, map[string]string{"wal_keep_size": "0", "max_wal_size": "64MB", "min_wal_size": "32MB"})
	primary.Psql(t, "CREATE TABLE feed (id int)")
	backupPush(t, b, primary)
	insert := func(c *pgtest.Cluster, id int) { c.Psql(t, fmt.Sprintf("INSERT INTO feed VALUES (%d)", id)) }
	sees := func(c *pgtest.Cluster, id int) {
		t.Helper()
		c.WaitFor(t, fmt.Sprintf("SELECT count(*) FROM feed WHERE id = %d", id), "1", 2*time.Minute)
	}

	warm := startRestored(t, b, 15, backupFetch(t, b, "--standby", "LATEST"), nil)
	hot := startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(primary), "LATEST"), nil)

	insert(primary, 1)
	sees(hot, 1) // streamed: no segment switch needed
	waitArchived(t, primary)
	sees(warm, 1) // only through the archive

	t.Run("hot standby catches up from the archive", func(t *testing.T) {
		lsn, err := wal.ParseLSN(hot.Psql(t, "SELECT pg_last_wal_replay_lsn()"))
		if err != nil {
			t.Fatal(err)
		}
		needed := wal.SegmentFileName(1, wal.LSNToSegNo(lsn, segSize16), segSize16)
		hot.Stop(t)
		primary.Pgbench(t, "-i", "-s", "4", "-q") // enough WAL to recycle what hot needs
		insert(primary, 2)
		for i := 0; i < 3; i++ {
			primary.Psql(t, "SELECT pg_switch_wal()")
			primary.Psql(t, "CHECKPOINT")
		}
		waitArchived(t, primary)
		oldest := primary.Psql(t, "SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'")
		if oldest <= needed {
			t.Fatalf("the primary still has %s in pg_wal (oldest %s): the test would not prove the archive is used", needed, oldest)
		}
		hot.Restart(t)
		sees(hot, 2)
	})

	t.Run("cascade and promotion", func(t *testing.T) {
		// A: hot standby of the primary that archives once promoted.
		aConf := map[string]string{
			"archive_mode":    "on",
			"archive_command": strings.Join(append(append([]string{walshipBin}, b.args...), "wal-push", "%p"), " "),
		}
		a := startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(primary), "LATEST"), aConf)
		insert(primary, 3)
		sees(a, 3)

		// B from a backup taken from A. A standby cannot switch WAL
		// segments, so keep the primary switching until the backup's
		// last segment is archived.
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(300 * time.Millisecond):
					primary.Exec("SELECT pg_switch_wal()")
				}
			}
		}()
		backupPush(t, b, a)
		close(stop)
		bStandby := startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(a), "LATEST"), nil)
		insert(primary, 4)
		sees(bStandby, 4)

		primary.Stop(t)
		a.Psql(t, "SELECT pg_promote()")
		promoted(t, a)
		insert(a, 5)
		waitArchived(t, a)
		if !b.exists(t, "wal/00000002.history") {
			t.Fatal("the promoted standby did not archive 00000002.history through walship")
		}
		sees(bStandby, 5) // streams across the timeline switch
		sees(warm, 5)     // follows timeline 2 from the archive
	})
}

// TestBackupFaults: a backup killed at random moments never becomes
// visible and does not disturb the next one; a restore that loses its
// storage midway fails clearly and leaves a directory PostgreSQL will not
// start.
func TestBackupFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	srv := s3test.Start(t)
	for _, b := range []backend{fileBackend(t), s3Backend(t, srv)} {
		t.Run(b.name, func(t *testing.T) {
			primary := primaryFor(t, b, 15, nil)
			primary.Pgbench(t, "-i", "-s", "10", "-q")
			killedMidway, verified := 0, map[string]bool{}
			for i := 0; i < 4; i++ {
				cmd := exec.Command(walshipBin, append(b.args, "backup-push", "--pg", pgConn(primary))...)
				cmd.Env = append(baseEnv(), b.env...)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				// A random moment to crash at, not a synchronisation.
				time.Sleep(time.Duration(100+i*200) * time.Millisecond)
				kill9(cmd.Process)
				list := walship(t, t.TempDir(), b.env, append(b.args, "backup-list", "--json")...)
				list.mustSucceed(t, "backup-list")
				var listed []struct{ Name string }
				if err := json.Unmarshal([]byte(list.stdout), &listed); err != nil {
					t.Fatal(err)
				}
				if len(listed) == len(verified) {
					killedMidway++
				}
				// Whatever is listed (a backup that finished just before
				// the kill) must be complete: every checksum and the
				// manifest are checked.
				for _, l := range listed {
					if !verified[l.Name] {
						backupFetch(t, b, "--verify", l.Name)
						verified[l.Name] = true
					}
				}
			}
			if killedMidway == 0 {
				t.Fatal("no kill landed during a backup: the test proved nothing")
			}
			want := primary.TableChecksums(t, "", pgbenchTables...)
			backupPush(t, b, primary)
			waitArchived(t, primary)
			restored := startRestored(t, b, 15, backupFetch(t, b, "LATEST"), nil)
			promoted(t, restored)
			if got := restored.TableChecksums(t, "", pgbenchTables...); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("restored tables differ after killed backups:\n got %v\nwant %v", got, want)
			}

			if b.srv == nil {
				return
			}
			t.Run("storage lost during backup-fetch", func(t *testing.T) {
				dir := filepath.Join(pgtest.NewDir(t, "restore"), "data")
				cmd := exec.Command(walshipBin, append(b.args, "--storage-timeout", "3s", "--storage-retries", "2", "backup-fetch", "--parallel", "1", "LATEST", dir)...)
				cmd.Env = append(baseEnv(), b.env...)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(time.Minute)
				for {
					if _, err := os.Stat(filepath.Join(dir, "base")); err == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("backup-fetch did not start extracting")
					}
					time.Sleep(20 * time.Millisecond)
				}
				b.srv.Stop(t)
				err := cmd.Wait()
				b.srv.Restart(t)
				if err == nil {
					t.Skip("the restore finished before the storage went away")
				}
				if !strings.Contains(stderr.String(), "incomplete") {
					t.Fatalf("the error does not say the directory is incomplete:\n%s", stderr.String())
				}
				if _, err := os.Stat(filepath.Join(dir, "WALSHIP_RESTORE_INCOMPLETE")); err != nil {
					t.Fatal("no WALSHIP_RESTORE_INCOMPLETE marker after a failed restore")
				}
				if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err == nil {
					t.Fatal("a failed restore left global/pg_control: PostgreSQL would start on it")
				}
			})
		})
	}
}
