package faulty_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/faulty"
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
