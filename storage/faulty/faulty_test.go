package faulty_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/faulty"
	"github.com/walship/walship/storage/fs"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/storage/storagetest"
)

// Without faults the wrapper changes nothing.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return faulty.New(mem.New()) })
}

var errInjected = errors.New("injected")

func setup(t *testing.T, data []byte) *faulty.Storage {
	t.Helper()
	f := faulty.New(mem.New())
	if err := f.Put(t.Context(), "obj", bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestFailNthCall(t *testing.T) {
	f := setup(t, []byte("x"))
	f.Fail(faulty.OpStat, 3, errInjected)
	for i := 1; i <= 3; i++ {
		_, err := f.Stat(t.Context(), "obj")
		if want := i == 3; (err != nil) != want || (want && !errors.Is(err, errInjected)) {
			t.Errorf("Stat call %d: %v", i, err)
		}
	}
	// Stat counted 3 calls; Put counted the one in setup.
	if got := f.Calls(faulty.OpStat); got != 3 {
		t.Errorf("Calls(stat) = %d, want 3", got)
	}
	if got := f.Calls(faulty.OpPut); got != 1 {
		t.Errorf("Calls(put) = %d, want 1", got)
	}

	f.Fail(faulty.OpDelete, 0, errInjected)
	for range 3 {
		if err := f.Delete(t.Context(), "obj"); !errors.Is(err, errInjected) {
			t.Errorf("Delete with a fault on every call: %v", err)
		}
	}
	f.Clear()
	if err := f.Delete(t.Context(), "obj"); err != nil {
		t.Errorf("Delete after Clear: %v", err)
	}
}

func TestFailAfter(t *testing.T) {
	f := faulty.New(mem.New())
	f.FailAfter(faulty.OpPut, 1, errInjected)
	if err := f.Put(t.Context(), "k", bytes.NewReader([]byte("v")), 1, nil); !errors.Is(err, errInjected) {
		t.Fatalf("Put: %v", err)
	}
	// The reply was lost, the object was not.
	if _, err := f.Stat(t.Context(), "k"); err != nil {
		t.Errorf("object of a Put whose reply was lost: %v", err)
	}
}

func TestDelayAndHang(t *testing.T) {
	f := setup(t, []byte("x"))
	f.Delay(faulty.OpStat, 2, 50*time.Millisecond)
	start := time.Now()
	if _, err := f.Stat(t.Context(), "obj"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 40*time.Millisecond {
		t.Errorf("call 1 took %v; only call 2 is delayed", d)
	}
	start = time.Now()
	if _, err := f.Stat(t.Context(), "obj"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("delayed call took %v, want at least 50ms", d)
	}

	f.Hang(faulty.OpGet, 0)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if _, _, err := f.Get(ctx, "obj"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung Get: %v, want the context's deadline", err)
	}
}

func TestBodyFaults(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	f := setup(t, data)
	f.Truncate(1, 4321)
	f.FlipBit(2, 5000)

	rc, info, err := f.Get(t.Context(), "obj")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data[:4321]) || info.Size != int64(len(data)) {
		t.Errorf("truncated Get: %d bytes, err %v, Size %d", len(got), err, info.Size)
	}

	rc, _, err = f.Get(t.Context(), "obj")
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(rc)
	rc.Close()
	want := bytes.Clone(data)
	want[5000] ^= 1
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("bit-flipped Get: err %v, equal %v", err, bytes.Equal(got, want))
	}

	f.Stall(3, 100)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	rc, _, err = f.Get(ctx, "obj")
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(rc)
	rc.Close()
	if len(got) != 100 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("stalled Get: %d bytes, %v; want 100 bytes and the context's deadline", len(got), err)
	}

	// Closing the body ends a stall too.
	f.Stall(4, 0)
	rc, _, err = f.Get(t.Context(), "obj")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := rc.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	rc.Close()
	if err := <-done; err == nil {
		t.Error("read of a stalled body closed under it succeeded")
	}
}

func TestBreakList(t *testing.T) {
	f := faulty.New(mem.New())
	for _, k := range []string{"a", "b", "c", "d"} {
		if err := f.Put(t.Context(), k, bytes.NewReader(nil), 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ items, want int }{{2, 2}, {10, 4}} {
		f.Clear()
		f.BreakList(0, tc.items, errInjected)
		n := 0
		err := f.List(t.Context(), "", func(storage.ObjectInfo) error { n++; return nil })
		if !errors.Is(err, errInjected) || n != tc.want {
			t.Errorf("BreakList after %d items: %d handed out, %v", tc.items, n, err)
		}
	}
}

func TestUnknownOperation(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Fail with an unknown operation did not panic")
		}
	}()
	faulty.New(mem.New()).Fail("upload", 1, errInjected)
}

