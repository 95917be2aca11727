package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// IdentityKey is the key of the archive's identity record.
const IdentityKey = "cluster.json"

// Identity says which PostgreSQL cluster an archive belongs to. It is
// written by the first push and never changed: WAL of another cluster
// (another system identifier, such as a new initdb or a pg_upgrade) needs
// another archive.
type Identity struct {
	SystemID    uint64    `json:"-"`
	SegmentSize int64     `json:"segment_size"`
	PGVersion   int       `json:"pg_version,omitempty"`
	Created     time.Time `json:"created"`
}

// MarshalJSON writes the system identifier as a decimal string: JSON
// numbers lose 64-bit precision in many readers.
func (id Identity) MarshalJSON() ([]byte, error) {
	type plain Identity
	return json.Marshal(struct {
		SystemID string `json:"system_id"`
		plain
	}{strconv.FormatUint(id.SystemID, 10), plain(id)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (id *Identity) UnmarshalJSON(b []byte) error {
	type plain Identity
	var v struct {
		SystemID string `json:"system_id"`
		plain
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	sys, err := strconv.ParseUint(v.SystemID, 10, 64)
	if err != nil {
		return fmt.Errorf("system_id %q: %w", v.SystemID, err)
	}
	*id = Identity(v.plain)
	id.SystemID = sys
	return nil
}

// ReadIdentity returns the archive's identity, or an error matching
// storage.ErrNotExist for an archive nothing has been pushed to yet.
func ReadIdentity(ctx context.Context, s storage.Storage) (Identity, error) {
	rc, info, err := s.Get(ctx, IdentityKey)
	if err != nil {
		return Identity{}, err
	}
	defer rc.Close()
	vr, err := NewVerifyingReader(info, MarkReadErrors(rc))
	if err != nil {
		return Identity{}, err
	}
	data, err := ReadSmall(vr, MaxRecordSize)
	if err != nil {
		return Identity{}, err
	}
	var id Identity
	if err := json.Unmarshal(data, &id); err != nil {
		return Identity{}, fmt.Errorf("%w: %s: %v", ErrCorrupt, IdentityKey, err)
	}
	// Readers compute with the segment size; walship never records an
	// identity without it or without a system identifier.
	if err := wal.CheckSegmentSize(id.SegmentSize); err != nil || id.SystemID == 0 {
		return Identity{}, fmt.Errorf("%w: %s records system identifier %d and segment size %d, which no PostgreSQL cluster has",
			ErrCorrupt, IdentityKey, id.SystemID, id.SegmentSize)
	}
	return id, nil
}

// ErrNoIdentity reports an archive without an identity record: nothing
// was ever pushed to it, or the repository URL points at the wrong place.
var ErrNoIdentity = errors.New("archive has no cluster identity")

// LoadIdentity returns the archive's identity, from the local cache under
// cacheDir when it holds one for repo, else from the archive (and then
// caches it). An archive without one gives an error matching ErrNoIdentity.
func LoadIdentity(ctx context.Context, s storage.Storage, repo, cacheDir string) (Identity, error) {
	cache := newIdentityCache(cacheDir, repo)
	if id, ok := cache.load(); ok {
		return id, nil
	}
	id, err := ReadIdentity(ctx, s)
	if errors.Is(err, storage.ErrNotExist) {
		return Identity{}, fmt.Errorf("%w: %s has no %s — nothing was archived there yet, or the repository setting points at the wrong place", ErrNoIdentity, s, IdentityKey)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("read the archive's cluster identity: %w", err)
	}
	cache.store(id)
	return id, nil
}

// EnsureIdentity is LoadIdentity for a caller that knows the cluster
// (backup-push, wal-stream): an archive without an identity gets id.
func EnsureIdentity(ctx context.Context, s storage.Storage, repo, cacheDir string, id Identity) (Identity, error) {
	got, err := LoadIdentity(ctx, s, repo, cacheDir)
	if err == nil || !errors.Is(err, ErrNoIdentity) && !mayBeMissing(err) {
		return got, err
	}
	got, _, err = writeIdentity(ctx, s, id)
	if err == nil {
		newIdentityCache(cacheDir, repo).store(got)
	}
	return got, err
}

// mayBeMissing reports a failure to read the identity that may mean it
// is not there: S3 answers a missing key with 403, not 404, to a caller
// without s3:ListBucket, which a pushing host under least privilege is.
// Only a conditional write can then tell; if the record exists after
// all, writeIdentity reads it again and reports why it cannot.
func mayBeMissing(err error) bool {
	return storage.IsPermanent(err) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, storage.ErrExist)
}

// writeIdentity records id unless the archive already has an identity, in
// which case the stored one is returned; created says which happened.
func writeIdentity(ctx context.Context, s storage.Storage, id Identity) (got Identity, created bool, err error) {
	data, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return Identity{}, false, err
	}
	data = append(data, '\n')
	sum := sha256.Sum256(data)
	d := Digest{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
	err = s.Put(ctx, IdentityKey, bytes.NewReader(data), int64(len(data)), d.meta())
	if errors.Is(err, storage.ErrExist) {
		got, err = ReadIdentity(ctx, s)
		if err != nil {
			return Identity{}, false, fmt.Errorf("read the archive's cluster identity: %w", err)
		}
		return got, false, nil
	}
	if err != nil {
		return Identity{}, false, fmt.Errorf("record the cluster identity in %s: %w", s, err)
	}
	return id, true, nil
}

// identityCache keeps the identity of an archive on local disk, so that a
// push needs no request beyond its upload. A cached identity that does not
// match is never trusted to refuse: the archive is asked again.
type identityCache struct{ path string }

func newIdentityCache(dir, repo string) identityCache {
	if dir == "" {
		return identityCache{}
	}
	sum := sha256.Sum256([]byte(repo))
	return identityCache{path: filepath.Join(dir, "identity-"+hex.EncodeToString(sum[:8])+".json")}
}

func (c identityCache) load() (Identity, bool) {
	if c.path == "" {
		return Identity{}, false
	}
	data, err := os.ReadFile(c.path)
	if err != nil {
		return Identity{}, false
	}
	var id Identity
	if json.Unmarshal(data, &id) != nil || id.SystemID == 0 || wal.CheckSegmentSize(id.SegmentSize) != nil {
		return Identity{}, false
	}
	return id, true
}

// store saves id; failures only cost a request on the next push.
func (c identityCache) store(id Identity) {
	if c.path == "" {
		return
	}
	data, err := json.Marshal(id)
	if err != nil {
		return
	}
	// The cache is the user's alone, like the rest of ~/.cache.
	if pgperm.Owner().MkdirAll(filepath.Dir(c.path)) != nil {
		return
	}
	tmp, err := pgperm.Owner().CreateTemp(filepath.Dir(c.path), ".identity-*")
	if err != nil {
		return
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil && cerr == nil {
		err = os.Rename(tmp.Name(), c.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
}

// ControlSystemID reads the system identifier from global/pg_control of the
// data directory dir (the first field of ControlFileData in every
// PostgreSQL version). ok is false when dir is not a data directory.
func ControlSystemID(dir string) (uint64, bool) {
	f, err := os.Open(filepath.Join(dir, "global", "pg_control"))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var b [8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[:]), true
}

// ReadableByAll reports the objects that stay unencrypted in an encrypted
// archive because every host must read them, pushing hosts that hold only
// a public key included: the cluster identity, which wal-push checks, and
// timeline history files, which hold no table data and give every host
// the timeline graph (fencing, standbys following a promotion).
func ReadableByAll(key string) bool {
	if key == IdentityKey {
		return true
	}
	base, _ := codec.Split(strings.TrimPrefix(key, WALPrefix))
	fn, err := wal.ParseFileName(base)
	return err == nil && strings.HasPrefix(key, WALPrefix) && fn.Kind == wal.KindHistory
}
