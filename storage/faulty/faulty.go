// Package faulty wraps a storage backend to inject failures in tests: the
// Nth call of an operation fails before or after reaching the backend,
// calls are delayed or hang until their context ends, listings break
// midway, downloads come back truncated, corrupted or stalled, and
// streams handed to PutStream break off. Tests use it to prove that
// walship retries what it should, stops when it should, never takes
// damaged data for good data, and leaves nothing visible behind a failed
// stream.
//
// Calls are numbered per operation from 1, counting every call since New;
// a fault set for call 0 applies to every call from then on. Several
// faults may apply to one call: delays come first, then errors.
package faulty

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/walship/walship/storage"
)

// Operation names, as taken by the fault-setting methods and Calls.
const (
	OpPut       = "put"
	OpPutStream = "putstream"
	OpGet       = "get"
	OpStat      = "stat"
	OpList      = "list"
	OpDelete    = "delete"
)

type kind int

const (
	failBefore kind = iota
	failAfter
	delay
	breakList
	truncate
	flipBit
	stall
	cutStream
)

type fault struct {
	op   string
	call int // 0: every call
	kind kind
	err  error
	d    time.Duration // delay; negative: until the context ends
	n    int64         // list items, bytes kept, bit offset, bytes before the stall or cut
}

// Storage is a storage.Storage that passes calls to another one, except
// where a fault says otherwise. It is safe for concurrent use, and faults
// may be added while calls are running.
type Storage struct {
	s      storage.Storage
	mu     sync.Mutex
	calls  map[string]int
	faults []fault
}

var _ storage.Storage = (*Storage)(nil)

// New wraps s, with no faults yet.
func New(s storage.Storage) *Storage {
	return &Storage{s: s, calls: map[string]int{}}
}

func checkOp(op string) {
	switch op {
	case OpPut, OpPutStream, OpGet, OpStat, OpList, OpDelete:
	default:
		panic(fmt.Sprintf("faulty: unknown operation %q (want put, putstream, get, stat, list or delete)", op))
	}
}

func (f *Storage) add(ft fault) {
	checkOp(ft.op)
	if ft.call < 0 {
		panic(fmt.Sprintf("faulty: call number %d is negative", ft.call))
	}
	f.mu.Lock()
	f.faults = append(f.faults, ft)
	f.mu.Unlock()
}

// Fail makes call n of op return err without reaching the wrapped
// storage (n = 0: every call).
func (f *Storage) Fail(op string, n int, err error) {
	f.add(fault{op: op, call: n, kind: failBefore, err: err})
}

// FailAfter makes call n of op reach the wrapped storage and then return
// err instead of the result, like a reply lost on the network: a Put or
// PutStream stores the object yet reports failure. A Get's body is closed.
func (f *Storage) FailAfter(op string, n int, err error) {
	f.add(fault{op: op, call: n, kind: failAfter, err: err})
}

// Delay makes call n of op wait d before it proceeds, or fail with the
// context's error if the context ends first.
func (f *Storage) Delay(op string, n int, d time.Duration) {
	f.add(fault{op: op, call: n, kind: delay, d: d})
}

// Hang makes call n of op block until its context ends, then fail with
// the context's error: a server that accepted the connection and went
// silent.
func (f *Storage) Hang(op string, n int) {
	f.add(fault{op: op, call: n, kind: delay, d: -1})
}

// BreakList makes List call n hand out at most items objects and then
// fail with err.
func (f *Storage) BreakList(n, items int, err error) {
	f.add(fault{op: OpList, call: n, kind: breakList, err: err, n: int64(items)})
}

// Truncate makes the body of Get call n end cleanly (io.EOF) after keep
// bytes, while the ObjectInfo still reports the full size.
func (f *Storage) Truncate(n int, keep int64) {
	f.add(fault{op: OpGet, call: n, kind: truncate, n: keep})
}

// FlipBit makes the body of Get call n come back with the lowest bit of
// the byte at offset inverted.
func (f *Storage) FlipBit(n int, offset int64) {
	f.add(fault{op: OpGet, call: n, kind: flipBit, n: offset})
}

// Stall makes the body of Get call n deliver after bytes and then block
// until the Get's context ends or the body is closed; the read then fails
// with the context's error (or io.ErrClosedPipe).
func (f *Storage) Stall(n int, after int64) {
	f.add(fault{op: OpGet, call: n, kind: stall, n: after})
}

// CutStream makes the reader that PutStream call n hands to the wrapped
// storage deliver after bytes of the caller's stream and then fail with
// err (nil: an error saying the stream was cut, matching
// io.ErrUnexpectedEOF), like a database connection lost in the middle of
// a base backup. The wrapped storage must then store nothing.
func (f *Storage) CutStream(n int, after int64, err error) {
	if err == nil {
		err = fmt.Errorf("faulty: stream cut after %d bytes: %w", after, io.ErrUnexpectedEOF)
	}
	f.add(fault{op: OpPutStream, call: n, kind: cutStream, err: err, n: after})
}

// Clear removes all faults. Call counts are kept.
func (f *Storage) Clear() {
	f.mu.Lock()
	f.faults = nil
	f.mu.Unlock()
}

// Calls reports how many times op has been called since New, whether the
// call failed or not.
func (f *Storage) Calls(op string) int {
	checkOp(op)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// begin counts a call of op and returns the faults that apply to it.
func (f *Storage) begin(op string) []fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	n := f.calls[op]
	var out []fault
	for _, ft := range f.faults {
		if ft.op == op && (ft.call == 0 || ft.call == n) {
			out = append(out, ft)
		}
	}
	return out
}

