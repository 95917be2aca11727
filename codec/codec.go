// Package codec owns the compression formats walship stores objects in.
//
// Codecs come from a fixed table and are looked up by name (the --compress
// flag) when writing and by object-name extension when reading, so one
// archive can hold objects written with different codecs: changing
// --compress never makes older objects unreadable.
package codec

import (
	"fmt"
	"io"
	"runtime"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec compresses and decompresses one object's content.
type Codec struct {
	name string
	ext  string // object-name suffix including the dot; "" for none
	enc  func(w io.Writer) (io.WriteCloser, error)
	// encN is enc for one long stream, compressing blocks on n cores.
	encN func(w io.Writer, n int) (io.WriteCloser, error)
	dec  func(r io.Reader) (io.ReadCloser, error)
}

// Name is the codec's name as given to --compress.
func (c Codec) Name() string { return c.name }

// Ext is the object-name suffix ("" for none).
func (c Codec) Ext() string { return c.ext }

// NewWriter returns a writer that compresses into w. Close flushes the
// stream; it does not close w.
func (c Codec) NewWriter(w io.Writer) (io.WriteCloser, error) { return c.enc(w) }

// NewStreamWriter is NewWriter for one long stream (a base backup's
// archive): it compresses blocks on every core, where NewWriter uses one
// so that several segments can be pushed at once.
func (c Codec) NewStreamWriter(w io.Writer) (io.WriteCloser, error) {
	if c.encN == nil {
		return c.enc(w)
	}
	return c.encN(w, runtime.GOMAXPROCS(0))
}

// NewReader returns a reader of the decompressed content of r.
func (c Codec) NewReader(r io.Reader) (io.ReadCloser, error) { return c.dec(r) }

// maxWindow bounds the memory a zstd stream may ask the decoder for, so a
// hostile or corrupt object cannot make the decoder allocate gigabytes.
const maxWindow = 64 << 20

var table = []Codec{
	{
		name: "zstd", ext: ".zst",
		enc: func(w io.Writer) (io.WriteCloser, error) {
			// One goroutine per stream: walship runs beside PostgreSQL and
			// parallelism comes from pushing several segments at once.
			// A 2 MB window: wal-push runs several at once (look-ahead),
			// and the default 8 MB window costs about 4 times the memory
			// per stream for little gain on WAL.
			return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault),
				zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(true), zstd.WithWindowSize(2<<20))
		},
		encN: func(w io.Writer, n int) (io.WriteCloser, error) {
			return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault),
				zstd.WithEncoderConcurrency(n), zstd.WithEncoderCRC(true), zstd.WithWindowSize(2<<20))
		},
		dec: func(r io.Reader) (io.ReadCloser, error) {
			d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1),
				zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderLowmem(false))
			if err != nil {
				return nil, err
			}
			return d.IOReadCloser(), nil
		},
	},
	{
		name: "s2", ext: ".s2",
		enc: func(w io.Writer) (io.WriteCloser, error) {
			return s2.NewWriter(w, s2.WriterConcurrency(1)), nil
		},
		encN: func(w io.Writer, n int) (io.WriteCloser, error) {
			return s2.NewWriter(w, s2.WriterConcurrency(n)), nil
		},
		dec: func(r io.Reader) (io.ReadCloser, error) {
			return io.NopCloser(s2.NewReader(r)), nil
		},
	},
	{
		name: "gzip", ext: ".gz",
		enc: func(w io.Writer) (io.WriteCloser, error) {
			return gzip.NewWriterLevel(w, gzip.DefaultCompression)
		},
		dec: func(r io.Reader) (io.ReadCloser, error) {
			return gzip.NewReader(r)
		},
	},
	{
		name: "none", ext: "",
		enc: func(w io.Writer) (io.WriteCloser, error) { return nopWriteCloser{w}, nil },
		dec: func(r io.Reader) (io.ReadCloser, error) { return io.NopCloser(r), nil },
	},
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// ByName returns the codec called name.
func ByName(name string) (Codec, error) {
	for _, c := range table {
		if c.name == name {
			return c, nil
		}
	}
	return Codec{}, fmt.Errorf("unknown compression %q: use one of %s", name, strings.Join(Names(), ", "))
}

// Names lists the codec names, default first.
func Names() []string {
	names := make([]string, len(table))
	for i, c := range table {
		names[i] = c.name
	}
	return names
}

// All returns every codec, default first.
func All() []Codec { return append([]Codec(nil), table...) }

// Split splits an object name into the name it was stored for and the
// codec its extension denotes. A name without a known extension was stored
// uncompressed.
func Split(key string) (base string, c Codec) {
	for _, c := range table {
		if c.ext != "" && strings.HasSuffix(key, c.ext) {
			return strings.TrimSuffix(key, c.ext), c
		}
	}
	return key, table[len(table)-1]
}
