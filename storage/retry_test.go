package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/faulty"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/storage/storagetest"
)

// fast keeps backoff short so tests do not sleep.
func fast(attempts int, timeout time.Duration) storage.RetryOptions {
	return storage.RetryOptions{Attempts: attempts, Timeout: timeout, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
}

var errTransient = errors.New("connection reset by peer")

// The wrapper is invisible to a caller when nothing fails.
func TestWithRetryConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		return storage.WithRetry(mem.New(), fast(3, time.Minute))
	})
}

func TestRetryTransientThenSuccess(t *testing.T) {
	f := faulty.New(mem.New())
	f.Fail(faulty.OpPut, 1, errTransient)
	f.Fail(faulty.OpPut, 2, errTransient)
	var logs bytes.Buffer
	o := fast(5, time.Minute)
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s := storage.WithRetry(f, o)

	data := []byte("segment content")
	body := bytes.NewReader(data)
	body.Seek(5, io.SeekStart) // Put must rewind, even before its first attempt
	if err := s.Put(t.Context(), "wal/1", body, int64(len(data)), nil); err != nil {
		t.Fatalf("Put with two transient failures: %v", err)
	}
	if got := f.Calls(faulty.OpPut); got != 3 {
		t.Errorf("Put made %d calls, want 3", got)
	}
	checkContent(t, s, "wal/1", data)
	if n := strings.Count(logs.String(), "will retry"); n != 2 {
		t.Errorf("logged %d retries, want 2:\n%s", n, logs.String())
	}
}

// consuming reads part of the body and then fails, like an upload cut
// off midway.
type consuming struct {
	storage.Storage
	failures int
}

func (c *consuming) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error {
	if c.failures > 0 {
		c.failures--
		io.CopyN(io.Discard, body, size/2)
		return errTransient
	}
	return c.Storage.Put(ctx, key, body, size, meta)
}

