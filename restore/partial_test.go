package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// TestFetchPartial: a segment that is not archived comes from the newest
// snapshot, zero-filled, only with Partial; without it, it is not found.
func TestFetchPartial(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	archived(t, s, 1, "zstd") // the archive's identity
	name, data := waltest.Segment(testSysID, 1, 2, seg16, waltest.Compressible(2))
	path := filepath.Join(t.TempDir(), name+".partial")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, n := range []int64{1 << 20, 3 << 20} {
		if _, err := archive.PutPartial(ctx, s, name, f, n, codecNamed(t, "zstd")); err != nil {
			t.Fatal(err)
		}
	}
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	if _, err := Fetch(ctx, s, name, dest, options(t)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("without Partial: %v, want ErrNotFound", err)
	}
	o := options(t)
	o.Partial = true
	res, err := Fetch(ctx, s, name, dest, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.PartialBytes != 3<<20 {
		t.Fatalf("restored a snapshot of %d bytes, want the newest (%d)", res.PartialBytes, 3<<20)
	}
	got, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte(nil), data[:3<<20]...), make([]byte, seg16-3<<20)...)
	if !bytes.Equal(got, want) {
		t.Fatal("the restored snapshot is not the segment's first bytes followed by zeros")
	}
	// A segment with no snapshot is still not found.
	other := wal.SegmentFileName(1, 9, seg16)
	if _, err := Fetch(ctx, s, other, dest, o); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no snapshot: %v, want ErrNotFound", err)
	}
}
