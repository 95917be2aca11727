package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// noListing is a store seen by a pushing host without s3:ListBucket and
// s3:DeleteObject, as AWS S3 shows it: a Get or Stat of a missing key is
// refused (403), not "not found", and listing and deleting are refused.
type noListing struct{ storage.Storage }

var errDenied = errors.New("access denied (403)")

func (s noListing) Get(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	rc, info, err := s.Storage.Get(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, storage.ObjectInfo{}, storage.Permanent(fmt.Errorf("get %s: %w", key, errDenied))
	}
	return rc, info, err
}

func (s noListing) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	info, err := s.Storage.Stat(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return storage.ObjectInfo{}, storage.Permanent(fmt.Errorf("stat %s: %w", key, errDenied))
	}
	return info, err
}

func (s noListing) List(context.Context, string, func(storage.ObjectInfo) error) error {
	return storage.Permanent(fmt.Errorf("list: %w", errDenied))
}

func (s noListing) Delete(context.Context, string) error {
	return storage.Permanent(fmt.Errorf("delete: %w", errDenied))
}

// TestPushWithoutListing: a pusher that cannot tell a missing key from a
// forbidden one still records the identity on the first push (with a
// conditional write), keeps every guarantee of Push, and backup-push's
// wait for its last segment still sees it arrive.
func TestPushWithoutListing(t *testing.T) {
	ctx := context.Background()
	backing := mem.New()
	s := noListing{backing}
	dir := t.TempDir()
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem://x", CacheDir: filepath.Join(dir, "cache")}

	// A history file first, on an archive without identity: nothing to
	// compare with, so it goes in unchecked.
	hist := writeFile(t, dir, "00000002.history", []byte("1\t0/3000000\tno recovery target specified\n"))
	if _, err := Push(ctx, s, hist, o); err != nil {
		t.Fatalf("push of a history file to an archive without identity: %v", err)
	}
	name, data := waltest.Segment(testSysID, 1, 1, seg16, waltest.Compressible(1))
	path := writeFile(t, dir, name, data)
	if _, err := Push(ctx, s, path, o); err != nil {
		t.Fatalf("first push: %v", err)
	}
	id, err := ReadIdentity(ctx, backing)
	if err != nil || id.SystemID != testSysID || id.SegmentSize != seg16 {
		t.Fatalf("identity after the first push: %+v, %v", id, err)
	}

	// Without the cache, each push settles the identity in the archive.
	o.CacheDir = ""
	res, err := Push(ctx, s, path, o)
	if err != nil || !res.AlreadyArchived {
		t.Fatalf("identical re-push: %+v, %v", res, err)
	}
	name2, other := waltest.Segment(testSysID, 1, 1, seg16, waltest.Compressible(2))
	if _, err := Push(ctx, s, writeFile(t, t.TempDir(), name2, other), o); !errors.Is(err, ErrConflict) {
		t.Fatalf("push of other content under an archived name: %v, want ErrConflict", err)
	}
	fname, foreign := waltest.Segment(testSysID+1, 1, 2, seg16, waltest.Compressible(3))
	if _, err := Push(ctx, s, writeFile(t, dir, fname, foreign), o); !errors.Is(err, ErrForeign) {
		t.Fatalf("push of another cluster's WAL: %v, want ErrForeign", err)
	}
	if got := fetch(t, backing, name); string(got) != string(data) {
		t.Fatal("the archived segment changed")
	}

	// EnsureIdentity (backup-push, wal-stream) on a fresh archive, and
	// on one that has an identity.
	fresh := noListing{mem.New()}
	want := Identity{SystemID: 42, SegmentSize: seg16}
	for range 2 {
		got, err := EnsureIdentity(ctx, fresh, "mem://fresh", "", want)
		if err != nil || got.SystemID != 42 {
			t.Fatalf("EnsureIdentity without listing: %+v, %v", got, err)
		}
	}

	// backup-push's wait for its last segment.
	for _, tc := range []struct {
		name string
		c    codec.Codec
		want bool
	}{
		{name, zstdCodec(t), true},
		{name, mustCodec(t, "s2"), true}, // archived with zstd, looked for with s2 first
		{wal.SegmentFileName(1, 5, seg16), zstdCodec(t), false},
	} {
		got, err := WALArchived(ctx, s, tc.name, tc.c)
		if err != nil || got != tc.want {
			t.Errorf("WALArchived(%s, %s) = %v, %v; want %v", tc.name, tc.c.Name(), got, err, tc.want)
		}
	}
}

// TestEnsureIdentityReportsDenial: when the identity exists but cannot
// be read, the error says the read failed, not that nothing was found.
func TestEnsureIdentityReportsDenial(t *testing.T) {
	ctx := context.Background()
	backing := mem.New()
	if _, err := EnsureIdentity(ctx, backing, "mem://x", "", Identity{SystemID: 1, SegmentSize: seg16}); err != nil {
		t.Fatal(err)
	}
	_, err := EnsureIdentity(ctx, unreadable{backing}, "mem://x", "", Identity{SystemID: 1, SegmentSize: seg16})
	if err == nil || !errors.Is(err, errDenied) || !strings.Contains(err.Error(), "read the archive's cluster identity") {
		t.Fatalf("EnsureIdentity with an unreadable identity: %v", err)
	}
}

// unreadable refuses every Get.
type unreadable struct{ storage.Storage }

func (s unreadable) Get(_ context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	return nil, storage.ObjectInfo{}, storage.Permanent(fmt.Errorf("get %s: %w", key, errDenied))
}

func mustCodec(t *testing.T, name string) codec.Codec {
	t.Helper()
	c, err := codec.ByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
