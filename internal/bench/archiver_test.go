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

// TestBenchArchiver runs the heaviest pgbench load this machine sustains
// (WALSHIP_BENCH_ARCHIVER_SECONDS, default 30: pgbench -i of scale 10 in
// a loop, which writes WAL fastest, beside 4 clients) on a primary
// archiving into MinIO with walship wal-push, once one segment per call
// (--parallel 1, the baseline) and once with look-ahead (the default),
// and samples the .ready files in pg_wal/archive_status every half
// second: a growing count is an archiver falling behind.
func TestBenchArchiver(t *testing.T) {
	skipUnlessBench(t)
	seconds := 30
	if v, err := strconv.Atoi(os.Getenv("WALSHIP_BENCH_ARCHIVER_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	bin := buildWalship(t)
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	type result struct {
		parallel          int
		walMB, segsPerSec float64
		maxReady, endTail int
		drain             time.Duration
	}
	run := func(parallel int) result {
		prefix := fmt.Sprintf("archiver-%d", parallel)
		env := append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/"+prefix, "WALSHIP_S3_PATH_STYLE=true", "AWS_EC2_METADATA_DISABLED=true",
			"WALSHIP_PUSH_PARALLEL="+strconv.Itoa(parallel))
		c := pgtest.Start(t, pgtest.Options{
			Conf: map[string]string{"archive_mode": "on", "archive_command": bin + " wal-push %p", "max_wal_size": "4GB",
				"synchronous_commit": "off", "checkpoint_timeout": "5min"},
			Env: env,
		})
		c.Pgbench(t, "-i", "-s", "10", "-q")
		c.Psql(t, "CREATE DATABASE bulk")
		c.Psql(t, "CHECKPOINT")
		c.WaitFor(t, "SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'", "0", 5*time.Minute)
		startLSN := c.Psql(t, "SELECT pg_current_wal_lsn()")
		startArchived := c.Psql(t, "SELECT archived_count FROM pg_stat_archiver")
		status := filepath.Join(c.DataDir(), "pg_wal", "archive_status")
		// The most WAL per second pgbench makes here: its data loading
		// (pgbench -i), again and again, beside 4 clients of writes.
		done := make(chan error, 1)
		go func() {
			end := time.Now().Add(time.Duration(seconds) * time.Second)
			clients := exec.Command(pgtest.ClientBin("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres",
				"-T", strconv.Itoa(seconds), "-c", "4", "-j", "2", "-N", "postgres")
			if err := clients.Start(); err != nil {
				done <- err
				return
			}
			for time.Now().Before(end) {
				load := exec.Command(pgtest.ClientBin("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres",
					"-i", "-s", "10", "-q", "-I", "dtg", "bulk")
				if out, err := load.CombinedOutput(); err != nil {
					clients.Process.Kill()
					clients.Wait()
					done <- fmt.Errorf("pgbench -i: %v: %s", err, out)
					return
				}
			}
			done <- clients.Wait()
		}()
		res := result{parallel: parallel}
		began := time.Now()
		ready := func() int {
			entries, _ := os.ReadDir(status)
			n := 0
			for _, e := range entries {
				if strings.HasSuffix(e.Name(), ".ready") {
					n++
				}
			}
			return n
		}
	sample:
		for {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("pgbench: %v", err)
				}
				break sample
			case <-time.After(500 * time.Millisecond):
				res.maxReady = max(res.maxReady, ready())
			}
		}
		loadTime := time.Since(began)
		res.endTail = ready()
		// How long the archiver needs to empty what is left.
		drainStart := time.Now()
		c.WaitFor(t, "SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'", "0", 10*time.Minute)
		res.drain = time.Since(drainStart)
		res.walMB, _ = strconv.ParseFloat(c.Psql(t, fmt.Sprintf("SELECT (pg_current_wal_lsn() - '%s') / 1048576", startLSN)), 64)
		archived, _ := strconv.Atoi(c.Psql(t, "SELECT archived_count FROM pg_stat_archiver"))
		before, _ := strconv.Atoi(startArchived)
		res.segsPerSec = float64(archived-before) / (loadTime + res.drain).Seconds()
		if failed := c.Psql(t, "SELECT failed_count FROM pg_stat_archiver"); failed != "0" {
			t.Fatalf("the archiver failed %s times", failed)
		}
		c.Stop(t)
		return res
	}
	results := []result{run(1), run(4)}
	fmt.Printf("\narchiver under pgbench -i in a loop plus pgbench -c 4 -N for %d s, archiving into MinIO (.ready files sampled every 0.5 s)\n", seconds)
	fmt.Printf("%-34s %10s %12s %12s %12s %14s\n", "wal-push", "WAL MB", "max .ready", ".ready at end", "drain", "segments/s")
	for _, r := range results {
		what := fmt.Sprintf("--parallel %d", r.parallel)
		if r.parallel == 1 {
			what += " (one per call, baseline)"
		}
		fmt.Printf("%-34s %10.0f %12d %12d %11.1fs %14.1f\n", what, r.walMB, r.maxReady, r.endTail, r.drain.Seconds(), r.segsPerSec)
	}
}
