package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"
)

// RetryOptions bound how long a storage call may take and how often it is
// tried. A zero field takes its value from DefaultRetryOptions, so every
// call has a timeout.
type RetryOptions struct {
	Attempts int           // tries in all, the first included
	Timeout  time.Duration // per attempt; for Get it also covers reading the body
	// Waits between attempts are drawn uniformly from zero up to
	// MinBackoff doubled once per failed attempt, capped at MaxBackoff
	// ("full jitter"), so that many walship processes hitting one
	// struggling server do not retry in step.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger // retries are logged at Warn; nil logs nothing
}

// DefaultRetryOptions returns 5 attempts of at most 2 minutes each, with
// backoff between 250ms and 8s.
func DefaultRetryOptions() RetryOptions {
	return RetryOptions{
		Attempts:   5,
		Timeout:    2 * time.Minute,
		MinBackoff: 250 * time.Millisecond,
		MaxBackoff: 8 * time.Second,
	}
}

func (o RetryOptions) withDefaults() RetryOptions {
	d := DefaultRetryOptions()
	if o.Attempts <= 0 {
		o.Attempts = d.Attempts
	}
	if o.Timeout <= 0 {
		o.Timeout = d.Timeout
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = d.MinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = d.MaxBackoff
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	return o
}

type retryOptionsKey struct{}

// ContextWithRetryOptions returns a copy of ctx that carries o, for a
// backend that retries parts of a call itself (PutStream). WithRetry
// attaches its options this way, so a stream's parts are retried like
// every other call.
func ContextWithRetryOptions(ctx context.Context, o RetryOptions) context.Context {
	return context.WithValue(ctx, retryOptionsKey{}, o)
}

// RetryOptionsFromContext returns the options attached to ctx with
// ContextWithRetryOptions, or DefaultRetryOptions when there are none.
// Zero fields are filled in from DefaultRetryOptions.
func RetryOptionsFromContext(ctx context.Context) RetryOptions {
	o, _ := ctx.Value(retryOptionsKey{}).(RetryOptions)
	return o.withDefaults()
}

// backoff is the wait after the given failed attempt (1-based): half of
// the exponential step for certain, the other half random. Full jitter
// can make all attempts land within a second, too short to ride out a
// server that is briefly busy (such as an object lock held by a client
// that just died).
func (o RetryOptions) backoff(attempt int) time.Duration {
	ceiling := o.MaxBackoff
	if attempt-1 < 30 {
		ceiling = min(o.MaxBackoff, o.MinBackoff<<(attempt-1))
	}
	return ceiling/2 + rand.N(ceiling/2+1)
}

// Retry calls fn until it succeeds, at most o.Attempts times, each time
// with a context that ends after o.Timeout. It stops early when fn's error
// is permanent (IsPermanent: not found, already exists, access denied…)
// or ctx is done, and waits with exponential backoff and jitter between
// attempts. what names the operation in log lines and in the error.
//
// A permanent error on the first attempt is returned as is. Any other
// failure is returned wrapped, still matching the original with errors.Is,
// and says how many attempts were made, e.g.
// "put wal/000000010000000000000001: connection refused; gave up after 5 attempts".
func Retry(ctx context.Context, o RetryOptions, what string, fn func(ctx context.Context) error) error {
	return retry(ctx, o, what, nil, func(ctx context.Context, release context.CancelFunc) error {
		defer release()
		return fn(ctx)
	})
}

// retry is Retry for calls whose attempt context must outlive fn: fn
// receives the function that ends it and must call it, now or later (Get
// hands it to the reader it returns). If again is not nil, a failed
// attempt is only retried when again reports true.
func retry(ctx context.Context, o RetryOptions, what string, again func() bool, fn func(ctx context.Context, release context.CancelFunc) error) error {
	o = o.withDefaults()
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, o.Timeout)
		err := fn(actx, cancel)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) && !IsPermanent(err) {
			err = fmt.Errorf("%w (attempt timed out after %v)", err, o.Timeout)
		}
		switch {
		case IsPermanent(err) && attempt == 1:
			return err
		case IsPermanent(err):
			return fmt.Errorf("%s: %w; gave up after %d attempts", what, err, attempt)
		case ctx.Err() != nil:
			return stopped(ctx, what, err, attempt)
		case attempt >= o.Attempts || (again != nil && !again()):
			return fmt.Errorf("%s: %w; gave up after %d %s", what, err, attempt, plural(attempt))
		}
		wait := o.backoff(attempt)
		if o.Logger != nil {
			o.Logger.WarnContext(ctx, "storage call failed, will retry",
				"op", what, "attempt", attempt, "attempts", o.Attempts, "retry_in", wait, "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return stopped(ctx, what, err, attempt)
		case <-t.C:
		}
	}
}

