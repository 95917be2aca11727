// Package mem is an in-memory storage backend for unit tests. It honours
// the full storage.Storage contract (atomic no-overwrite Put, ErrNotExist,
// ordered listings, cancellation), so code tested against it behaves the
// same on a real archive. Nothing survives the process, and PutStream
// holds the whole stream in memory before storing it.
package mem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/walship/walship/storage"
)

// Storage is an in-memory storage.Storage. The zero value is not usable;
// call New. It is safe for concurrent use.
type Storage struct {
	mu      sync.Mutex
	objects map[string]object
}

type object struct {
	data    []byte // never modified once stored
	meta    map[string]string
	modTime time.Time
}

var _ storage.Storage = (*Storage)(nil)

// New returns an empty in-memory storage.
func New() *Storage {
	return &Storage{objects: map[string]object{}}
}

func checkKey(key string) error {
	if key == "" {
		return storage.Permanent(errors.New("mem: empty key"))
	}
	return nil
}

// Put implements storage.Storage.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := storage.CheckMetadata(meta); err != nil {
		return fmt.Errorf("mem: put %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: put %s: %w", key, err)
	}
	var buf bytes.Buffer
	buf.Grow(int(min(size, 64<<20)))
	if err := storage.CopyBody(ctx, &buf, body, size); err != nil {
		return fmt.Errorf("mem: put %s: %w", key, err)
	}
	return s.insert(ctx, key, buf.Bytes(), meta)
}

// PutStream implements storage.Storage. It holds the whole stream in
// memory before storing it: unlike the real backends, its memory use
// grows with the stream, which is fine for the tests it serves.
func (s *Storage) PutStream(ctx context.Context, key string, r io.Reader, meta map[string]string) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, err
	}
	if err := storage.CheckMetadata(meta); err != nil {
		return 0, fmt.Errorf("mem: put %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("mem: put %s: %w", key, err)
	}
	var buf bytes.Buffer
	n, err := storage.CopyStream(ctx, &buf, r)
	if err != nil {
		return 0, fmt.Errorf("mem: put %s: %w", key, err)
	}
	if err := s.insert(ctx, key, buf.Bytes(), meta); err != nil {
		return 0, err
	}
	return n, nil
}

// insert stores data under key unless the key exists.
func (s *Storage) insert(ctx context.Context, key string, data []byte, meta map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: put %s: %w", key, err)
	}
	if _, ok := s.objects[key]; ok {
		return fmt.Errorf("mem: put %s: %w", key, storage.ErrExist)
	}
	s.objects[key] = object{data: data, meta: maps.Clone(meta), modTime: time.Now()}
	return nil
}

func (s *Storage) lookup(ctx context.Context, op, key string) (object, error) {
	if err := checkKey(key); err != nil {
		return object{}, err
	}
	if err := ctx.Err(); err != nil {
		return object{}, fmt.Errorf("mem: %s %s: %w", op, key, err)
	}
	s.mu.Lock()
	o, ok := s.objects[key]
	s.mu.Unlock()
	if !ok {
		return object{}, fmt.Errorf("mem: %s %s: %w", op, key, storage.ErrNotExist)
	}
	return o, nil
}

func (o object) info(key string) storage.ObjectInfo {
	meta := maps.Clone(o.meta)
	if meta == nil {
		meta = map[string]string{}
	}
	return storage.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime, Metadata: meta}
}

// Get implements storage.Storage.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	o, err := s.lookup(ctx, "get", key)
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	return io.NopCloser(bytes.NewReader(o.data)), o.info(key), nil
}

// Stat implements storage.Storage.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	o, err := s.lookup(ctx, "stat", key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	return o.info(key), nil
}

// List implements storage.Storage. It works on a snapshot taken when it
// starts, so fn may call back into the storage.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	s.mu.Lock()
	var infos []storage.ObjectInfo
	for k, o := range s.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, storage.ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(infos, func(a, b storage.ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	for _, oi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mem: list %s: %w", prefix, err)
		}
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.Storage.
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: delete %s: %w", key, err)
	}
	s.mu.Lock()
	delete(s.objects, key)
	s.mu.Unlock()
	return nil
}

// String implements storage.Storage.
func (s *Storage) String() string { return "mem:" }
