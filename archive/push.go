package archive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Errors a push can end with, for callers that map them to exit codes.
var (
	// ErrBadName: the file name is not one PostgreSQL archives.
	ErrBadName = errors.New("not a WAL file name")
	// ErrConflict: the name is archived already with other content.
	ErrConflict = errors.New("archived with different content")
	// ErrForeign: the file belongs to another cluster than the archive.
	ErrForeign = errors.New("WAL of another cluster")
	// ErrInvalid: the file is not a valid WAL file of its kind.
	ErrInvalid = errors.New("invalid WAL file")
)

// maxTextFileSize bounds .history and .backup files, which are small text.
const maxTextFileSize = 16 << 20

// PushOptions configures Push.
type PushOptions struct {
	Codec    codec.Codec
	Repo     string // the repository URL, for the identity cache and messages
	CacheDir string // where the archive identity is cached; "" disables the cache
	DataDir  string // the cluster's data directory, if known: its pg_control is checked
	Logger   *slog.Logger
}

// PushResult describes a completed push.
type PushResult struct {
	Name            string
	Size            int64 // uncompressed bytes
	Stored          int64 // bytes stored
	Codec           string
	AlreadyArchived bool // an identical copy was already there
	Duration        time.Duration
}

// Push archives the WAL, .partial, .history or .backup file at path. It
// returns nil only when the file is durably stored in s, by this call or
// (with identical content) by an earlier one.
func Push(ctx context.Context, s storage.Storage, path string, o PushOptions) (PushResult, error) {
	start := time.Now()
	name := filepath.Base(path)
	fn, err := wal.ParseFileName(name)
	if err != nil {
		return PushResult{}, fmt.Errorf("%w: %v", ErrBadName, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return PushResult{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return PushResult{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return PushResult{}, fmt.Errorf("%w: %s is not a regular file", ErrInvalid, path)
	}
	if err := checkIdentity(ctx, s, f, st.Size(), fn, o); err != nil {
		return PushResult{}, err
	}
	obj, err := prepare(f, st.Size(), o.Codec)
	if err != nil {
		return PushResult{}, fmt.Errorf("read %s: %w", path, err)
	}
	defer obj.close()
	if obj.digest.Size != st.Size() {
		return PushResult{}, fmt.Errorf("%w: %s changed size while it was read (%d, now %d bytes)", ErrInvalid, path, st.Size(), obj.digest.Size)
	}
	res := PushResult{Name: name, Size: obj.digest.Size, Stored: obj.size, Codec: o.Codec.Name()}
	key := WALKey(name, o.Codec)
	err = s.Put(ctx, key, obj.body, obj.size, obj.digest.meta())
	if errors.Is(err, storage.ErrExist) {
		err = compareExisting(ctx, s, key, obj.digest, fn)
		res.AlreadyArchived = err == nil
	}
	if err != nil {
		return PushResult{}, err
	}
	res.Duration = time.Since(start)
	return res, nil
}

// compareExisting decides whether an existing object under key holds the
// same content as the file being pushed.
func compareExisting(ctx context.Context, s storage.Storage, key string, want Digest, fn wal.FileName) error {
	info, err := s.Stat(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		// Deleted between our Put and Stat (a concurrent cleanup): the
		// caller's retry will store it again.
		return fmt.Errorf("%s vanished while comparing it with the pushed file: retry", key)
	}
	if err != nil {
		return fmt.Errorf("compare with the copy already archived at %s: %w", key, err)
	}
	have, err := DigestOf(info)
	if err != nil {
		return fmt.Errorf("%w: %s exists but cannot be compared: %v; move it aside if it is not needed", ErrConflict, key, err)
	}
	if have == want {
		return nil
	}
	why := "the archive already has another file under this name"
	if fn.Kind == wal.KindSegment || fn.Kind == wal.KindPartial {
		why = fmt.Sprintf("two servers are writing timeline %d — most likely split brain after a failover; make sure the old primary is stopped", fn.TLI)
	}
	return fmt.Errorf("%w: %s is already archived with different content (sha256 %s…, %d bytes; this file %s…, %d bytes): %s. walship never overwrites archived WAL",
		ErrConflict, trimKey(key), short(have.SHA256), have.Size, short(want.SHA256), want.Size, why)
}

// checkIdentity validates a segment's header and makes sure the file
// belongs to the cluster the archive was created for, recording the
// identity on the first push.
func checkIdentity(ctx context.Context, s storage.Storage, f *os.File, size int64, fn wal.FileName, o PushOptions) error {
	var (
		sysID   uint64
		segSize int64
		version int
	)
	switch fn.Kind {
	case wal.KindSegment, wal.KindPartial:
		head := make([]byte, wal.LongPageHeaderSize)
		if _, err := f.ReadAt(head, 0); err != nil {
			return fmt.Errorf("%w: %s: cannot read the page header: %v", ErrInvalid, fn, err)
		}
		hdr, err := wal.ParsePageHeader(head)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalid, fn, err)
		}
		segSize = int64(hdr.SegSize)
		if err := wal.CheckSegmentSize(segSize); err != nil {
			return fmt.Errorf("%w: %s: header says %v", ErrInvalid, fn, err)
		}
		if _, err := wal.CheckSegmentHeader(head, fn, segSize); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if size != segSize {
			return fmt.Errorf("%w: %s is %d bytes, but its segment size is %d", ErrInvalid, fn, size, segSize)
		}
		sysID = hdr.SysID
		version, _ = wal.MagicVersion(hdr.Magic)
	default:
		if size > maxTextFileSize {
			return fmt.Errorf("%w: %s is %d bytes, too large for a %s file", ErrInvalid, fn, size, fn.Kind)
		}
		if o.DataDir == "" {
			return nil
		}
		id, ok := ControlSystemID(o.DataDir)
		if !ok {
			return nil
		}
		sysID = id
	}

	cache := newIdentityCache(o.CacheDir, o.Repo)
	if id, ok := cache.load(); ok && id.SystemID == sysID && (segSize == 0 || id.SegmentSize == segSize) {
		return nil
	}
	id, err := ReadIdentity(ctx, s)
	if errors.Is(err, storage.ErrNotExist) {
		if segSize == 0 {
			return nil // identity is recorded from the first segment
		}
		id, err = writeIdentity(ctx, s, Identity{SystemID: sysID, SegmentSize: segSize, PGVersion: version, Created: time.Now().UTC()})
		if err == nil && o.Logger != nil {
			o.Logger.Info(fmt.Sprintf("recorded cluster identity in %s: system identifier %d, segment size %d", s, id.SystemID, id.SegmentSize))
		}
	}
	if err != nil {
		return fmt.Errorf("read the archive's cluster identity: %w", err)
	}
	if id.SystemID != sysID {
		return fmt.Errorf("%w: %s comes from database system %d, but %s holds WAL of system %d: give each cluster its own --repo (a new initdb or pg_upgrade makes a new system)",
			ErrForeign, fn, sysID, o.Repo, id.SystemID)
	}
	if segSize != 0 && id.SegmentSize != segSize {
		return fmt.Errorf("%w: %s has %d-byte segments, but %s holds %d-byte segments: give this cluster its own --repo",
			ErrForeign, fn, segSize, o.Repo, id.SegmentSize)
	}
	cache.store(id)
	return nil
}
