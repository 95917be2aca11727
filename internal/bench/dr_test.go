package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
)

// TestBenchDR times the replay part of a disaster-recovery restore from
// MinIO — restore_command = walship wal-fetch, with and without prefetch —
// against PostgreSQL replaying the same WAL from its own pg_wal, in the
// same run. WALSHIP_BENCH_DR_MB sets how much WAL to replay (default 2048).
func TestBenchDR(t *testing.T) {
	skipUnlessBench(t)
	target := int64(2048)
	if v, err := strconv.ParseInt(os.Getenv("WALSHIP_BENCH_DR_MB"), 10, 64); err == nil && v > 0 {
		target = v
	}
	bin := buildWalship(t)
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	env := append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/dr", "WALSHIP_S3_PATH_STYLE=true", "AWS_EC2_METADATA_DISABLED=true")
	c := pgtest.Start(t, pgtest.Options{
		Conf: map[string]string{"archive_mode": "on", "archive_command": bin + " wal-push %p", "max_wal_size": "4GB"},
		Env:  env,
	})
	run := func(what string, cmd *exec.Cmd) {
		t.Helper()
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
	}
	c.Pgbench(t, "-i", "-s", "5", "-q")
	conn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port())
	stopSwitching := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopSwitching:
				return
			case <-time.After(time.Second):
				c.Exec("SELECT pg_switch_wal()")
			}
		}
	}()
	run("backup-push", exec.Command(bin, "backup-push", "--pg", conn))
	close(stopSwitching)
	startLSN := c.Psql(t, "SELECT pg_current_wal_lsn()")
	for {
		c.Pgbench(t, "-i", "-s", "20", "-q")
		mb, _ := strconv.ParseInt(c.Psql(t, fmt.Sprintf("SELECT ((pg_current_wal_lsn() - '%s') / 1048576)::bigint", startLSN)), 10, 64)
		if mb >= target {
			break
		}
	}
	want := c.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts")
	last := c.Psql(t, "SELECT pg_walfile_name(pg_switch_wal())")
	c.WaitFor(t, fmt.Sprintf("SELECT coalesce(last_archived_wal, '') >= '%s' FROM pg_stat_archiver", last), "t", 10*time.Minute)
	walMB, _ := strconv.ParseFloat(c.Psql(t, fmt.Sprintf("SELECT (pg_current_wal_lsn() - '%s') / 1048576", startLSN)), 64)
	c.Stop(t)

	// restoreAndTime restores the backup, lets prepare adjust the
	// directory, then times PostgreSQL from start to the end of recovery.
	restoreAndTime := func(name string, serverEnv []string, prepare func(dir string)) time.Duration {
		t.Helper()
		dir := filepath.Join(pgtest.NewDir(t, "dr"), "data")
		run("backup-fetch", exec.Command(bin, "backup-fetch", "LATEST", dir))
		if prepare != nil {
			prepare(dir)
		}
		start := time.Now()
		r := pgtest.Start(t, pgtest.Options{DataDir: dir, NoWait: true, Env: append(slicesClone(env), serverEnv...),
			Conf: map[string]string{"archive_mode": "off", "max_wal_size": "4GB"}})
		r.WaitFor(t, "SELECT pg_is_in_recovery()", "f", 30*time.Minute)
		d := time.Since(start)
		if got := r.Psql(t, "SELECT count(*), sum(abalance) FROM pgbench_accounts"); got != want {
			t.Fatalf("%s: restored data %q, want %q", name, got, want)
		}
		r.Stop(t)
		os.RemoveAll(filepath.Dir(dir))
		return d
	}
	local := restoreAndTime("local pg_wal", nil, func(dir string) {
		// Every segment in pg_wal beforehand; restore_command finds nothing.
		var names []string
		for o := range srv.Client().ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: "dr/wal/", Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			if n := strings.TrimSuffix(strings.TrimPrefix(o.Key, "dr/wal/"), ".zst"); len(n) == 24 {
				names = append(names, n)
			}
		}
		for _, n := range names {
			run("wal-fetch "+n, exec.Command(bin, "--log-level", "warn", "wal-fetch", "--prefetch", "0", n, filepath.Join(dir, "pg_wal", n)))
		}
		chownTree(t, filepath.Join(dir, "pg_wal"), dir)
		conf := filepath.Join(dir, "postgresql.auto.conf")
		data, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(data), "restore_command = '", "restore_command = '/bin/false # ")
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	prefetched := restoreAndTime("wal-fetch with prefetch", nil, nil)
	direct := restoreAndTime("wal-fetch without prefetch", []string{"WALSHIP_PREFETCH=0"}, nil)

	fmt.Printf("\nDR replay of %.0f MB of WAL from MinIO (time from server start to end of recovery)\n", walMB)
	fmt.Printf("%-44s %10s %14s\n", "restore", "seconds", "vs local WAL")
	for _, r := range []struct {
		what string
		d    time.Duration
	}{{"PostgreSQL, WAL already in pg_wal (baseline)", local}, {"walship wal-fetch, prefetch 8 (default)", prefetched}, {"walship wal-fetch --prefetch 0", direct}} {
		fmt.Printf("%-44s %10.1f %13.2fx\n", r.what, r.d.Seconds(), r.d.Seconds()/local.Seconds())
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// chownTree gives everything below root the owner of like.
func chownTree(t *testing.T, root, like string) {
	t.Helper()
	out, err := exec.Command("stat", "-c", "%u:%g", like).Output()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chown", "-R", strings.TrimSpace(string(out)), root).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v\n%s", err, out)
	}
}