func TestRetryRewindsBody(t *testing.T) {
	m := mem.New()
	s := storage.WithRetry(&consuming{Storage: m, failures: 2}, fast(5, time.Minute))
	data := bytes.Repeat([]byte("abcdefgh"), 1000)
	if err := s.Put(t.Context(), "k", bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
	checkContent(t, m, "k", data)
}

func TestRetryStopsAtPermanent(t *testing.T) {
	denied := storage.Permanent(errors.New("access denied"))
	f := faulty.New(mem.New())
	f.Fail(faulty.OpPut, 0, denied)
	s := storage.WithRetry(f, fast(5, time.Minute))
	err := s.Put(t.Context(), "k", bytes.NewReader(nil), 0, nil)
	if err != denied {
		t.Errorf("Put failing with a permanent error: %v, want it returned unchanged", err)
	}
	if got := f.Calls(faulty.OpPut); got != 1 {
		t.Errorf("permanent error retried: %d calls", got)
	}

	// Not found is an answer, not a fault.
	_, err = s.Stat(t.Context(), "missing")
	if !errors.Is(err, storage.ErrNotExist) || f.Calls(faulty.OpStat) != 1 {
		t.Errorf("Stat of a missing key: %v after %d calls", err, f.Calls(faulty.OpStat))
	}

	// A permanent error after transient ones ends the retries too.
	f.Fail(faulty.OpDelete, 1, errTransient)
	f.Fail(faulty.OpDelete, 2, denied)
	err = s.Delete(t.Context(), "k")
	if !errors.Is(err, denied) || !storage.IsPermanent(err) || f.Calls(faulty.OpDelete) != 2 {
		t.Errorf("Delete: %v after %d calls", err, f.Calls(faulty.OpDelete))
	}
	if !strings.Contains(err.Error(), "after 2 attempts") {
		t.Errorf("message does not count attempts: %v", err)
	}
}

func TestRetryHonoursAttempts(t *testing.T) {
	f := faulty.New(mem.New())
	f.Fail(faulty.OpGet, 0, errTransient)
	s := storage.WithRetry(f, fast(3, time.Minute))
	_, _, err := s.Get(t.Context(), "k")
	if !errors.Is(err, errTransient) || storage.IsPermanent(err) {
		t.Errorf("Get: %v, want the transient error", err)
	}
	if got := f.Calls(faulty.OpGet); got != 3 {
		t.Errorf("Get made %d calls, want 3", got)
	}
	if want := "get k: connection reset by peer; gave up after 3 attempts"; err == nil || err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

func TestRetryDefaults(t *testing.T) {
	o := storage.DefaultRetryOptions()
	if o.Attempts != 5 || o.Timeout != 2*time.Minute || o.MinBackoff != 250*time.Millisecond || o.MaxBackoff != 8*time.Second {
		t.Errorf("DefaultRetryOptions() = %+v", o)
	}
	// Zero options mean the defaults: 5 attempts, never unbounded.
	calls := 0
	err := storage.Retry(t.Context(), storage.RetryOptions{MinBackoff: time.Microsecond, MaxBackoff: time.Microsecond}, "op",
		func(ctx context.Context) error {
			calls++
			if _, ok := ctx.Deadline(); !ok {
				t.Error("attempt context has no deadline")
			}
			return errTransient
		})
	if calls != 5 || !errors.Is(err, errTransient) {
		t.Errorf("zero options: %d calls, %v", calls, err)
	}
}

func TestRetryTimeoutEndsHungCall(t *testing.T) {
	f := faulty.New(mem.New())
	if err := f.Put(t.Context(), "k", bytes.NewReader([]byte("v")), 1, nil); err != nil {
		t.Fatal(err)
	}
	f.Hang(faulty.OpStat, 1)
	s := storage.WithRetry(f, fast(3, 50*time.Millisecond))
	start := time.Now()
	if _, err := s.Stat(t.Context(), "k"); err != nil {
		t.Fatalf("Stat whose first attempt hung: %v", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 5*time.Second {
		t.Errorf("took %v, want the 50ms timeout and a quick retry", d)
	}

	f.Hang(faulty.OpStat, 0)
	start = time.Now()
	_, err := s.Stat(t.Context(), "k")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "attempt timed out after 50ms") ||
		!strings.Contains(err.Error(), "gave up after 3 attempts") {
		t.Errorf("Stat that always hangs: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("three 50ms attempts took %v", d)
	}
}

func TestRetryGetTimeoutCoversBody(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 5000)
	f := faulty.New(mem.New())
	if err := f.Put(t.Context(), "k", bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
	f.Stall(1, 1000)
	s := storage.WithRetry(f, fast(3, 100*time.Millisecond))
	start := time.Now()
	rc, _, err := s.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if len(got) != 1000 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("stalled download: %d bytes, %v; want 1000 bytes and a deadline error", len(got), err)
	}
	if err != nil && !strings.Contains(err.Error(), "not read completely within 100ms") {
		t.Errorf("message does not explain the timeout: %v", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("stalled download ended after %v, want about 100ms", d)
	}

	// A healthy download is unaffected, and its context lives until Close.
	rc, _, err = s.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the reader outlives Get's return
	got, err = io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("healthy download: %d bytes, %v", len(got), err)
	}
	if err := rc.Close(); err != nil {
		t.Error(err)
	}
}

func TestRetryStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	calls := 0
	o := storage.RetryOptions{Attempts: 5, Timeout: time.Minute, MinBackoff: time.Hour, MaxBackoff: time.Hour}
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	err := storage.Retry(ctx, o, "put k", func(context.Context) error {
		calls++
		return errTransient
	})
	// Full jitter may draw a wait near zero; with an hour's ceiling that is
	// very unlikely, and then the second attempt still sees the
	// cancellation.
	if calls > 2 || !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) || time.Since(start) > 5*time.Second {
		t.Errorf("Retry cancelled during backoff: %d calls, %v after %v", calls, err, time.Since(start))
	}
	if !strings.Contains(err.Error(), "stopped after") {
		t.Errorf("message %q does not say the retries were stopped", err)
	}
}

func TestRetryList(t *testing.T) {
	f := faulty.New(mem.New())
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		if err := f.Put(t.Context(), k, bytes.NewReader(nil), 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	s := storage.WithRetry(f, fast(5, time.Minute))
	collect := func() ([]string, error) {
		var keys []string
		err := s.List(t.Context(), "", func(oi storage.ObjectInfo) error {
			keys = append(keys, oi.Key)
			return nil
		})
		return keys, err
	}

	// Failing before the first object: the listing is retried.
	f.Fail(faulty.OpList, 1, errTransient)
	keys, err := collect()
	if err != nil || strings.Join(keys, "") != "abcde" || f.Calls(faulty.OpList) != 2 {
		t.Errorf("List failing up front: %q, %v after %d calls", keys, err, f.Calls(faulty.OpList))
	}

	// Failing after objects were handed out: the error is returned, no
	// object is handed out twice.
	f.BreakList(3, 2, errTransient)
	keys, err = collect()
	if !errors.Is(err, errTransient) || strings.Join(keys, "") != "ab" || f.Calls(faulty.OpList) != 3 {
		t.Errorf("List breaking midway: %q, %v after %d calls", keys, err, f.Calls(faulty.OpList))
	}

	// The callback's error comes back unchanged.
	stop := errors.New("stop")
	err = s.List(t.Context(), "", func(storage.ObjectInfo) error { return stop })
	if err != stop || f.Calls(faulty.OpList) != 4 {
		t.Errorf("List whose callback fails: %v after %d calls, want the callback's error", err, f.Calls(faulty.OpList))
	}
}

func TestRetryFailedAfterStoring(t *testing.T) {
	// An upload that succeeded but whose reply was lost: the retry finds
	// the object. Callers see ErrExist and compare checksums.
	f := faulty.New(mem.New())
	f.FailAfter(faulty.OpPut, 1, errTransient)
	s := storage.WithRetry(f, fast(5, time.Minute))
	err := s.Put(t.Context(), "k", bytes.NewReader([]byte("v")), 1, nil)
	if !errors.Is(err, storage.ErrExist) || f.Calls(faulty.OpPut) != 2 {
		t.Errorf("Put whose reply was lost: %v after %d calls", err, f.Calls(faulty.OpPut))
	}
	checkContent(t, s, "k", []byte("v"))
}

func checkContent(t *testing.T, s storage.Storage, key string, want []byte) {
	t.Helper()
	rc, _, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s holds %q (%v), want %q", key, got, err, want)
	}
}

// streamWatcher records what PutStream's context carries.
type streamWatcher struct {
	storage.Storage
	opts        storage.RetryOptions
	hasDeadline bool
}

func (w *streamWatcher) PutStream(ctx context.Context, key string, r io.Reader, meta map[string]string) (int64, error) {
	w.opts = storage.RetryOptionsFromContext(ctx)
	_, w.hasDeadline = ctx.Deadline()
	return w.Storage.PutStream(ctx, key, r, meta)
}

// slowStream hands out its data in small pieces with pauses between.
type slowStream struct {
	data  []byte
	pause time.Duration
}

func (s *slowStream) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.pause)
	n := copy(p[:min(len(p), 10)], s.data)
	s.data = s.data[n:]
	return n, nil
}

