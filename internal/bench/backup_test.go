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

// TestBenchBackup times backup-push and backup-fetch of a pgbench database
// of about 1 GB against pg_basebackup -Ft and -Fp of the same database in
// the same run. Scale with WALSHIP_BENCH_SCALE (pgbench scale, default 70).
func TestBenchBackup(t *testing.T) {
	skipUnlessBench(t)
	scale := 70
	if v, err := strconv.Atoi(os.Getenv("WALSHIP_BENCH_SCALE")); err == nil && v > 0 {
		scale = v
	}
	bin := buildWalship(t)
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	archiveDir := pgtest.NewDir(t, "archive")
	fileEnv := []string{"WALSHIP_REPO=file://" + archiveDir}
	s3Env := append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/bench", "WALSHIP_S3_PATH_STYLE=true", "AWS_EC2_METADATA_DISABLED=true")

	// The primary archives into both archives: a backup is complete only
	// once its last WAL segment is in its archive.
	toS3 := fmt.Sprintf("%s --repo s3://%s/bench --s3-endpoint %s --s3-path-style wal-push %%p", bin, bucket, srv.Endpoint())
	c := pgtest.Start(t, pgtest.Options{
		Conf: map[string]string{"archive_mode": "on", "archive_command": bin + " wal-push %p && " + toS3, "max_wal_size": "4GB"},
		Env:  append(fileEnv, append(srv.Env(), "AWS_EC2_METADATA_DISABLED=true")...),
	})
	c.Pgbench(t, "-i", "-s", strconv.Itoa(scale), "-q")
	c.Psql(t, "CHECKPOINT")
	size, _ := strconv.ParseInt(c.Psql(t, "SELECT sum(pg_database_size(oid)) FROM pg_database"), 10, 64)
	t.Logf("databases: %d MB", size>>20)
	conn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port())
	switchWAL := func() { c.Psql(t, "SELECT pg_switch_wal()") }

	var rows []backupRow
	var lastRSS int64 // peak RSS walship logged in the last timed run
	timeIt := func(what string, cmd *exec.Cmd) time.Duration {
		t.Helper()
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		_, _, lastRSS = parseLog(string(out))
		return time.Since(start)
	}
	// The first read of freshly loaded tables costs more than any later
	// one: an untimed backup first, so the baselines are not penalised.
	for _, b := range []struct{ what, args string }{
		{"warm-up", "-Ft"},
		{"pg_basebackup -Ft (baseline)", "-Ft"},
		{"pg_basebackup -Ft -Z client-zstd (baseline)", "-Ft -Z client-zstd"},
		{"pg_basebackup -Fp (baseline)", "-Fp"},
	} {
		dir := filepath.Join(pgtest.NewDir(t, "pgbb"), "out")
		args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres", "-D", dir, "-X", "none", "-c", "fast"}, strings.Fields(b.args)...)
		cmd := exec.Command(pgtest.ClientBin("pg_basebackup"), args...)
		c.RunAsServerUser(cmd)
		d := timeIt(b.what, cmd)
		os.RemoveAll(filepath.Dir(dir))
		if b.what != "warm-up" {
			rows = append(rows, backupRow{what: b.what, archive: "local", d: d, bytes: size})
		}
	}
	for _, a := range []struct {
		name string
		env  []string
	}{{"file", fileEnv}, {"s3", s3Env}} {
		push := exec.Command(bin, "--log-level", "debug", "backup-push", "--pg", conn)
		push.Env = append(os.Environ(), a.env...)
		done := make(chan struct{})
		go func() { // the backup's last segment must be archived
			for {
				select {
				case <-done:
					return
				case <-time.After(time.Second):
					switchWAL()
				}
			}
		}()
		d := timeIt("backup-push "+a.name, push)
		close(done)
		rows = append(rows, backupRow{what: "walship backup-push (zstd)", archive: a.name, d: d, bytes: size, rss: lastRSS})

		dest := filepath.Join(pgtest.NewDir(t, "restore"), "data")
		fetch := exec.Command(bin, "--log-level", "debug", "backup-fetch", "LATEST", dest)
		fetch.Env = append(os.Environ(), a.env...)
		d = timeIt("backup-fetch "+a.name, fetch)
		rows = append(rows, backupRow{what: "walship backup-fetch", archive: a.name, d: d, bytes: size, rss: lastRSS})
		os.RemoveAll(dest)
	}
	base := rows[0].d
	fmt.Printf("\nbase backup of %d MB (pgbench scale %d)\n", size>>20, scale)
	fmt.Printf("%-46s %-8s %10s %8s %12s %10s\n", "operation", "archive", "seconds", "MB/s", "time vs -Ft", "peak RSS")
	for _, r := range rows {
		rss := "-"
		if r.rss > 0 {
			rss = fmt.Sprintf("%d MB", r.rss>>20)
		}
		fmt.Printf("%-46s %-8s %10.1f %8.0f %11.2fx %10s\n", r.what, r.archive, r.d.Seconds(), float64(r.bytes)/(1<<20)/r.d.Seconds(), float64(r.d)/float64(base), rss)
	}
}

type backupRow struct {
	what, archive string
	d             time.Duration
	bytes         int64
	rss           int64 // peak resident set of walship, bytes
}
