package archive

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

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

func zstdCodec(t *testing.T) codec.Codec {
	c, err := codec.ByName("zstd")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// fetch reads back what Push stored, verified.
func fetch(t *testing.T, s storage.Storage, name string) []byte {
	t.Helper()
	rc, info, err := FindWAL(context.Background(), s, name, zstdCodec(t))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	vr, err := NewVerifyingReader(info, MarkReadErrors(rc))
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(vr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestPushRequestEconomy: the first push records the identity; every
// later push costs exactly one conditional PUT and nothing else.
func TestPushRequestEconomy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := faulty.New(mem.New())
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test", CacheDir: t.TempDir()}
	for i := 1; i <= 5; i++ {
		name, data := waltest.Segment(testSysID, 1, wal.SegNo(i), seg16, waltest.Compressible(uint64(i)))
		path := writeFile(t, dir, name, data)
		before := map[string]int{}
		for _, op := range []string{faulty.OpPut, faulty.OpGet, faulty.OpStat, faulty.OpList} {
			before[op] = s.Calls(op)
		}
		res, err := Push(ctx, s, path, o)
		if err != nil {
			t.Fatal(err)
		}
		if res.Size != seg16 || res.Stored >= res.Size/4 {
			t.Fatalf("push %d: size %d stored %d", i, res.Size, res.Stored)
		}
		if got := fetch(t, s, name); !bytes.Equal(got, data) {
			t.Fatalf("push %d: stored content differs", i)
		}
		if i == 1 {
			continue
		}
		for op, n := range before {
			want := 0
			if op == faulty.OpPut {
				want = 1
			}
			// fetch above made one Get of its own.
			if op == faulty.OpGet {
				want = 1
			}
			if got := s.Calls(op) - n; got != want {
				t.Errorf("push %d: %d %s calls, want %d", i, got, op, want)
			}
		}
	}
}

func TestPushIdenticalAndConflicting(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := mem.New()
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	name, data := waltest.Segment(testSysID, 1, 3, seg16, waltest.Compressible(3))
	path := writeFile(t, dir, name, data)
	if _, err := Push(ctx, s, path, o); err != nil {
		t.Fatal(err)
	}
	res, err := Push(ctx, s, path, o)
	if err != nil || !res.AlreadyArchived {
		t.Fatalf("identical re-push: %+v, %v", res, err)
	}
	_, other := waltest.Segment(testSysID, 1, 3, seg16, waltest.Compressible(4))
	writeFile(t, dir, name, other)
	if _, err := Push(ctx, s, path, o); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting push: %v, want ErrConflict", err)
	}
	if got := fetch(t, s, name); !bytes.Equal(got, data) {
		t.Fatal("a conflicting push changed the archived segment")
	}
}

// TestConcurrentIdenticalPush: standbys with archive_mode = always push
// the same segments at the same time into one archive; all succeed.
func TestConcurrentIdenticalPush(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	name, data := waltest.Segment(testSysID, 1, 7, seg16, waltest.Compressible(7))
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := writeFile(t, t.TempDir(), name, data)
			_, errs[i] = Push(ctx, s, path, PushOptions{Codec: zstdCodec(t), Repo: "mem:test"})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pusher %d: %v", i, err)
		}
	}
	if got := fetch(t, s, name); !bytes.Equal(got, data) {
		t.Fatal("stored content differs")
	}
}

func TestPushRefusesForeignAndInvalid(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := mem.New()
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test", CacheDir: t.TempDir()}
	name, data := waltest.Segment(testSysID, 1, 1, seg16, nil)
	if _, err := Push(ctx, s, writeFile(t, dir, name, data), o); err != nil {
		t.Fatal(err)
	}
	otherSys, otherSysData := waltest.Segment(testSysID+1, 1, 2, seg16, nil)
	smallSeg, smallSegData := waltest.Segment(testSysID, 1, 2, 1<<20, nil)
	seg3, seg3Data := waltest.Segment(testSysID, 1, 3, seg16, nil)
	cases := map[string]struct {
		name string
		data []byte
		want error
	}{
		"other system":       {otherSys, otherSysData, ErrForeign},
		"other segment size": {smallSeg, smallSegData, ErrForeign},
		"truncated":          {seg3, seg3Data[:seg16-1], ErrInvalid},
		"wrong page address": {wal.SegmentFileName(1, 4, seg16), seg3Data, ErrInvalid},
		"no header":          {wal.SegmentFileName(1, 5, seg16), make([]byte, seg16), ErrInvalid},
		"bad name":           {"00000001000000000000000Z", seg3Data, ErrBadName},
	}
	for what, tc := range cases {
		t.Run(what, func(t *testing.T) {
			_, err := Push(ctx, s, writeFile(t, t.TempDir(), tc.name, tc.data), o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if _, _, err := FindWAL(ctx, s, tc.name, o.Codec); !errors.Is(err, storage.ErrNotExist) {
				t.Fatalf("a refused file was stored (%v)", err)
			}
		})
	}
}

func TestPushTextFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := mem.New()
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	for _, name := range []string{"00000002.history", "000000010000000000000004.00000028.backup"} {
		data, err := os.ReadFile(filepath.Join("..", "testdata", "wal", name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Push(ctx, s, writeFile(t, dir, name, data), o); err != nil {
			t.Fatal(err)
		}
		if got := fetch(t, s, name); !bytes.Equal(got, data) {
			t.Fatalf("%s reads back different", name)
		}
	}
}

// TestPushStorageFailure: a failed upload is an error, never success, and
// a retry after the fault completes the push.
func TestPushStorageFailure(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := faulty.New(mem.New())
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	name, data := waltest.Segment(testSysID, 1, 1, seg16, nil)
	path := writeFile(t, dir, name, data)
	boom := errors.New("connection reset by peer")
	s.Fail(faulty.OpPut, 0, boom)
	if _, err := Push(ctx, s, path, o); !errors.Is(err, boom) {
		t.Fatalf("push with storage down: %v", err)
	}
	s.Clear()
	// The reply of a successful upload is lost: the retry sees ErrExist
	// and must find the identical copy.
	s.FailAfter(faulty.OpPut, s.Calls(faulty.OpPut)+2, boom)
	if _, err := Push(ctx, s, path, o); !errors.Is(err, boom) {
		t.Fatalf("lost reply: %v", err)
	}
	res, err := Push(ctx, s, path, o)
	if err != nil || !res.AlreadyArchived {
		t.Fatalf("push after a lost reply: %+v, %v", res, err)
	}
}
