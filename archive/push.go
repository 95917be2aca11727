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
	// Fence refuses segments of a timeline a newer one superseded; share
	// one between the pushes of a run. nil: one with CacheDir, Repo and
	// DefaultFenceInterval.
	Fence *Fence
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
	if fn.Kind == wal.KindSegment {
		// A .partial is never refused: only the promoted server writes
		// one, for the timeline it leaves.
		if err := checkFence(ctx, s, f, fn, o); err != nil {
			return PushResult{}, err
		}
	}
	c, meta := o.Codec, map[string]string{}
	if fn.Kind == wal.KindHistory {
		// Stored uncompressed, with the ancestry in its metadata: a
		// fencing check finds it with one Stat of a known key and reads
		// it without the key to decrypt the content.
		c = noCodec()
		if meta[MetaHistory], err = historyMeta(f, st.Size(), fn); err != nil {
			return PushResult{}, err
		}
	}
	obj, err := prepare(f, st.Size(), c)
	if err != nil {
		return PushResult{}, fmt.Errorf("read %s: %w", path, err)
	}
	defer obj.close()
	if obj.digest.Size != st.Size() {
		return PushResult{}, fmt.Errorf("%w: %s changed size while it was read (%d, now %d bytes)", ErrInvalid, path, st.Size(), obj.digest.Size)
	}
	res := PushResult{Name: name, Size: obj.digest.Size, Stored: obj.size, Codec: c.Name()}
	if fn.Kind == wal.KindHistory {
		// An older walship stored history files compressed.
		old, err := historyElsewhere(ctx, s, name)
		if err != nil {
			return PushResult{}, err
		}
		if old != "" {
			if err := compareExisting(ctx, s, old, obj.digest, fn); err != nil {
				return PushResult{}, err
			}
			res.AlreadyArchived = true
			res.Duration = time.Since(start)
			return res, nil
		}
	}
	key := WALKey(name, c)
	for k, v := range obj.digest.meta() {
		meta[k] = v
	}
	err = s.Put(ctx, key, obj.body, obj.size, meta)
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
	switch fn.Kind {
	case wal.KindSegment, wal.KindPartial:
		why = fmt.Sprintf("two servers are writing timeline %d — most likely split brain after a failover; make sure the old primary is stopped", fn.TLI)
	case wal.KindHistory:
		why = fmt.Sprintf("another server was promoted to timeline %d already — split brain; only one of them may stay primary", fn.TLI)
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
		head, hdr, err := readPageHeader(f, fn)
		if err != nil {
			return err
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
	switch {
	case err == nil:
	case !errors.Is(err, storage.ErrNotExist) && !mayBeMissing(err):
		return fmt.Errorf("read the archive's cluster identity: %w", err)
	case segSize != 0:
		// Missing, or unreadable the way a missing key looks to a host
		// without s3:ListBucket: the conditional write settles it.
		var created bool
		id, created, err = writeIdentity(ctx, s, Identity{SystemID: sysID, SegmentSize: segSize, PGVersion: version, Created: time.Now().UTC()})
		if err != nil {
			return err
		}
		if created && o.Logger != nil {
			o.Logger.Info(fmt.Sprintf("recorded cluster identity in %s: system identifier %d, segment size %d", s, id.SystemID, id.SegmentSize))
		}
	case errors.Is(err, storage.ErrNotExist):
		return nil // identity is recorded from the first segment
	default:
		// A history or backup file, and an identity that is missing
		// or cannot be read (403): nothing to compare with. Segments
		// are always checked, and their first push records the
		// identity.
		if o.Logger != nil {
			o.Logger.Debug(fmt.Sprintf("%s pushed without an identity check: the archive's identity cannot be read (%v)", fn, err))
		}
		return nil
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

// WALArchived reports whether WAL file name is archived, under any codec,
// like HasWAL, for callers that may lack s3:ListBucket (backup-push on a
// pushing host under least privilege). When the listing is refused for
// good, it asks for the file's key under each codec, preferred first; a
// key the store will not show (S3 answers 403 for a missing key without
// s3:ListBucket) counts as not archived yet.
func WALArchived(ctx context.Context, s storage.Storage, name string, preferred codec.Codec) (bool, error) {
	found, err := HasWAL(ctx, s, name)
	if err == nil || !storage.IsPermanent(err) {
		return found, err
	}
	codecs := append([]codec.Codec{preferred}, codec.All()...)
	for i, c := range codecs {
		if i > 0 && c.Name() == preferred.Name() {
			continue
		}
		_, err := s.Stat(ctx, WALKey(name, c))
		switch {
		case err == nil:
			return true, nil
		case !storage.IsPermanent(err):
			return false, err
		}
	}
	return false, nil
}

// readPageHeader reads and parses the long page header at the start of
// segment fn (open as f).
func readPageHeader(f *os.File, fn wal.FileName) ([]byte, wal.PageHeader, error) {
	head := make([]byte, wal.LongPageHeaderSize)
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil, wal.PageHeader{}, fmt.Errorf("%w: %s: cannot read the page header: %v", ErrInvalid, fn, err)
	}
	hdr, err := wal.ParsePageHeader(head)
	if err != nil {
		return nil, wal.PageHeader{}, fmt.Errorf("%w: %s: %v", ErrInvalid, fn, err)
	}
	return head, hdr, nil
}
