package storage_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/faulty"
	"github.com/walship/walship/storage/mem"
)

var errDenied = storage.Permanent(errors.New("access denied"))

// batches is a backend with DeleteBatch: it records every batch and
// answers with what answer returns for it (nil: delete them all).
type batches struct {
	*mem.Storage
	mu     sync.Mutex
	calls  [][]string
	answer func(call int, keys []string) error
}

func newBatches(answer func(call int, keys []string) error) *batches {
	return &batches{Storage: mem.New(), answer: answer}
}

func (b *batches) DeleteBatch(ctx context.Context, keys []string) error {
	b.mu.Lock()
	b.calls = append(b.calls, slices.Clone(keys))
	call := len(b.calls)
	b.mu.Unlock()
	if len(keys) > storage.MaxBatch {
		return fmt.Errorf("batch of %d keys", len(keys))
	}
	var err error
	if b.answer != nil {
		err = b.answer(call, keys)
	}
	var de *storage.DeleteError
	if err != nil && !errors.As(err, &de) {
		return err
	}
	for _, k := range keys {
		if de == nil || !slices.ContainsFunc(de.Failed, func(f storage.KeyError) bool { return f.Key == k }) {
			b.Storage.Delete(ctx, k)
		}
	}
	return err
}

func (b *batches) batches() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func keyNames(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("wal/%024X", i)
	}
	return keys
}

func putAll(t *testing.T, s storage.Storage, keys []string) {
	t.Helper()
	for _, k := range keys {
		if err := s.Put(t.Context(), k, strings.NewReader(k), int64(len(k)), nil); err != nil {
			t.Fatal(err)
		}
	}
}