// before applies delays and up-front failures.
func before(ctx context.Context, op string, faults []fault) error {
	for _, ft := range faults {
		if ft.kind != delay {
			continue
		}
		var timeout <-chan time.Time
		if ft.d >= 0 {
			t := time.NewTimer(ft.d)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("faulty: %s delayed: %w", op, context.Cause(ctx))
		case <-timeout:
		}
	}
	for _, ft := range faults {
		if ft.kind == failBefore {
			return ft.err
		}
	}
	return nil
}

// after returns the error a lost reply replaces the result with.
func after(faults []fault) error {
	for _, ft := range faults {
		if ft.kind == failAfter {
			return ft.err
		}
	}
	return nil
}

// Put implements storage.Storage.
func (f *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error {
	faults := f.begin(OpPut)
	if err := before(ctx, OpPut, faults); err != nil {
		return err
	}
	if err := f.s.Put(ctx, key, body, size, meta); err != nil {
		return err
	}
	return after(faults)
}

// PutStream implements storage.Storage.
func (f *Storage) PutStream(ctx context.Context, key string, r io.Reader, meta map[string]string) (int64, error) {
	faults := f.begin(OpPutStream)
	if err := before(ctx, OpPutStream, faults); err != nil {
		return 0, err
	}
	for _, ft := range faults {
		if ft.kind == cutStream {
			r = &cutReader{r: r, left: ft.n, err: ft.err}
		}
	}
	n, err := f.s.PutStream(ctx, key, r, meta)
	if err != nil {
		return 0, err
	}
	if err := after(faults); err != nil {
		return 0, err
	}
	return n, nil
}

// cutReader delivers left more bytes of r and then fails with err.
type cutReader struct {
	r    io.Reader
	left int64
	err  error
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, c.err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	// A stream shorter than the cut ends unharmed, with r's io.EOF.
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// Get implements storage.Storage.
func (f *Storage) Get(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	faults := f.begin(OpGet)
	if err := before(ctx, OpGet, faults); err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	rc, info, err := f.s.Get(ctx, key)
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	if err := after(faults); err != nil {
		rc.Close()
		return nil, storage.ObjectInfo{}, err
	}
	b := &body{rc: rc, ctx: ctx, truncate: -1, flip: -1, stall: -1, closed: make(chan struct{})}
	for _, ft := range faults {
		switch ft.kind {
		case truncate:
			b.truncate = ft.n
		case flipBit:
			b.flip = ft.n
		case stall:
			b.stall = ft.n
		}
	}
	return b, info, nil
}

// body delivers an object with the faults set for its Get.
type body struct {
	rc                    io.ReadCloser
	ctx                   context.Context
	pos                   int64
	truncate, flip, stall int64 // -1: none
	closeOnce             sync.Once
	closed                chan struct{}
}

func (b *body) Read(p []byte) (int, error) {
	limit := int64(len(p))
	if b.truncate >= 0 {
		if b.pos >= b.truncate {
			return 0, io.EOF
		}
		limit = min(limit, b.truncate-b.pos)
	}
	if b.stall >= 0 {
		if b.pos >= b.stall {
			select {
			case <-b.ctx.Done():
				return 0, fmt.Errorf("faulty: download stalled: %w", context.Cause(b.ctx))
			case <-b.closed:
				return 0, io.ErrClosedPipe
			}
		}
		limit = min(limit, b.stall-b.pos)
	}
	n, err := b.rc.Read(p[:limit])
	if b.flip >= b.pos && b.flip < b.pos+int64(n) {
		p[b.flip-b.pos] ^= 1
	}
	b.pos += int64(n)
	if b.truncate >= 0 && b.pos >= b.truncate && err == nil {
		err = io.EOF
	}
	return n, err
}

func (b *body) Close() error {
	b.closeOnce.Do(func() { close(b.closed) })
	return b.rc.Close()
}

// Stat implements storage.Storage.
func (f *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	faults := f.begin(OpStat)
	if err := before(ctx, OpStat, faults); err != nil {
		return storage.ObjectInfo{}, err
	}
	info, err := f.s.Stat(ctx, key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	if err := after(faults); err != nil {
		return storage.ObjectInfo{}, err
	}
	return info, nil
}

// List implements storage.Storage.
func (f *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	faults := f.begin(OpList)
	if err := before(ctx, OpList, faults); err != nil {
		return err
	}
	limit, limitErr := int64(-1), error(nil)
	for _, ft := range faults {
		if ft.kind == breakList {
			limit, limitErr = ft.n, ft.err
		}
	}
	var handed int64
	err := f.s.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		if limit >= 0 && handed >= limit {
			return limitErr
		}
		handed++
		return fn(oi)
	})
	if err != nil {
		return err
	}
	if limit >= 0 {
		// The listing had no more than limit objects: break at its end.
		return limitErr
	}
	return after(faults)
}

// Delete implements storage.Storage.
func (f *Storage) Delete(ctx context.Context, key string) error {
	faults := f.begin(OpDelete)
	if err := before(ctx, OpDelete, faults); err != nil {
		return err
	}
	if err := f.s.Delete(ctx, key); err != nil {
		return err
	}
	return after(faults)
}

// String implements storage.Storage.
func (f *Storage) String() string { return f.s.String() }