// stopped reports err after the caller's ctx ended the retries; the
// result matches both err and the context's cause.
func stopped(ctx context.Context, what string, err error, attempt int) error {
	cause := context.Cause(ctx)
	if errors.Is(err, cause) {
		return fmt.Errorf("%s: %w; stopped after %d %s", what, err, attempt, plural(attempt))
	}
	return fmt.Errorf("%s: %w; stopped after %d %s: %w", what, err, attempt, plural(attempt), cause)
}

func plural(n int) string {
	if n == 1 {
		return "attempt"
	}
	return "attempts"
}

// WithRetry returns s with every call made through Retry with o: each
// attempt has its own timeout, transient failures are retried with
// backoff, permanent ones returned at once.
//
//   - Put rewinds the body (Seek to 0) before each attempt. A Put whose
//     first attempt stored the object but lost the reply fails the next
//     attempt with ErrExist; callers that push idempotently compare the
//     stored object's checksum, as they must anyway.
//   - Get retries opening the object. The attempt's timeout keeps running
//     while the caller reads the body and ends when the body is closed, so
//     a stalled download fails after o.Timeout instead of hanging; a read
//     that fails midway is not retried (the caller has part of the data),
//     so callers wrap the whole fetch in Retry when they want that.
//   - List is retried only while fn has not been called; once objects
//     were handed out, an error is returned as is. Errors from fn are
//     returned unchanged.
//   - PutStream passes through: its reader can be read only once, so the
//     stream is not retried as a whole, and o.Timeout does not apply to
//     it (a base backup may stream for hours). The backend retries what
//     it can resend itself — the S3 backend each part and each request
//     of a multipart upload — with o, which travels in the context
//     (RetryOptionsFromContext). A stalled stream is the backend's to
//     detect: the S3 backend's stall timeout covers every request; the
//     file backend has no network to stall on.
//   - The result is always a BatchDeleter. When s is one too, each
//     DeleteBatch goes through Retry: deleting is idempotent, so a batch
//     that failed as a whole is sent again whole; when only some keys
//     failed, only those that failed transiently are sent again, and keys
//     that failed permanently (access denied, object lock) come back in the
//     *DeleteError, with any still failing once the attempts ran out. When
//     s is not, DeleteBatch calls the retried Delete for each key, 16 at a
//     time, and stops at the first key that fails.
func WithRetry(s Storage, o RetryOptions) Storage {
	return &retrying{s: s, o: o}
}

type retrying struct {
	s Storage
	o RetryOptions
}

var _ BatchDeleter = (*retrying)(nil)

func (r *retrying) String() string { return r.s.String() }

func (r *retrying) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error {
	return Retry(ctx, r.o, "put "+key, func(ctx context.Context) error {
		if _, err := body.Seek(0, io.SeekStart); err != nil {
			return Permanent(fmt.Errorf("put %s: rewinding the body: %w", key, err))
		}
		return r.s.Put(ctx, key, body, size, meta)
	})
}

func (r *retrying) PutStream(ctx context.Context, key string, rd io.Reader, meta map[string]string) (int64, error) {
	return r.s.PutStream(ContextWithRetryOptions(ctx, r.o), key, rd, meta)
}

