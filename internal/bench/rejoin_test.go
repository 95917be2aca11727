package bench

import (
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
)

// TestBenchRejoin times standby-rejoin of an old primary of a pgbench
// database of about 1 GB (WALSHIP_BENCH_SCALE, default 70) after a
// failover in which both servers went on writing under pgbench, with the
// archive on MinIO: the rewind itself (WAL fetched through wal-fetch),
// the time until the rejoined server streams from the new primary and
// has replayed everything, and, as the baseline in the same run, a
// re-bootstrap: backup-fetch of a fresh backup of the new primary.
func TestBenchRejoin(t *testing.T) {
	skipUnlessBench(t)
	scale := 70
	if v, err := strconv.Atoi(os.Getenv("WALSHIP_BENCH_SCALE")); err == nil && v > 0 {
		scale = v
	}
	bin := buildWalship(t)
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	env := append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/rejoin", "WALSHIP_S3_PATH_STYLE=true", "AWS_EC2_METADATA_DISABLED=true",
		"WALSHIP_CACHE_DIR="+pgtest.NewDir(t, "cache"))
	conf := map[string]string{
		"archive_mode": "on", "archive_command": bin + " wal-push %p",
		"wal_log_hints": "on", "max_wal_size": "4GB", "checkpoint_timeout": "1h",
	}
	run := func(what string, cmd *exec.Cmd) (string, time.Duration) {
		t.Helper()
		cmd.Env = append(os.Environ(), env...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		return string(out), time.Since(start)
	}
	conn := func(c *pgtest.Cluster) string { return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port()) }
	caughtUp := func(standby, primary *pgtest.Cluster, timeout time.Duration) {
		t.Helper()
		lsn := primary.Psql(t, "SELECT pg_current_wal_lsn()")
		standby.WaitFor(t, fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'", lsn), "t", timeout)
	}

	old := pgtest.Start(t, pgtest.Options{Conf: conf, Env: env})
	old.Pgbench(t, "-i", "-s", strconv.Itoa(scale), "-q")
	size, _ := strconv.ParseInt(old.Psql(t, "SELECT pg_database_size('postgres')"), 10, 64)
	run("backup-push", exec.Command(bin, "backup-push", "--pg", conn(old)))
	dir := filepath.Join(pgtest.NewDir(t, "standby"), "data")
	run("backup-fetch", exec.Command(bin, "backup-fetch", "--primary-conninfo", conn(old), "LATEST", dir))
	nw := pgtest.Start(t, pgtest.Options{DataDir: dir, Conf: conf, Env: env, NoWait: true})
	old.Pgbench(t, "-T", "20", "-c", "4", "-j", "2")
	old.Psql(t, "CHECKPOINT")
	caughtUp(nw, old, 10*time.Minute)

	// Failover; both write for a while: the rewind must undo the old
	// primary's writes and copy the new primary's.
	nw.Psql(t, "SELECT pg_promote()")
	nw.WaitFor(t, "SELECT pg_is_in_recovery()", "f", 5*time.Minute)
	old.Pgbench(t, "-T", "20", "-c", "4", "-j", "2")
	nw.Pgbench(t, "-T", "20", "-c", "4", "-j", "2")
	for i := 0; i < 2; i++ {
		old.Psql(t, "SELECT pg_switch_wal()")
		old.Psql(t, "CHECKPOINT")
	}
	old.Stop(t)

	out, rejoin := run("standby-rejoin", exec.Command(bin, "standby-rejoin", "--pgdata", old.DataDir(), "--source", conn(nw)))
	if !strings.Contains(out, "result=rewound") {
		t.Fatalf("standby-rejoin did not rewind:\n%s", out)
	}
	fetched := strings.Count(out, `msg="restored 0`)
	var rewindMS int64
	for _, f := range strings.Fields(out) {
		if v, ok := strings.CutPrefix(f, "rewind_ms="); ok {
			rewindMS, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	settled := strings.Contains(out, "ran CHECKPOINT on the new primary")
	start := time.Now()
	old.Restart(t)
	old.WaitFor(t, "SELECT status FROM pg_stat_wal_receiver", "streaming", 10*time.Minute)
	caughtUp(old, nw, 10*time.Minute)
	follow := time.Since(start)
	want := nw.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts")
	if got := old.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts"); got != want {
		t.Fatalf("the rejoined server has %q, the new primary %q", got, want)
	}

	// Baseline: what a re-bootstrap restores.
	run("backup-push of the new primary", exec.Command(bin, "backup-push", "--pg", conn(nw)))
	fresh := filepath.Join(pgtest.NewDir(t, "rebootstrap"), "data")
	_, fetch := run("backup-fetch", exec.Command(bin, "backup-fetch", "--primary-conninfo", conn(nw), "LATEST", fresh))

	fmt.Printf("\nstandby-rejoin of a %d MB pgbench database (scale %d), archive on MinIO\n", size>>20, scale)
	fmt.Printf("  %-52s %8.1f s  (CHECKPOINT on the new primary first: %v)\n", "standby-rejoin, whole command", rejoin.Seconds(), settled)
	fmt.Printf("  %-52s %8.1f s  (%d segments fetched through wal-fetch)\n", "  of which pg_rewind --restore-target-wal", float64(rewindMS)/1000, fetched)
	fmt.Printf("  %-52s %8.1f s\n", "start to streaming and caught up", follow.Seconds())
	fmt.Printf("  %-52s %8.1f s  (%.2fx the rewind)\n", "backup-fetch of a new backup (re-bootstrap, baseline)", fetch.Seconds(), fetch.Seconds()/rejoin.Seconds())
}
