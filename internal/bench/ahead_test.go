package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/wal"
)

// TestBenchPushAhead plays PostgreSQL's archiver over a backlog of 32
// segments waiting in archive_status — call wal-push for the oldest
// .ready file, mark it .done, repeat — with look-ahead off (--parallel 1,
// the baseline: one segment per call) and on, to a file:// archive and to
// MinIO, and prints segments per second.
func TestBenchPushAhead(t *testing.T) {
	skipUnlessBench(t)
	const n = 32
	bin := buildWalship(t)
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	type segment struct {
		name string
		data []byte
	}
	var segs []segment
	for i := 0; i < n; i++ {
		name, data := waltest.Segment(7300000000000000098, 1, wal.SegNo(i+1), 16<<20, waltest.Compressible(uint64(i)))
		segs = append(segs, segment{name, data})
	}
	run := func(archive string, parallel int) (float64, string) {
		t.Helper()
		dataDir := pgtest.NewDir(t, "pgdata")
		if err := os.MkdirAll(filepath.Join(dataDir, "pg_wal", "archive_status"), 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dataDir, "PG_VERSION"), []byte("15\n"), 0o600)
		for _, s := range segs {
			os.WriteFile(filepath.Join(dataDir, "pg_wal", s.name), s.data, 0o600)
			os.WriteFile(filepath.Join(dataDir, "pg_wal", "archive_status", s.name+".ready"), nil, 0o600)
		}
		env := []string{"WALSHIP_REPO=file://" + pgtest.NewDir(t, "archive")}
		if archive == "s3" {
			env = append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+fmt.Sprintf("/ahead-%d", time.Now().UnixNano()), "WALSHIP_S3_PATH_STYLE=true", "AWS_EC2_METADATA_DISABLED=true")
		}
		env = append(env, "WALSHIP_CACHE_DIR="+t.TempDir(), "WALSHIP_LOG_LEVEL=debug")
		tm := timing{requests: map[string]int64{}}
		start := time.Now()
		for _, s := range segs {
			cmd := exec.Command(bin, "wal-push", "--parallel", fmt.Sprint(parallel), filepath.Join("pg_wal", s.name))
			cmd.Dir = dataDir
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("wal-push %s: %v\n%s", s.name, err, out)
			}
			for kind, n := range parseRequests(string(out)) {
				tm.requests[kind] += n
			}
			status := filepath.Join(dataDir, "pg_wal", "archive_status", s.name)
			if err := os.Rename(status+".ready", status+".done"); err != nil {
				t.Fatal(err)
			}
		}
		return float64(n) / time.Since(start).Seconds(), tm.perSegment(n)
	}
	fmt.Printf("\nwal-push of a backlog of %d segments, as PostgreSQL's archiver calls it (one call at a time)\n", n)
	fmt.Printf("%-8s %-38s %12s %14s  %s\n", "archive", "wal-push", "segments/s", "vs one-by-one", "requests/segment")
	for _, archive := range []string{"file", "s3"} {
		base, reqs := run(archive, 1)
		fmt.Printf("%-8s %-38s %12.1f %13.2fx  %s\n", archive, "--parallel 1 (one per call, baseline)", base, 1.0, reqs)
		for _, k := range []int{4, 8} {
			r, reqs := run(archive, k)
			fmt.Printf("%-8s %-38s %12.1f %13.2fx  %s\n", archive, fmt.Sprintf("--parallel %d (look-ahead)", k), r, r/base, reqs)
		}
	}
}