func (r *retrying) Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error) {
	var rc io.ReadCloser
	var info ObjectInfo
	err := retry(ctx, r.o, "get "+key, nil, func(actx context.Context, release context.CancelFunc) error {
		b, oi, err := r.s.Get(actx, key)
		if err != nil {
			release()
			return err
		}
		rc, info = &body{rc: b, ctx: actx, release: release, key: key, timeout: r.o.withDefaults().Timeout}, oi
		return nil
	})
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	return rc, info, nil
}

// body is an object being read under its attempt's context.
type body struct {
	rc      io.ReadCloser
	ctx     context.Context
	release context.CancelFunc
	key     string
	timeout time.Duration
}

func (b *body) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, b.explain(err)
	}
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		err = b.explain(err)
	}
	return n, err
}

func (b *body) explain(err error) error {
	if errors.Is(b.ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("reading %s: %w (not read completely within %v)", b.key, err, b.timeout)
	}
	return fmt.Errorf("reading %s: %w", b.key, err)
}

func (b *body) Close() error {
	err := b.rc.Close()
	b.release()
	return err
}

func (r *retrying) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	var info ObjectInfo
	err := Retry(ctx, r.o, "stat "+key, func(ctx context.Context) error {
		var err error
		info, err = r.s.Stat(ctx, key)
		return err
	})
	return info, err
}

func (r *retrying) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	called := false
	var fnErr error
	err := retry(ctx, r.o, fmt.Sprintf("list %q", prefix), func() bool { return !called },
		func(actx context.Context, release context.CancelFunc) error {
			defer release()
			return r.s.List(actx, prefix, func(oi ObjectInfo) error {
				called = true
				fnErr = fn(oi)
				return fnErr
			})
		})
	if fnErr != nil && errors.Is(err, fnErr) {
		return fnErr
	}
	return err
}

func (r *retrying) Delete(ctx context.Context, key string) error {
	return Retry(ctx, r.o, "delete "+key, func(ctx context.Context) error {
		return r.s.Delete(ctx, key)
	})
}

func (r *retrying) DeleteBatch(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	bd, ok := r.s.(BatchDeleter)
	if !ok {
		return deleteEach(ctx, r, keys, nil)
	}
	what := "delete " + keys[0]
	if len(keys) > 1 {
		what = fmt.Sprintf("delete %s and %d more", keys[0], len(keys)-1)
	}
	var (
		pending  = keys
		failed   []KeyError   // permanently
		last     *DeleteError // the transient failures of the latest attempt
		attempts int
	)
	err := Retry(ctx, r.o, what, func(ctx context.Context) error {
		attempts++
		last = nil
		err := bd.DeleteBatch(ctx, pending)
		var de *DeleteError
		if !errors.As(err, &de) {
			return err
		}
		var again []KeyError
		for _, f := range de.Failed {
			if IsPermanent(f.Err) {
				failed = append(failed, f)
			} else {
				again = append(again, f)
			}
		}
		if len(again) == 0 {
			return nil
		}
		pending = make([]string, len(again))
		for i, f := range again {
			pending[i] = f.Key
		}
		last = &DeleteError{Failed: again}
		return last
	})
	switch {
	case last != nil:
		// The attempts ran out, or ctx ended, with keys failing
		// transiently: say so with each of them.
		for _, f := range last.Failed {
			if ctx.Err() != nil {
				f.Err = fmt.Errorf("%w; stopped after %d %s: %w", f.Err, attempts, plural(attempts), context.Cause(ctx))
			} else {
				f.Err = fmt.Errorf("%w; gave up after %d %s", f.Err, attempts, plural(attempts))
			}
			failed = append(failed, f)
		}
	case err != nil && len(failed) > 0:
		// The batch failed as a whole after keys had failed on their
		// own: none of the keys still pending is known to be removed.
		for _, k := range pending {
			failed = append(failed, KeyError{Key: k, Err: err})
		}
	case err != nil:
		return err
	}
	if len(failed) == 0 {
		return nil
	}
	order := make(map[string]int, len(keys))
	for i, k := range keys {
		order[k] = i
	}
	slices.SortStableFunc(failed, func(a, b KeyError) int { return order[a.Key] - order[b.Key] })
	return &DeleteError{Failed: failed}
}
