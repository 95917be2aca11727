// Package archive owns the layout of a walship archive and wal-push.
//
// Layout (keys below the repository URL):
//
//	cluster.json                  identity of the cluster (written once)
//	wal/<name><ext>               WAL segments, .partial, .history and
//	                              .backup files; <ext> names the codec
//
// Every object carries, in its metadata, the SHA-256 and the size of its
// uncompressed content, so readers verify it end to end. Objects are never
// rewritten: a push of a name that is already archived succeeds only when
// the stored content is identical.
package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
)

// Metadata keys stored with every object.
const (
	MetaSHA256 = "walship-sha256" // hex SHA-256 of the uncompressed content
	MetaSize   = "walship-size"   // uncompressed size in bytes
)

// WALPrefix is the key prefix of archived WAL files.
const WALPrefix = "wal/"

// WALKey is the key under which file name is stored with codec c.
func WALKey(name string, c codec.Codec) string { return WALPrefix + name + c.Ext() }

// ErrCorrupt reports an object whose content does not match its checksum,
// size or expected header. It is never the same as "not found".
var ErrCorrupt = storage.ErrCorrupt

// Digest is the checksum and size of an object's uncompressed content.
type Digest struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

func (d Digest) meta() map[string]string {
	return map[string]string{MetaSHA256: d.SHA256, MetaSize: strconv.FormatInt(d.Size, 10)}
}

// DigestOf reads the digest an object was stored with.
func DigestOf(info storage.ObjectInfo) (Digest, error) {
	sum := info.Metadata[MetaSHA256]
	size, err := strconv.ParseInt(info.Metadata[MetaSize], 10, 64)
	if len(sum) != 64 || err != nil || size < 0 {
		return Digest{}, fmt.Errorf("%w: %s has no walship checksum metadata (was it written by another tool?)", ErrCorrupt, info.Key)
	}
	return Digest{SHA256: sum, Size: size}, nil
}

// compressed is a compressed object ready for upload.
type compressed struct {
	body   io.ReadSeeker
	size   int64
	digest Digest
	close  func()
}

// prepare makes the upload body for the first size bytes of f with codec
// c, computing the digest of the content. Uncompressed content is uploaded
// straight from f; compressed content is built in a storage.Spill.
func prepare(f *os.File, size int64, c codec.Codec) (*compressed, error) {
	h := sha256.New()
	if c.Ext() == "" {
		n, err := io.Copy(h, io.NewSectionReader(f, 0, size))
		if err != nil {
			return nil, err
		}
		d := Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}
		return &compressed{body: io.NewSectionReader(f, 0, n), size: n, digest: d, close: func() {}}, nil
	}
	sink := &storage.Spill{}
	zw, err := c.NewWriter(sink)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(zw, io.TeeReader(io.NewSectionReader(f, 0, size), h))
	if err == nil {
		if err = zw.Close(); err != nil {
			err = fmt.Errorf("compress with %s: %w", c.Name(), err)
		}
	}
	if err != nil {
		sink.Discard()
		return nil, err
	}
	body, closeBody, err := sink.Body()
	if err != nil {
		return nil, err
	}
	return &compressed{body: body, size: sink.Len(), digest: Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, close: closeBody}, nil
}

// VerifyingReader decompresses an object and checks, at EOF, that its
// content matches the digest it was stored with. Read returns an error
// wrapping ErrCorrupt instead of io.EOF when it does not, and as soon as
// the content grows past the recorded size.
type VerifyingReader struct {
	key  string
	want Digest
	dec  io.ReadCloser
	h    hash.Hash
	n    int64
}

// NewVerifyingReader wraps the raw stored stream of the object described
// by info. The codec is taken from the key's extension.
func NewVerifyingReader(info storage.ObjectInfo, raw io.Reader) (*VerifyingReader, error) {
	want, err := DigestOf(info)
	if err != nil {
		return nil, err
	}
	return VerifyDigest(info.Key, want, raw)
}

