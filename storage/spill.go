package storage

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// SpillLimit is the size up to which a Spill keeps what is written in
// memory; beyond it, the bytes go to an anonymous temporary file. Several
// uploads run at once (look-ahead pushing, prefetching), so memory stays
// bounded whatever the segment size and however badly the data
// compresses.
const SpillLimit = 4 << 20

// Spill collects an upload body of unknown size: in memory up to
// SpillLimit, then in an anonymous temporary file that vanishes on a
// crash. Write into it, then call Body once; call Discard instead when
// the body is not wanted.
type Spill struct {
	buf  bytes.Buffer
	file *os.File
	n    int64
}

// Len is the number of bytes written.
func (w *Spill) Len() int64 { return w.n }

func (w *Spill) Write(p []byte) (int, error) {
	if w.file == nil && w.buf.Len()+len(p) > SpillLimit {
		f, err := os.CreateTemp("", "walship-upload-*")
		if err != nil {
			return 0, fmt.Errorf("create a temporary file for the upload: %w (set TMPDIR to a writable directory)", err)
		}
		os.Remove(f.Name()) // anonymous: nothing is left behind on a crash
		if _, err := f.Write(w.buf.Bytes()); err != nil {
			f.Close()
			return 0, err
		}
		w.file = f
		w.buf = bytes.Buffer{}
	}
	var n int
	var err error
	if w.file != nil {
		n, err = w.file.Write(p)
	} else {
		n, err = w.buf.Write(p)
	}
	w.n += int64(n)
	return n, err
}

// Body returns what was written, for reading from the start, and the
// function that releases it.
func (w *Spill) Body() (io.ReadSeeker, func(), error) {
	if w.file == nil {
		return bytes.NewReader(w.buf.Bytes()), func() {}, nil
	}
	if _, err := w.file.Seek(0, io.SeekStart); err != nil {
		w.file.Close()
		return nil, nil, err
	}
	f := w.file
	return f, func() { f.Close() }, nil
}

// Discard releases what was written.
func (w *Spill) Discard() {
	if w.file != nil {
		w.file.Close()
	}
}
