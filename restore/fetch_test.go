package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/faulty"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

const (
	testSysID = 7300000000000000001
	seg16     = 16 << 20
)

func codecNamed(t *testing.T, name string) codec.Codec {
	c, err := codec.ByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// archived pushes a synthetic segment with codec c into s.
func archived(t *testing.T, s storage.Storage, seg wal.SegNo, c string) (string, []byte) {
	t.Helper()
	name, data := waltest.Segment(testSysID, 1, seg, seg16, waltest.Compressible(uint64(seg)))
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := archive.Push(context.Background(), s, path, archive.PushOptions{Codec: codecNamed(t, c), Repo: "mem:test"}); err != nil {
		t.Fatal(err)
	}
	return name, data
}

func options(t *testing.T) FetchOptions {
	return FetchOptions{
		Codec: codecNamed(t, "zstd"),
		Retry: storage.RetryOptions{Attempts: 3, Timeout: 5 * time.Second, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond},
	}
}

func TestFetchAnyCodec(t *testing.T) {
	s := mem.New()
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	for i, c := range codec.Names() {
		name, data := archived(t, s, wal.SegNo(i+1), c)
		if _, err := Fetch(context.Background(), s, name, dest, options(t)); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		got, err := os.ReadFile(dest)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: fetched content differs (%v)", c, err)
		}
	}
}

func TestFetchNotFoundAndBadNames(t *testing.T) {
	s := mem.New()
	archived(t, s, 1, "zstd")
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	if _, err := Fetch(context.Background(), s, wal.SegmentFileName(1, 2, seg16), dest, options(t)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing segment: %v", err)
	}
	// A .partial of segment 1 is not segment 1.
	if _, err := Fetch(context.Background(), s, wal.SegmentFileName(1, 1, seg16)+".partial", dest, options(t)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing partial: %v", err)
	}
	for _, bad := range []string{"", "../../etc/passwd", "00000001000000000000000", "0000000100000000000000001", "000000010000000000000001 "} {
		if _, err := Fetch(context.Background(), s, bad, dest, options(t)); !errors.Is(err, ErrBadName) {
			t.Fatalf("%q: %v, want ErrBadName", bad, err)
		}
	}
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a failed fetch left a file at the destination")
	}
}

// TestFetchDamage: damaged bodies are ErrCorrupt (never not-found, never
// written to dest); a read that breaks off is retried as a whole.
func TestFetchDamage(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		what   string
		fault  func(f *faulty.Storage, call int)
		want   error
		passes bool
	}{
		{"truncated body", func(f *faulty.Storage, n int) { f.Truncate(n, 1000) }, archive.ErrCorrupt, false},
		{"flipped bit", func(f *faulty.Storage, n int) { f.FlipBit(n, 500) }, archive.ErrCorrupt, false},
		{"broken stream once", func(f *faulty.Storage, n int) { f.Stall(n, 1000) }, nil, true},
		{"storage down", func(f *faulty.Storage, n int) { f.Fail(faulty.OpGet, 0, errors.New("connection refused")) }, nil, false},
	} {
		t.Run(tc.what, func(t *testing.T) {
			f := faulty.New(mem.New())
			name, data := archived(t, f, 1, "none")
			dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
			tc.fault(f, f.Calls(faulty.OpGet)+1)
			o := options(t)
			o.Codec = codecNamed(t, "none")          // the first Get is the damaged one
			o.Retry.Timeout = 300 * time.Millisecond // ends the stalled read
			_, err := Fetch(ctx, f, name, dest, o)
			if tc.passes {
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
					t.Fatal("content differs after a retried download")
				}
				return
			}
			if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, storage.ErrNotExist) {
				t.Fatalf("got %v: a damaged or unreachable object must not pass for found or not found", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("damaged content reached the destination")
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), ".walship-*")); len(left) > 0 {
				t.Fatalf("temporary files left: %v", left)
			}
		})
	}
}

// TestFetchForeignCluster: a segment of another system than the data
// directory's pg_control is refused.
func TestFetchForeignCluster(t *testing.T) {
	s := mem.New()
	name, _ := archived(t, s, 1, "zstd")
	pgdata := t.TempDir()
	os.MkdirAll(filepath.Join(pgdata, "global"), 0o700)
	control := make([]byte, 8192)
	control[0] = 42 // system identifier 42
	os.WriteFile(filepath.Join(pgdata, "global", "pg_control"), control, 0o600)
	o := options(t)
	o.DataDir = pgdata
	if _, err := Fetch(context.Background(), s, name, filepath.Join(pgdata, "RECOVERYXLOG"), o); !errors.Is(err, archive.ErrForeign) {
		t.Fatalf("got %v, want ErrForeign", err)
	}
}

// TestFetchFromWrongArchive: "not found" is only said of an archive that
// belongs to this cluster; an empty or foreign location is an error, so a
// mistyped repository cannot end a recovery early.
func TestFetchFromWrongArchive(t *testing.T) {
	missing := wal.SegmentFileName(1, 9, seg16)
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	_, err := Fetch(context.Background(), mem.New(), missing, dest, options(t))
	if !errors.Is(err, archive.ErrNoIdentity) || errors.Is(err, ErrNotFound) {
		t.Fatalf("empty archive: %v, want ErrNoIdentity", err)
	}

	s := mem.New()
	archived(t, s, 1, "zstd")
	pgdata := t.TempDir()
	os.MkdirAll(filepath.Join(pgdata, "global"), 0o700)
	os.WriteFile(filepath.Join(pgdata, "global", "pg_control"), []byte{42, 0, 0, 0, 0, 0, 0, 0}, 0o600)
	o := options(t)
	o.DataDir = pgdata
	if _, err := Fetch(context.Background(), s, missing, dest, o); !errors.Is(err, archive.ErrForeign) {
		t.Fatalf("another cluster's archive: %v, want ErrForeign", err)
	}
}
