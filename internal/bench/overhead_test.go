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
)

// TestBenchOverhead measures what one wal-push call costs beyond
// compressing and uploading a segment: the same tiny file (a timeline
// history file) pushed over and over as separate processes, beside `cp`
// of it (starting a process at all) and `walship --help` (starting
// walship), to a file:// archive and to MinIO.
func TestBenchOverhead(t *testing.T) {
	skipUnlessBench(t)
	const n = 30
	bin := buildWalship(t)
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	// One history file per call, so that every push stores a new object.
	srcDir := t.TempDir()
	src := func(i int) string { return filepath.Join(srcDir, fmt.Sprintf("%08X.history", i+2)) }
	for i := 0; i < n; i++ {
		if err := os.WriteFile(src(i), []byte("1\t0/3000060\tno recovery target specified\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	per := func(what string, cmd func(i int) *exec.Cmd) time.Duration {
		t.Helper()
		start := time.Now()
		for i := 0; i < n; i++ {
			c := cmd(i)
			if out, err := c.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", what, err, out)
			}
		}
		return time.Since(start) / n
	}
	dst := t.TempDir()
	cp := per("cp", func(i int) *exec.Cmd { return exec.Command("cp", src(i), filepath.Join(dst, fmt.Sprint(i))) })
	help := per("walship --help", func(int) *exec.Cmd { return exec.Command(bin, "--help") })
	push := func(env []string) func(int) *exec.Cmd {
		return func(i int) *exec.Cmd {
			c := exec.Command(bin, "--log-level", "warn", "wal-push", src(i))
			c.Env = append(os.Environ(), env...)
			return c
		}
	}
	file := per("wal-push file", push([]string{"WALSHIP_REPO=file://" + pgtest.NewDir(t, "archive"), "WALSHIP_CACHE_DIR=" + t.TempDir()}))
	s3 := per("wal-push s3", push(append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/overhead", "WALSHIP_S3_PATH_STYLE=true",
		"AWS_EC2_METADATA_DISABLED=true", "WALSHIP_CACHE_DIR="+t.TempDir())))
	fmt.Printf("\nper-call cost of wal-push beyond compression and upload (a 44-byte file, %d calls each)\n", n)
	fmt.Printf("%-44s %10s\n", "call", "ms/call")
	for _, r := range []struct {
		what string
		d    time.Duration
	}{{"cp (baseline: starting a process)", cp}, {"walship --help (starting walship)", help},
		{"wal-push, file:// (one new object)", file}, {"wal-push, MinIO (one new object)", s3}} {
		fmt.Printf("%-44s %10.1f\n", r.what, float64(r.d.Microseconds())/1000)
	}
}