// VerifyDigest is NewVerifyingReader for an object whose digest is
// recorded elsewhere (streamed objects, whose digest is known only once
// they are stored, have it in their backup's metadata).
func VerifyDigest(key string, want Digest, raw io.Reader) (*VerifyingReader, error) {
	_, c := codec.Split(key)
	dec, err := c.NewReader(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: cannot start %s decompression: %v", ErrCorrupt, key, c.Name(), err)
	}
	return &VerifyingReader{key: key, want: want, dec: dec, h: sha256.New()}, nil
}

// Size is the uncompressed size the object was stored with.
func (v *VerifyingReader) Size() int64 { return v.want.Size }

func (v *VerifyingReader) Read(p []byte) (int, error) {
	n, err := v.dec.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.want.Size {
		return n, fmt.Errorf("%w: %s holds more than the %d bytes it was stored with", ErrCorrupt, v.key, v.want.Size)
	}
	if err == io.EOF {
		if v.n != v.want.Size {
			return n, fmt.Errorf("%w: %s is truncated: %d of %d bytes", ErrCorrupt, v.key, v.n, v.want.Size)
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.SHA256 {
			return n, fmt.Errorf("%w: %s fails its checksum (sha256 %s, stored with %s)", ErrCorrupt, v.key, short(got), short(v.want.SHA256))
		}
		return n, io.EOF
	}
	if err != nil && !isStorageError(err) {
		// A decoder error means the stored bytes are damaged.
		return n, fmt.Errorf("%w: %s: %v", ErrCorrupt, v.key, err)
	}
	return n, err
}

// Close releases the decoder.
func (v *VerifyingReader) Close() error { return v.dec.Close() }

// readError marks an error that came from the storage stream under the
// decoder, so it is not mistaken for damaged content.
type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }
func (e readError) Unwrap() error { return e.err }

func isStorageError(err error) bool {
	var r readError
	return errors.As(err, &r)
}

// MarkReadErrors wraps a storage stream so that its read errors can be told
// apart from decoding errors by VerifyingReader.
func MarkReadErrors(r io.Reader) io.Reader { return markedReader{r} }

type markedReader struct{ r io.Reader }

func (m markedReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if err != nil && err != io.EOF && !errors.Is(err, ErrCorrupt) {
		err = readError{err}
	}
	return n, err
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}

// FindWAL returns the stored object for WAL file name, trying the preferred
// codec first (no compression for a history file) and then any other
// extension found by listing. It returns an
// error matching storage.ErrNotExist when no object exists under any codec.
func FindWAL(ctx context.Context, s storage.Storage, name string, preferred codec.Codec) (io.ReadCloser, storage.ObjectInfo, error) {
	legacy := preferred
	history := strings.HasSuffix(name, ".history")
	if history {
		preferred = noCodec() // how Push stores history files
	}
	rc, info, err := s.Get(ctx, WALKey(name, preferred))
	if history && mayBeMissing(err) && legacy.Ext() != "" {
		// Refused the way S3 refuses a missing key to a host without
		// s3:ListBucket, which cannot list either: try the key an
		// older walship stored it under.
		rc, info, err = s.Get(ctx, WALKey(name, legacy))
	}
	if !errors.Is(err, storage.ErrNotExist) {
		return rc, info, err
	}
	key, err := walKey(ctx, s, name)
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	if key == "" {
		return nil, storage.ObjectInfo{}, fmt.Errorf("%s: %w", name, storage.ErrNotExist)
	}
	return s.Get(ctx, key)
}

// HasWAL reports whether WAL file name is archived, under any codec.
func HasWAL(ctx context.Context, s storage.Storage, name string) (bool, error) {
	key, err := walKey(ctx, s, name)
	return key != "", err
}

// walKey finds the key WAL file name is stored under, with one listing;
// "" when there is none.
func walKey(ctx context.Context, s storage.Storage, name string) (string, error) {
	var found string
	err := s.List(ctx, WALPrefix+name, func(o storage.ObjectInfo) error {
		if base, _ := codec.Split(o.Key); base == WALPrefix+name && found == "" {
			found = o.Key
		}
		return nil
	})
	return found, err
}

// trimKey strips the WAL prefix for messages.
func trimKey(key string) string { return strings.TrimPrefix(key, WALPrefix) }
