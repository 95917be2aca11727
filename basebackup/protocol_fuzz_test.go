package basebackup

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzDecode feeds Decode arbitrary replies. The first byte chooses the
// protocol (bit 0: 15+), whether a manifest was requested (bit 1) and
// whether the archive handler reads everything or stops early (bit 2); the
// rest is backend messages in wire format. Decode must not panic, must
// fail with ErrProtocol or the source's error, and whatever it accepts
// must be complete tar archives that archive/tar reads to their end.
func FuzzDecode(f *testing.F) {
	for _, fx := range fixtures {
		wire := readFixture(f, fx.major)
		mode := byte(2)
		if fx.version >= streamVersion {
			mode |= 1
		}
		f.Add(append([]byte{mode}, wire...))
		f.Add(append([]byte{mode | 4}, wire...))
		f.Add(append([]byte{mode ^ 1}, wire...))
	}
	for _, stream := range []bool{false, true} {
		r := newReply(f, stream)
		mode := byte(2)
		if stream {
			mode |= 1
		}
		f.Add(append([]byte{mode}, encodeWire(r.messages()...)...))
	}
	f.Fuzz(fuzzDecodeOne)
}

// fuzzDecodeOne is one run of FuzzDecode.
func fuzzDecodeOne(t *testing.T, in []byte) {
	if len(in) == 0 {
		return
	}
	mode, wire := in[0], in[1:]
	version := 130000
	if mode&1 != 0 {
		version = 150000
	}
	o := Options{Manifest: mode&2 != 0}
	var archives [][]byte
	var progress int64
	var fromServer []int64
	h := Handler{
		Archive: func(ts Tablespace, r io.Reader) error {
			before := progress
			if mode&4 != 0 {
				_, err := r.Read(make([]byte, 100))
				if err == io.EOF {
					err = nil
				}
				return err
			}
			b, err := io.ReadAll(r)
			archives = append(archives, b)
			fromServer = append(fromServer, progress-before)
			return err
		},
		Manifest: func(r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			return err
		},
		Progress: func(done int64) {
			if done < progress {
				t.Fatalf("progress went back from %d to %d", progress, done)
			}
			progress = done
		},
	}
	srcErr := errors.New("source failed")
	next := wireSource(wire)
	src := func() (pgproto3.BackendMessage, error) {
		m, err := next()
		if err != nil {
			return nil, srcErr
		}
		return m, nil
	}
	start, end, err := Decode(src, version, o, h)
	if err != nil {
		if !errors.Is(err, ErrProtocol) && !errors.Is(err, srcErr) && !isServerError(err) {
			t.Fatalf("Decode error matches neither ErrProtocol nor the source's error: %v", err)
		}
		return
	}
	if end.LSN < start.LSN || start.Timeline == 0 || end.Timeline == 0 {
		t.Fatalf("start %+v, end %+v", start, end)
	}
	for i, a := range archives {
		added := int64(len(a)) - fromServer[i]
		if added != 0 && added != tarBlock && added != 2*tarBlock {
			t.Fatalf("archive %d: %d bytes added", i, added)
		}
		tr := tar.NewReader(bytes.NewReader(a))
		for {
			_, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err == nil {
				_, err = io.Copy(io.Discard, tr)
			}
			if err != nil {
				// Fields walship does not check (mode, times,
				// names) may be malformed; the framing may not.
				if !errors.Is(err, tar.ErrHeader) && !errors.Is(err, tar.ErrFieldTooLong) {
					t.Fatalf("archive %d: archive/tar: %v", i, err)
				}
				break
			}
		}
	}
}

func isServerError(err error) bool {
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr)
}
