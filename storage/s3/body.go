package s3

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// errStalled is the cause of a call cancelled by its watchdog.
var errStalled = errors.New("no progress")

// watchdog cancels a call that makes no progress for the stall timeout.
// The transport's own timeouts cover connecting and waiting for response
// headers; the watchdog covers the rest: an upload the server stopped
// reading, a download that stopped arriving, a listing stuck mid-page.
type watchdog struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	d      time.Duration
}

func (s *Storage) watch(ctx context.Context) *watchdog {
	w := &watchdog{d: s.stall}
	w.ctx, w.cancel = context.WithCancelCause(ctx)
	w.timer = time.AfterFunc(w.d, func() { w.cancel(errStalled) })
	return w
}

// progress restarts the countdown.
func (w *watchdog) progress() { w.timer.Reset(w.d) }

// stop ends the call's context; a later progress has no effect on it.
func (w *watchdog) stop() {
	w.timer.Stop()
	w.cancel(context.Canceled)
}

func (w *watchdog) stalled() bool { return errors.Is(context.Cause(w.ctx), errStalled) }

// section is the size bytes of the caller's body from where Put found it,
// as a ReadSeeker of its own, so the SDK hashes and sends exactly those
// bytes and rewinds to their start.
//
// net/http may still read a request body after the request has returned
// (it closes it from another goroutine). detach cuts the section off from
// the caller's body when Put returns, so a caller that rewinds and retries
// never shares it with a leftover transport goroutine.
type section struct {
	mu       sync.Mutex
	r        io.ReadSeeker // nil once detached
	base     int64         // offset of the first byte in r
	size     int64
	off      int64  // read position, relative to base
	progress func() // called after every read that returned data
}

var errDetached = errors.New("upload body used after the upload ended")

func (s *section) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r == nil {
		return 0, errDetached
	}
	if s.off >= s.size {
		return 0, io.EOF
	}
	if rest := s.size - s.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := s.r.Read(p)
	s.off += int64(n)
	if n > 0 && s.progress != nil {
		s.progress()
	}
	if err == io.EOF && s.off < s.size {
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF && n > 0 {
		err = nil // reported by the next Read
	}
	return n, err
}

func (s *section) Seek(offset int64, whence int) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r == nil {
		return 0, errDetached
	}
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.off
	case io.SeekEnd:
		offset += s.size
	default:
		return 0, fmt.Errorf("seek: invalid whence %d", whence)
	}
	if offset < 0 || offset > s.size {
		return 0, fmt.Errorf("seek: offset %d outside 0..%d", offset, s.size)
	}
	if _, err := s.r.Seek(s.base+offset, io.SeekStart); err != nil {
		return 0, err
	}
	s.off = offset
	return offset, nil
}

func (s *section) detach() {
	s.mu.Lock()
	s.r = nil
	s.mu.Unlock()
}

// objectReader is a download in progress: reads feed the watchdog and
// failures name the object.
type objectReader struct {
	s    *Storage
	ctx  context.Context // the caller's
	key  string
	body io.ReadCloser
	w    *watchdog
}

func (r *objectReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if n > 0 {
		r.w.progress()
	}
	if err != nil && err != io.EOF {
		err = r.s.readFailed(r.ctx, r.key, r.w, err)
	}
	return n, err
}

func (r *objectReader) Close() error {
	r.w.stop()
	return r.body.Close()
}

// readFailed describes an error in the middle of a download. All of them
// are worth retrying: the connection broke, the server stalled, or the
// bytes did not match the stored checksum.
func (s *Storage) readFailed(ctx context.Context, key string, w *watchdog, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("s3 get %s: %w", s.url(key), context.Cause(ctx))
	case w.stalled():
		return fmt.Errorf("s3 get %s: no data from %s for %v: %w", s.url(key), s.endpoint, s.stall, os.ErrDeadlineExceeded)
	default:
		return fmt.Errorf("s3 get %s: reading from %s: %w", s.url(key), s.endpoint, err)
	}
}

// encodeCRC formats a CRC the way S3's x-amz-checksum-* headers carry it:
// base64 of the big-endian bytes.
func encodeCRC(sum uint32) string {
	return base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, sum))
}