// TestPutStreamFaults breaks streams on their way into real backends and
// checks that nothing becomes visible, nor stays on disk.
func TestPutStreamFaults(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) (storage.Storage, string){
		"mem": func(t *testing.T) (storage.Storage, string) { return mem.New(), "" },
		"fs": func(t *testing.T) (storage.Storage, string) {
			dir := t.TempDir()
			s, err := fs.New(dir)
			if err != nil {
				t.Fatal(err)
			}
			return s, dir
		},
	} {
		t.Run(name, func(t *testing.T) {
			s, dir := open(t)
			f := faulty.New(s)
			data := bytes.Repeat([]byte("base backup "), 100_000) // 1.2 MB
			stream := func() io.Reader { return struct{ io.Reader }{bytes.NewReader(data)} }

			f.Fail(faulty.OpPutStream, 2, errInjected)
			f.CutStream(3, 300_000, nil)
			broken := errors.New("connection to the primary lost")
			f.CutStream(4, 700_000, broken)
			f.CutStream(5, int64(len(data))+1, broken) // past the end: no harm

			if _, err := f.PutStream(t.Context(), "b/1", stream(), nil); err != nil {
				t.Fatalf("PutStream call 1: %v", err)
			}
			unread := &countingReader{r: stream()}
			if _, err := f.PutStream(t.Context(), "b/2", unread, nil); !errors.Is(err, errInjected) {
				t.Errorf("PutStream call 2: %v, want the injected error", err)
			}
			if unread.n != 0 {
				t.Errorf("a PutStream failed before reaching the storage read %d bytes of its stream", unread.n)
			}
			if _, err := f.PutStream(t.Context(), "b/3", stream(), nil); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("PutStream call 3, cut after 300000 bytes: %v, want an error matching io.ErrUnexpectedEOF", err)
			}
			if _, err := f.PutStream(t.Context(), "b/4", stream(), nil); !errors.Is(err, broken) {
				t.Errorf("PutStream call 4, cut after 700000 bytes: %v, want the cut's error", err)
			}
			if n, err := f.PutStream(t.Context(), "b/5", stream(), nil); err != nil || n != int64(len(data)) {
				t.Errorf("PutStream call 5, cut past the end: %d bytes, %v", n, err)
			}
			for _, key := range []string{"b/2", "b/3", "b/4"} {
				if _, err := f.Stat(t.Context(), key); !errors.Is(err, storage.ErrNotExist) {
					t.Errorf("Stat(%q) after its PutStream failed: %v, want ErrNotExist", key, err)
				}
			}
			var keys []string
			if err := f.List(t.Context(), "", func(oi storage.ObjectInfo) error {
				keys = append(keys, oi.Key)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if len(keys) != 2 || keys[0] != "b/1" || keys[1] != "b/5" {
				t.Errorf("List after the faults: %q, want [b/1 b/5]", keys)
			}
			if dir != "" {
				// No temporary file of a failed stream stays on disk.
				entries, err := os.ReadDir(filepath.Join(dir, "b"))
				if err != nil {
					t.Fatal(err)
				}
				if len(entries) != 2 {
					var names []string
					for _, e := range entries {
						names = append(names, e.Name())
					}
					t.Errorf("the archive directory holds %q, want only the two objects", names)
				}
			}
			if got := f.Calls(faulty.OpPutStream); got != 5 {
				t.Errorf("Calls(putstream) = %d, want 5", got)
			}
			if got := f.Calls(faulty.OpPut); got != 0 {
				t.Errorf("Calls(put) = %d after PutStreams only, want 0", got)
			}

			// A lost reply: stored, yet reported as failed.
			f.FailAfter(faulty.OpPutStream, 6, errInjected)
			if _, err := f.PutStream(t.Context(), "b/6", stream(), nil); !errors.Is(err, errInjected) {
				t.Errorf("PutStream call 6: %v, want the injected error", err)
			}
			if _, err := f.Stat(t.Context(), "b/6"); err != nil {
				t.Errorf("object of a PutStream whose reply was lost: %v", err)
			}
		})
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
