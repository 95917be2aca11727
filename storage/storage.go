// Package storage owns the archive's view of object storage: a small
// Storage interface with the semantics every backend must honour, the
// sentinel errors callers branch on, and wrappers that add timeouts,
// retries and (in tests) injected faults to any backend.
//
// Every backend guarantees:
//   - Put is atomic and never overwrites: a reader sees either no object
//     or the complete one, and an existing key makes Put fail with
//     ErrExist without touching the stored object.
//   - Put returns nil only once the object is durably stored.
//   - PutStream is Put for a stream of unknown length (a base backup's
//     tar stream): the same atomicity and no-overwrite rule, durable
//     before it returns, nothing visible after any failure, and memory
//     use bounded whatever the length (except in storage/mem).
//   - Get and Stat of a missing key fail with an error matching
//     ErrNotExist (errors.Is), never with a generic error.
//   - Metadata keys are lower-case ASCII; values are printable ASCII.
//
// Keys are slash-separated relative paths ("wal/000000010000000000000001.zst").
package storage

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"
)

// ErrNotExist reports that the object is not in storage.
var ErrNotExist = errors.New("object does not exist")

// ErrCorrupt reports stored content that fails its checks: a checksum, a
// size, a header, or the authentication of an encrypted object. It is
// never the same as "not found", and retrying does not fix it.
var ErrCorrupt = errors.New("corrupt archive object")

// ErrExist reports that Put or PutStream found the key already stored.
var ErrExist = errors.New("object already exists")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key      string
	Size     int64             // stored bytes
	ModTime  time.Time         // zero when the backend does not know it
	Metadata map[string]string // only filled by Get and Stat, not by List
}

// Storage is an object store addressed by keys.
type Storage interface {
	// Put stores size bytes read from body under key, only if the key does
	// not exist yet; otherwise it returns an error matching ErrExist. body
	// may be rewound (Seek to 0) and read again by retrying callers.
	Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error
	// PutStream stores everything read from r (until io.EOF) under key, only
	// if the key does not exist yet (else an error matching ErrExist, and the
	// stored object is untouched). Nothing is visible under key until the
	// whole stream is stored durably; any failure (r's error, ctx cancelled,
	// storage error, process killed) leaves no object under key. Memory use
	// is bounded whatever the size. r is read exactly once, so PutStream is
	// not retried as a whole; backends retry smaller units (S3 parts)
	// themselves. It returns the number of bytes stored.
	//
	// An error from r is returned wrapped (errors.Is matches it). A
	// backend may answer ErrExist before reading r at all.
	PutStream(ctx context.Context, key string, r io.Reader, meta map[string]string) (int64, error)
	// Get opens the object for reading. The caller must close the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error)
	// Stat returns the object's size and metadata.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every object whose key starts with prefix, in
	// lexical key order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes the object. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// String names the location for messages, without secrets.
	String() string
}

// permanentError marks an error that retrying cannot fix (access denied, no
// such bucket, malformed request).
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying. Backends use it for
// authorisation and configuration failures so that callers fail fast.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err (or an error it wraps) was marked with
// Permanent, or is ErrNotExist or ErrExist, which are answers, not faults.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p) || errors.Is(err, ErrNotExist) || errors.Is(err, ErrExist)
}

// RetentionError reports a delete the storage refused because the object
// is under retention (S3 Object Lock): nobody can delete it before Until
// (compliance mode), or only a credential allowed to bypass governance
// retention can (governance mode), and a legal hold keeps it until the hold
// is lifted. Backends return it marked Permanent.
type RetentionError struct {
	Mode      string    // "compliance" or "governance"; "" with a legal hold only
	Until     time.Time // zero with a legal hold only
	LegalHold bool
}

// Error says until when, in one line: "under Object Lock retention until
// 2026-12-08T10:15:00Z (compliance)".
func (e *RetentionError) Error() string {
	var parts []string
	if !e.Until.IsZero() {
		p := "under Object Lock retention until " + e.Until.UTC().Format(time.RFC3339)
		if e.Mode != "" {
			p += " (" + e.Mode + ")"
		}
		parts = append(parts, p)
	}
	if e.LegalHold || len(parts) == 0 {
		parts = append(parts, "under an Object Lock legal hold, which must be lifted first")
	}
	return strings.Join(parts, " and ")
}