func stored(t *testing.T, s storage.Storage) []string {
	t.Helper()
	var keys []string
	if err := s.List(t.Context(), "", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestDeleteAllBatches(t *testing.T) {
	b := newBatches(nil)
	keys := keyNames(2500)
	putAll(t, b, keys)
	var progress []int
	if err := storage.DeleteAll(t.Context(), b, keys, func(done int) { progress = append(progress, done) }); err != nil {
		t.Fatal(err)
	}
	calls := b.batches()
	if len(calls) != 3 || !slices.Equal(slices.Concat(calls...), keys) {
		t.Errorf("DeleteAll of 2500 keys sent %d batches; want 3 with all keys in order", len(calls))
	}
	if !slices.Equal(progress, []int{1000, 2000, 2500}) {
		t.Errorf("progress %v, want [1000 2000 2500]", progress)
	}
	if left := stored(t, b); len(left) != 0 {
		t.Errorf("%d objects left", len(left))
	}
}

func TestDeleteAllStopsAtFailedBatch(t *testing.T) {
	b := newBatches(func(call int, keys []string) error {
		if call == 2 {
			return &storage.DeleteError{Failed: []storage.KeyError{{Key: keys[7], Err: errDenied}}}
		}
		return nil
	})
	keys := keyNames(2500)
	var progress []int
	err := storage.DeleteAll(t.Context(), b, keys, func(done int) { progress = append(progress, done) })
	var de *storage.DeleteError
	if !errors.As(err, &de) || len(de.Failed) != 1 || de.Failed[0].Key != keys[1007] {
		t.Fatalf("DeleteAll with a key failing in batch 2: %v, want a *DeleteError for %s", err, keys[1007])
	}
	if n := len(b.batches()); n != 2 {
		t.Errorf("DeleteAll sent %d batches after batch 2 failed, want it to stop at 2", n)
	}
	if !slices.Equal(progress, []int{1000}) {
		t.Errorf("progress %v, want [1000]", progress)
	}

	// A cancelled context stops it before the first batch.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	b = newBatches(nil)
	if err := storage.DeleteAll(ctx, b, keys, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("DeleteAll with a cancelled context: %v, want context.Canceled", err)
	}
	if n := len(b.batches()); n != 0 {
		t.Errorf("DeleteAll with a cancelled context sent %d batches", n)
	}
}

// counting records how many Deletes run at once.
type counting struct {
	storage.Storage
	running, most atomic.Int32
}

func (c *counting) Delete(ctx context.Context, key string) error {
	n := c.running.Add(1)
	defer c.running.Add(-1)
	for {
		m := c.most.Load()
		if n <= m || c.most.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(time.Millisecond)
	return c.Storage.Delete(ctx, key)
}

func TestDeleteAllFallback(t *testing.T) {
	c := &counting{Storage: mem.New()}
	keys := keyNames(300)
	putAll(t, c, keys)
	putAll(t, c, []string{"wal.json"})
	var progress []int
	err := storage.DeleteAll(t.Context(), c, append(keys, "wal/never-stored"), func(done int) { progress = append(progress, done) })
	if err != nil {
		t.Fatal(err)
	}
	if left := stored(t, c); !slices.Equal(left, []string{"wal.json"}) {
		t.Errorf("left %d objects (%s…), want only wal.json", len(left), left[0])
	}
	if want := len(keys) + 1; len(progress) != want || !slices.IsSorted(progress) || progress[len(progress)-1] != want {
		t.Errorf("progress called %d times, want %d increasing counts to %d", len(progress), want, want)
	}
	if m := c.most.Load(); m > 16 || m < 2 {
		t.Errorf("at most %d Deletes ran at once, want 2 to 16", m)
	}
}

func TestDeleteAllFallbackFailure(t *testing.T) {
	f := faulty.New(mem.New())
	keys := keyNames(1000)
	putAll(t, f, keys)
	f.Fail(faulty.OpDelete, 10, errDenied)
	err := storage.DeleteAll(t.Context(), f, keys, nil)
	t.Logf("%v", err)
	var de *storage.DeleteError
	if !errors.As(err, &de) || len(de.Failed) != 1 || !errors.Is(err, errDenied) || !storage.IsPermanent(err) {
		t.Fatalf("DeleteAll with one Delete denied: %v, want a permanent *DeleteError for one key", err)
	}
	if n := f.Calls(faulty.OpDelete); n > 10+16 {
		t.Errorf("DeleteAll made %d Delete calls, want it to stop at the failure", n)
	}
	if !strings.Contains(err.Error(), de.Failed[0].Key) {
		t.Errorf("error %q does not name the key", err)
	}

	// The caller's cancellation is no key's failure.
	f.Clear()
	ctx, cancel := context.WithCancel(t.Context())
	f.Hang(faulty.OpDelete, 0)
	time.AfterFunc(20*time.Millisecond, cancel)
	err = storage.DeleteAll(ctx, f, keys, nil)
	t.Logf("%v", err)
	if !errors.Is(err, context.Canceled) || errors.As(err, &de) {
		t.Errorf("DeleteAll cancelled while Deletes hang: %v, want context.Canceled and no *DeleteError", err)
	}
}

func TestDeleteError(t *testing.T) {
	transient := errors.New("slow down\nplease")
	for _, tc := range []struct {
		name      string
		failed    []storage.KeyError
		permanent bool
		want      string
	}{
		{"OnePermanent", []storage.KeyError{{"wal/1", errDenied}}, true,
			"could not delete wal/1: access denied"},
		{"AllPermanent", []storage.KeyError{{"wal/1", errDenied}, {"wal/2", storage.Permanent(transient)}}, true,
			"could not delete 2 objects; the first, wal/1: access denied"},
		{"Mixed", []storage.KeyError{{"wal/1", transient}, {"wal/2", errDenied}}, false,
			"could not delete 2 objects; the first, wal/1: slow down please"},
		{"Transient", []storage.KeyError{{"wal/1", transient}}, false,
			"could not delete wal/1: slow down please"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := fmt.Errorf("cleanup: %w", &storage.DeleteError{Failed: tc.failed})
			if got := err.Error(); got != "cleanup: "+tc.want {
				t.Errorf("Error() = %q, want %q", got, "cleanup: "+tc.want)
			}
			if got := storage.IsPermanent(err); got != tc.permanent {
				t.Errorf("IsPermanent = %v, want %v", got, tc.permanent)
			}
			for _, f := range tc.failed {
				if !errors.Is(err, f.Err) {
					t.Errorf("errors.Is(err, error of %s) = false", f.Key)
				}
			}
		})
	}
}

func TestRetryingDeleteBatch(t *testing.T) {
	transient := errors.New("connection reset by peer")

	t.Run("WholeBatch", func(t *testing.T) {
		b := newBatches(func(call int, keys []string) error {
			if call == 1 {
				return transient
			}
			return nil
		})
		keys := keyNames(10)
		putAll(t, b, keys)
		r := storage.WithRetry(b, fast(3, time.Minute)).(storage.BatchDeleter)
		if err := r.DeleteBatch(t.Context(), keys); err != nil {
			t.Fatal(err)
		}
		if calls := b.batches(); len(calls) != 2 || !slices.Equal(calls[1], keys) {
			t.Errorf("batches %q, want the whole batch twice", calls)
		}
		if left := stored(t, b); len(left) != 0 {
			t.Errorf("%d objects left", len(left))
		}
	})

	t.Run("PartialFailure", func(t *testing.T) {
		keys := keyNames(10)
		b := newBatches(func(call int, batch []string) error {
			switch call {
			case 1:
				return &storage.DeleteError{Failed: []storage.KeyError{
					{Key: keys[2], Err: transient},
					{Key: keys[5], Err: errDenied},
					{Key: keys[8], Err: transient},
				}}
			case 2:
				return &storage.DeleteError{Failed: []storage.KeyError{{Key: keys[8], Err: transient}}}
			}
			return nil
		})
		putAll(t, b, keys)
		r := storage.WithRetry(b, fast(5, time.Minute)).(storage.BatchDeleter)
		err := r.DeleteBatch(t.Context(), keys)
		var de *storage.DeleteError
		if !errors.As(err, &de) || len(de.Failed) != 1 || de.Failed[0].Key != keys[5] || !storage.IsPermanent(err) {
			t.Fatalf("DeleteBatch: %v, want a permanent *DeleteError for %s alone", err, keys[5])
		}
		want := [][]string{keys, {keys[2], keys[8]}, {keys[8]}}
		if calls := b.batches(); !slices.EqualFunc(calls, want, slices.Equal) {
			t.Errorf("batches %q, want %q: only transient failures retried", calls, want)
		}
		if left := stored(t, b); !slices.Equal(left, []string{keys[5]}) {
			t.Errorf("left %q, want only %s", left, keys[5])
		}
	})

	t.Run("GivesUp", func(t *testing.T) {
		keys := keyNames(4)
		b := newBatches(func(call int, batch []string) error {
			failed := []storage.KeyError{{Key: keys[3], Err: transient}}
			if call == 1 {
				failed = append(failed, storage.KeyError{Key: keys[0], Err: errDenied})
			}
			return &storage.DeleteError{Failed: failed}
		})
		r := storage.WithRetry(b, fast(3, time.Minute)).(storage.BatchDeleter)
		err := r.DeleteBatch(t.Context(), keys)
		t.Logf("%v", err)
		var de *storage.DeleteError
		if !errors.As(err, &de) || len(de.Failed) != 2 || de.Failed[0].Key != keys[0] || de.Failed[1].Key != keys[3] {
			t.Fatalf("DeleteBatch: %v, want a *DeleteError for %s and %s", err, keys[0], keys[3])
		}
		if storage.IsPermanent(err) {
			t.Errorf("IsPermanent(%v) = true, but one key failed transiently", err)
		}
		if !errors.Is(err, transient) || !errors.Is(err, errDenied) {
			t.Errorf("%v does not match both per-key errors", err)
		}
		if msg := de.Failed[1].Err.Error(); !strings.Contains(msg, "gave up after 3 attempts") {
			t.Errorf("error of the key that kept failing: %q, want it to say how often it was tried", msg)
		}
		if n := len(b.batches()); n != 3 {
			t.Errorf("%d batches, want 3", n)
		}
	})

	t.Run("Fallback", func(t *testing.T) {
		f := faulty.New(mem.New())
		keys := keyNames(40)
		putAll(t, f, append(slices.Clone(keys), "wal.json"))
		f.Fail(faulty.OpDelete, 3, transient)
		f.Fail(faulty.OpDelete, 7, transient)
		r := storage.WithRetry(f, fast(3, time.Minute)).(storage.BatchDeleter)
		if err := r.DeleteBatch(t.Context(), keys); err != nil {
			t.Fatal(err)
		}
		if n := f.Calls(faulty.OpDelete); n != len(keys)+2 {
			t.Errorf("%d Delete calls, want %d: one per key and one per retry", n, len(keys)+2)
		}
		if left := stored(t, f); !slices.Equal(left, []string{"wal.json"}) {
			t.Errorf("left %q, want only wal.json", left)
		}

		putAll(t, f, keys)
		f.Fail(faulty.OpDelete, 0, errDenied)
		err := r.DeleteBatch(t.Context(), keys)
		var de *storage.DeleteError
		if !errors.As(err, &de) || !storage.IsPermanent(err) {
			t.Errorf("DeleteBatch with every Delete denied: %v, want a permanent *DeleteError", err)
		}
	})
}
