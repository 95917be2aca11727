// Package crypt encrypts archive objects on the client with age
// (filippo.io/age: X25519 or passphrase recipients, a ChaCha20-Poly1305
// payload authenticated in 64 KiB chunks, so objects stream in bounded
// memory and any change to the stored bytes is detected).
//
// It wraps a storage.Storage: Put and PutStream encrypt what they are given
// when the Keys have recipients, and mark the object with the metadata
// MetaEnvelope = "age"; Get decrypts objects so marked and passes others
// through unchanged, so an archive can hold plain and encrypted objects
// side by side while it is migrated. Object keys and metadata stay in the
// clear: names of WAL files and backups, and the checksum and size of the
// plaintext that walship verifies end to end. Keys that Keys.Plain
// accepts (the cluster identity and timeline history files, which a
// pushing host must read without holding a secret key) are never
// encrypted.
package crypt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"

	"filippo.io/age"

	"github.com/walship/walship/storage"
)

// MetaEnvelope is the metadata key naming the encryption of an object;
// its only value so far is EnvelopeAge. Objects without it are plain.
const (
	MetaEnvelope = "walship-envelope"
	EnvelopeAge  = "age"
)

// Keys are what one host holds.
type Keys struct {
	// Recipients encrypt new objects; with none, new objects are stored
	// plain.
	Recipients []age.Recipient
	// Identities decrypt; with none, reading an encrypted object fails
	// with an error that says which setting is missing.
	Identities []age.Identity
	// Plain reports keys that are always stored unencrypted; nil: none.
	Plain func(key string) bool
}

// Wrap returns s with objects encrypted and decrypted with k. The
// result is a storage.BatchDeleter when s is one.
func Wrap(s storage.Storage, k Keys) storage.Storage {
	c := &store{Storage: s, keys: k}
	if bd, ok := s.(storage.BatchDeleter); ok {
		return &batchStore{store: c, bd: bd}
	}
	return c
}

type store struct {
	storage.Storage
	keys Keys
}

type batchStore struct {
	*store
	bd storage.BatchDeleter
}

func (b *batchStore) DeleteBatch(ctx context.Context, keys []string) error {
	return b.bd.DeleteBatch(ctx, keys)
}

func (c *store) encrypts(key string) bool {
	return len(c.keys.Recipients) > 0 && (c.keys.Plain == nil || !c.keys.Plain(key))
}

func withEnvelope(meta map[string]string) map[string]string {
	m := maps.Clone(meta)
	if m == nil {
		m = map[string]string{}
	}
	m[MetaEnvelope] = EnvelopeAge
	return m
}

// Put encrypts body into a spill buffer (memory up to storage.SpillLimit,
// then an anonymous temporary file) so that the wrapped Put can rewind it
// for its retries without encrypting again.
func (c *store) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error {
	if !c.encrypts(key) {
		return c.Storage.Put(ctx, key, body, size, meta)
	}
	sink := &storage.Spill{}
	w, err := age.Encrypt(sink, c.keys.Recipients...)
	if err == nil {
		var n int64
		n, err = io.Copy(w, io.LimitReader(body, size))
		if err == nil && n != size {
			err = fmt.Errorf("body ended after %d of %d bytes", n, size)
		}
		if err == nil {
			err = w.Close()
		}
	}
	if err != nil {
		sink.Discard()
		return storage.Permanent(fmt.Errorf("encrypt %s: %w", key, err))
	}
	enc, release, err := sink.Body()
	if err != nil {
		return fmt.Errorf("encrypt %s: %w", key, err)
	}
	defer release()
	return c.Storage.Put(ctx, key, enc, sink.Len(), withEnvelope(meta))
}

// PutStream encrypts r on the way to the wrapped PutStream; it returns
// the number of bytes stored (ciphertext).
func (c *store) PutStream(ctx context.Context, key string, r io.Reader, meta map[string]string) (int64, error) {
	if !c.encrypts(key) {
		return c.Storage.PutStream(ctx, key, r, meta)
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		w, err := age.Encrypt(pw, c.keys.Recipients...)
		if err == nil {
			if _, err = io.Copy(w, r); err == nil {
				err = w.Close()
			}
		}
		// r's own error travels unchanged, so callers can match it.
		pw.CloseWithError(err)
	}()
	n, err := c.Storage.PutStream(ctx, key, pr, withEnvelope(meta))
	pr.CloseWithError(errors.New("upload ended"))
	<-done
	return n, err
}

// Get opens an object and, when it is encrypted, decrypts it. The age
// header is read and checked here; the payload is authenticated chunk by
// chunk as it is read, and a chunk that fails makes Read return an error
// matching storage.ErrCorrupt.
func (c *store) Get(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	rc, info, err := c.Storage.Get(ctx, key)
	if err != nil {
		return nil, info, err
	}
	env, ok := info.Metadata[MetaEnvelope]
	if !ok {
		return rc, info, nil
	}
	if env != EnvelopeAge {
		rc.Close()
		return nil, info, storage.Permanent(fmt.Errorf("%s is encrypted with %q, which this walship does not know: use a newer walship to read it", key, env))
	}
	if len(c.keys.Identities) == 0 {
		rc.Close()
		return nil, info, storage.Permanent(fmt.Errorf("%s is encrypted and no key to decrypt it is configured: set --decrypt-identity-file (or WALSHIP_DECRYPT_IDENTITY, or the passphrase with --encrypt-passphrase-file / WALSHIP_ENCRYPT_PASSPHRASE)", key))
	}
	counted := &countingReader{r: rc}
	plain, err := age.Decrypt(counted, c.keys.Identities...)
	if err != nil {
		rc.Close()
		var noMatch *age.NoIdentityMatchError
		switch {
		case errors.As(err, &noMatch):
			return nil, info, storage.Permanent(fmt.Errorf("%s is encrypted for other keys than the identities configured: add the identity (or passphrase) it was written with to --decrypt-identity-file; old identities stay needed for old objects after a key rotation", key))
		case counted.err != nil:
			// The storage stream failed under the header: not damage.
			return nil, info, fmt.Errorf("read %s: %w", key, counted.err)
		default:
			return nil, info, fmt.Errorf("%w: %s: its encryption header is damaged: %v", storage.ErrCorrupt, key, err)
		}
	}
	return &decrypting{plain: plain, counted: counted, closer: rc, key: key}, info, nil
}

// countingReader remembers the storage stream's error, so that a failed
// download is not reported as damaged content.
type countingReader struct {
	r   io.Reader
	err error
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

type decrypting struct {
	plain   io.Reader
	counted *countingReader
	closer  io.Closer
	key     string
}

func (d *decrypting) Read(p []byte) (int, error) {
	n, err := d.plain.Read(p)
	if err == nil || err == io.EOF {
		return n, err
	}
	if d.counted.err != nil {
		return n, d.counted.err
	}
	return n, fmt.Errorf("%w: %s fails decryption (the stored bytes were changed or cut): %v", storage.ErrCorrupt, d.key, err)
}

func (d *decrypting) Close() error { return d.closer.Close() }
