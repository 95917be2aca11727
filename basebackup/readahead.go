package basebackup

import (
	"io"
	"sync"
)

// readAhead reads r in a goroutine of its own, up to depth chunks of
// chunk bytes ahead of the consumer, so that decompressing and
// checksumming an archive (in that goroutine) overlaps with parsing it
// and writing its files (in the caller's). Close stops the goroutine; it
// must be called.
func readAhead(r io.Reader, depth, chunk int) io.ReadCloser {
	ra := &aheadReader{
		full: make(chan []byte, depth),
		free: make(chan []byte, depth+1),
		done: make(chan struct{}),
	}
	for i := 0; i < depth+1; i++ {
		ra.free <- make([]byte, chunk)
	}
	ra.wg.Add(1)
	go ra.fill(r)
	return ra
}

type aheadReader struct {
	full chan []byte // chunks read, in order; closed at the end
	free chan []byte // chunks to read into
	done chan struct{}
	err  error // the reader's error, valid once full is closed
	cur  []byte
	buf  []byte // the chunk cur points into, to return to free
	wg   sync.WaitGroup
	once sync.Once
}

func (ra *aheadReader) fill(r io.Reader) {
	defer ra.wg.Done()
	defer close(ra.full)
	for {
		var b []byte
		select {
		case b = <-ra.free:
		case <-ra.done:
			return
		}
		n, err := io.ReadFull(r, b)
		if n > 0 {
			select {
			case ra.full <- b[:n]:
			case <-ra.done:
				return
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			ra.err = io.EOF
			return
		}
		if err != nil {
			ra.err = err
			return
		}
	}
}

func (ra *aheadReader) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)]
			ra.buf = nil
		}
		b, ok := <-ra.full
		if !ok {
			return 0, ra.err
		}
		ra.cur, ra.buf = b, b
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

func (ra *aheadReader) Close() error {
	ra.once.Do(func() { close(ra.done) })
	ra.wg.Wait()
	return nil
}
