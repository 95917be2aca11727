package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/wal"
)

// TestBenchRetention times wal-verify and backup-delete on an archive of
// many small segment objects on MinIO (WALSHIP_BENCH_SEGMENTS, default
// 30,000 to keep make bench short; set 100000 for the figure in the
// README), beside what the same work costs done by hand in the same
// run: one recursive listing for wal-verify, and one DELETE request per
// object (measured on 1,000 objects) for backup-delete.
func TestBenchRetention(t *testing.T) {
	skipUnlessBench(t)
	n := 30_000
	if v, err := strconv.Atoi(os.Getenv("WALSHIP_BENCH_SEGMENTS")); err == nil && v >= 1000 {
		n = v
	}
	const segSize = 16 << 20
	bin := buildWalship(t)
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	client := srv.Client()
	ctx := context.Background()
	env := append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/bench", "WALSHIP_S3_PATH_STYLE=true", "AWS_EC2_METADATA_DISABLED=true")

	put := func(key string, data []byte) error {
		sum := sha256.Sum256(data)
		_, err := client.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
			UserMetadata: map[string]string{"walship-sha256": hex.EncodeToString(sum[:]), "walship-size": strconv.Itoa(len(data))},
		})
		return err
	}
	// putMany stores count one-byte objects named by key(i), in tar
	// batches MinIO unpacks (snowball uploads): one PUT per object would
	// take longer than the benchmark itself.
	putMany := func(count int, key func(i int) string) {
		t.Helper()
		const batch = 10_000
		for first := 0; first < count; first += batch {
			objs := make(chan minio.SnowballObject, 64)
			go func() {
				defer close(objs)
				for i := first; i < min(first+batch, count); i++ {
					objs <- minio.SnowballObject{Key: key(i), Size: 1, Content: strings.NewReader("x")}
				}
			}()
			if err := client.PutObjectsSnowball(ctx, bucket, minio.SnowballOptions{InMemory: true}, objs); err != nil {
				for range objs {
				}
				t.Fatal(err)
			}
		}
	}

	start := time.Now()
	if err := put("bench/cluster.json", []byte(`{"system_id":"1","segment_size":16777216}`)); err != nil {
		t.Fatal(err)
	}
	segKey := func(i int) string {
		return "bench/wal/" + wal.SegmentFileName(1, wal.SegNo(i+1), segSize) + ".zst"
	}
	putMany(n, segKey)
	// Two backups: retention keeps the newer, which starts at 60% of the
	// WAL, and removes everything before it.
	cut := n * 6 / 10
	t0 := time.Now().Add(-48 * time.Hour).UTC().Truncate(time.Second)
	for i, startSeg := range []int{1, cut + 1} {
		lsn := wal.SegmentStartLSN(wal.SegNo(startSeg), segSize) + 0x28
		b := basebackup.Backup{
			Name: fmt.Sprintf("base_%d", i+1), Timeline: 1, StopTimeline: 1, StartLSN: lsn, StopLSN: lsn + 0x100,
			StartWAL: wal.SegmentFileName(1, wal.SegNo(startSeg), segSize), StopWAL: wal.SegmentFileName(1, wal.SegNo(startSeg), segSize),
			StartTime: t0.Add(time.Duration(i) * time.Hour), FinishTime: t0.Add(time.Duration(i)*time.Hour + time.Minute),
			SegmentSize: segSize, SystemID: "1",
		}
		data, _ := json.Marshal(b)
		if err := put("bench/basebackups/"+b.Name+"/backup.json", data); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("stored %d segment objects in %v", n, time.Since(start).Round(time.Second))

	listStart := time.Now()
	listed := 0
	for o := range client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "bench/wal/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		listed++
	}
	list := time.Since(listStart)
	if listed != n {
		t.Fatalf("listed %d objects, stored %d", listed, n)
	}

	walship := func(args ...string) (time.Duration, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		start := time.Now()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("walship %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return time.Since(start), string(out)
	}
	verify, report := walship("wal-verify", "--json")
	if !strings.Contains(report, fmt.Sprintf(`"segments": %d`, n)) {
		t.Fatalf("wal-verify checked a different number of segments than the %d stored:\n%s", n, report)
	}
	dry, plan := walship("backup-delete", "--retain-full", "1")
	if !strings.Contains(plan, fmt.Sprintf("%d files", cut)) {
		t.Fatalf("the plan does not remove the %d segments before the kept backup:\n%s", cut, plan)
	}
	del, _ := walship("backup-delete", "--retain-full", "1", "--confirm")
	left := 0
	for o := range client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "bench/wal/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		left++
	}
	if left != n-cut {
		t.Fatalf("%d segments left after backup-delete, want %d", left, n-cut)
	}

	// Baseline: one DELETE request per object.
	const single = 1000
	putMany(single, func(i int) string { return fmt.Sprintf("baseline/%06d", i) })
	oneStart := time.Now()
	for i := 0; i < single; i++ {
		if err := client.RemoveObject(ctx, bucket, fmt.Sprintf("baseline/%06d", i), minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	oneByOne := time.Since(oneStart) * time.Duration(cut) / single

	fmt.Printf("\nRetention on MinIO, %d segment objects (%d removed)\n", n, cut)
	fmt.Printf("%-52s %10s %12s %8s\n", "operation", "time", "baseline", "ratio")
	row := func(what string, d, base time.Duration) {
		fmt.Printf("%-52s %10v %12v %7.2fx\n", what, d.Round(time.Millisecond), base.Round(time.Millisecond), d.Seconds()/base.Seconds())
	}
	row("wal-verify (baseline: one listing of wal/)", verify, list)
	row("backup-delete dry run (baseline: one listing)", dry, list)
	row("backup-delete --confirm (baseline: 1 DELETE/object)", del, oneByOne)
}