// A stream may take far longer than one attempt's timeout: a base backup
// runs for hours. The wrapper passes it through once, without a
// deadline, and hands its options to the backend for the parts.
func TestRetryPutStreamPassesThrough(t *testing.T) {
	w := &streamWatcher{Storage: mem.New()}
	o := fast(3, 20*time.Millisecond)
	s := storage.WithRetry(w, o)
	data := bytes.Repeat([]byte("0123456789"), 10) // ten reads, 100ms in all
	start := time.Now()
	n, err := s.PutStream(t.Context(), "b/base.tar", &slowStream{data: data, pause: 10 * time.Millisecond}, nil)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("PutStream taking %v, five times the per-attempt timeout: %d bytes, %v", time.Since(start), n, err)
	}
	checkContent(t, s, "b/base.tar", data)
	if w.hasDeadline {
		t.Error("the wrapper put a deadline on PutStream's context")
	}
	if w.opts.Attempts != o.Attempts || w.opts.Timeout != o.Timeout || w.opts.MinBackoff != o.MinBackoff || w.opts.MaxBackoff != o.MaxBackoff {
		t.Errorf("the backend found retry options %+v in the context, want %+v", w.opts, o)
	}

	// The stream is read once, so a failure is not retried.
	f := faulty.New(mem.New())
	f.Fail(faulty.OpPutStream, 1, errTransient)
	s = storage.WithRetry(f, o)
	if _, err := s.PutStream(t.Context(), "b/base.tar", bytes.NewReader(data), nil); !errors.Is(err, errTransient) {
		t.Errorf("PutStream failing once: %v, want the failure", err)
	}
	if got := f.Calls(faulty.OpPutStream); got != 1 {
		t.Errorf("a failed PutStream was called %d times, want once", got)
	}
}

func TestRetryOptionsFromContext(t *testing.T) {
	if got, want := storage.RetryOptionsFromContext(t.Context()), storage.DefaultRetryOptions(); got != want {
		t.Errorf("without options in the context: %+v, want the defaults %+v", got, want)
	}
	ctx := storage.ContextWithRetryOptions(t.Context(), storage.RetryOptions{Attempts: 2})
	got := storage.RetryOptionsFromContext(ctx)
	want := storage.DefaultRetryOptions()
	want.Attempts = 2
	if got != want {
		t.Errorf("with Attempts 2 in the context: %+v, want %+v (zero fields from the defaults)", got, want)
	}
}
