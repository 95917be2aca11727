package archive

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// TestPushAhead: the .ready files after the one being pushed are
// archived with markers; a marker answers once, only for the same file
// and repository, and a file changed since is not taken for archived.
func TestPushAhead(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	dataDir := t.TempDir()
	walDir := filepath.Join(dataDir, "pg_wal")
	if err := os.MkdirAll(filepath.Join(walDir, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	var names []string
	for seg := wal.SegNo(1); seg <= 5; seg++ {
		name, data := waltest.Segment(1, 1, seg, 16<<20, waltest.Compressible(uint64(seg)))
		if err := os.WriteFile(filepath.Join(walDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(walDir, "archive_status", name+".ready"), nil, 0o600)
		names = append(names, name)
	}
	zstd, _ := codec.ByName("zstd")
	o := PushOptions{Codec: zstd, Repo: "mem:a", DataDir: dataDir}
	first := filepath.Join(walDir, names[0])
	res := PushAhead(ctx, s, first, 2, o)
	if len(res) != 2 || res[0].Name != names[1] || res[1].Name != names[2] || res[0].Err != nil || res[1].Err != nil {
		t.Fatalf("pushed ahead %v, want %s and %s", res, names[1], names[2])
	}
	for _, n := range names[1:3] {
		if ok, _ := HasWAL(ctx, s, n); !ok {
			t.Fatalf("%s is marked but not archived", n)
		}
	}
	if TakeMarker(dataDir, "mem:other", filepath.Join(walDir, names[1])) {
		t.Fatal("a marker for another repository was trusted")
	}
	if TakeMarker(dataDir, "mem:a", filepath.Join(walDir, names[1])) {
		t.Fatal("a marker answered twice")
	}
	// The file changes after it was pushed ahead: not archived.
	later := time.Now().Add(time.Minute)
	os.Chtimes(filepath.Join(walDir, names[2]), later, later)
	if TakeMarker(dataDir, "mem:a", filepath.Join(walDir, names[2])) {
		t.Fatal("a marker was trusted for a file changed since")
	}
	if TakeMarker(dataDir, "mem:a", filepath.Join(walDir, names[3])) {
		t.Fatal("a file never pushed was taken for archived")
	}
	// A normal path: PostgreSQL marked what it archived done; push
	// ahead, then take.
	for _, n := range names[:3] {
		os.Rename(filepath.Join(walDir, "archive_status", n+".ready"), filepath.Join(walDir, "archive_status", n+".done"))
	}
	PushAhead(ctx, s, filepath.Join(walDir, names[2]), 1, o)
	if !TakeMarker(dataDir, "mem:a", filepath.Join(walDir, names[3])) {
		t.Fatal("the marker of a file pushed ahead was not taken")
	}
}
