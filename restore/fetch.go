// Package restore owns wal-fetch: it brings one archived file back to the
// path PostgreSQL asked for, verified, and reports precisely whether the
// file is absent (so recovery may end there) or could not be fetched (so
// recovery must not end there).
package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Errors Fetch can end with, for callers that map them to exit codes.
var (
	// ErrBadName: the requested name is not a WAL file name.
	ErrBadName = errors.New("not a WAL file name")
	// ErrNotFound: the archive definitely does not hold the file.
	ErrNotFound = errors.New("not in the archive")
)

// FetchOptions configures Fetch.
type FetchOptions struct {
	Codec    codec.Codec // tried first; other codecs are found by listing
	DataDir  string      // the cluster's data directory: its pg_control is checked
	Repo     string      // the repository URL, for the identity cache
	CacheDir string      // where the archive identity is cached; "" disables the cache
	Retry    storage.RetryOptions
	// Partial allows, for a segment the archive does not hold, the
	// newest snapshot wal-stream stored of it (--partial-interval),
	// zero-filled to the segment size: recovery replays up to its end.
	// Only on request: a standby or a restore that may still get the
	// complete segment should wait for it instead.
	Partial bool
}

// FetchResult describes a completed fetch.
type FetchResult struct {
	Name     string
	Key      string
	Size     int64
	Stored   int64
	Duration time.Duration
	// PartialBytes is set when a snapshot of a segment being streamed
	// was restored (FetchOptions.Partial): the bytes of WAL it held.
	PartialBytes int64
}

// Fetch restores the archived file name to dest. dest appears only when
// complete and verified (checksum, size and, for segments, the page
// header and system identifier); a partial download never reaches it.
//
// dest is not fsynced. PostgreSQL reads the file right away, and when it
// keeps one (a standby's restored segment, a history file) it makes it
// durable itself (durable_rename in KeepFileRestoredFromArchive); after a
// crash, recovery starts again from its last restartpoint and asks for
// the file again. An fsync here would cost a disk flush per segment for
// nothing. (The prefetcher's spool relies on the same rule, plus its
// boot-id guard, for the copies it keeps ahead.)
//
// Errors: ErrBadName for a malformed name, ErrNotFound when the archive
// has no such file, archive.ErrCorrupt or archive.ErrForeign when the
// stored object is damaged or belongs to another cluster, and any other
// error for storage failures.
func Fetch(ctx context.Context, s storage.Storage, name, dest string, o FetchOptions) (FetchResult, error) {
	start := time.Now()
	fn, err := wal.ParseFileName(name)
	if err != nil {
		return FetchResult{}, fmt.Errorf("%w: %v", ErrBadName, err)
	}
	if name != fn.String() {
		return FetchResult{}, fmt.Errorf("%w: %q", ErrBadName, name)
	}
	var res FetchResult
	// Opening the object is retried inside s; a failure while streaming the
	// body is retried here, as a whole download.
	err = storage.Retry(ctx, o.Retry, "fetch "+name, func(ctx context.Context) error {
		r, err := fetchOnce(ctx, s, fn, dest, o)
		if err != nil && !isStreamError(err) {
			return storage.Permanent(err)
		}
		res = r
		return err
	})
	if errors.Is(err, storage.ErrNotExist) {
		// "Not found" may end recovery: say it only of an archive that
		// is this cluster's, not of an empty or mistyped location.
		if err := checkArchive(ctx, s, o); err != nil {
			return FetchResult{}, err
		}
		if o.Partial && fn.Kind == wal.KindSegment {
			r, err := fetchPartial(ctx, s, fn, dest, o)
			if err == nil {
				r.Duration = time.Since(start)
				return r, nil
			}
			if !errors.Is(err, storage.ErrNotExist) {
				return FetchResult{}, err
			}
		}
		return FetchResult{}, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	if err != nil {
		return FetchResult{}, err
	}
	res.Duration = time.Since(start)
	return res, nil
}

// checkArchive makes sure the archive belongs to the cluster being
// recovered before a missing file is reported as absent.
func checkArchive(ctx context.Context, s storage.Storage, o FetchOptions) error {
	id, err := archive.LoadIdentity(ctx, s, o.Repo, o.CacheDir)
	if err != nil {
		return err
	}
	if o.DataDir == "" {
		return nil
	}
	if sys, ok := archive.ControlSystemID(o.DataDir); ok && sys != id.SystemID {
		return fmt.Errorf("%w: the archive %s holds WAL of database system %d, but this data directory is system %d: point the repository setting at this cluster's archive",
			archive.ErrForeign, s, id.SystemID, sys)
	}
	return nil
}

// streamError marks a failure while reading an object's body.
type streamError struct{ err error }

func (e streamError) Error() string { return e.err.Error() }
func (e streamError) Unwrap() error { return e.err }

func isStreamError(err error) bool {
	var s streamError
	return errors.As(err, &s)
}

// fetchPartial restores the newest snapshot of segment fn, zero-filled
// to the segment size.
func fetchPartial(ctx context.Context, s storage.Storage, fn wal.FileName, dest string, o FetchOptions) (FetchResult, error) {
	name := fn.String()
	snaps, err := archive.ListPartials(ctx, s, name)
	if err != nil {
		return FetchResult{}, err
	}
	if len(snaps) == 0 {
		return FetchResult{}, storage.ErrNotExist
	}
	id, err := archive.LoadIdentity(ctx, s, o.Repo, o.CacheDir)
	if err != nil {
		return FetchResult{}, err
	}
	newest := snaps[len(snaps)-1]
	var res FetchResult
	err = storage.Retry(ctx, o.Retry, "fetch "+newest.Key, func(ctx context.Context) error {
		rc, info, err := s.Get(ctx, newest.Key)
		if err != nil {
			return storage.Permanent(err)
		}
		r, err := writeVerified(rc, info, fn, dest, id.SegmentSize, o)
		if err != nil && !isStreamError(err) {
			return storage.Permanent(err)
		}
		res = r
		return err
	})
	if err != nil {
		return FetchResult{}, err
	}
	res.PartialBytes = newest.Bytes
	return res, nil
}

func fetchOnce(ctx context.Context, s storage.Storage, fn wal.FileName, dest string, o FetchOptions) (FetchResult, error) {
	rc, info, err := archive.FindWAL(ctx, s, fn.String(), o.Codec)
	if err != nil {
		return FetchResult{}, err
	}
	return writeVerified(rc, info, fn, dest, 0, o)
}

// writeVerified writes the verified content of the object being read
// from rc (closed on return) to dest, zero-filled to padTo bytes when
// padTo is larger (a snapshot of a segment being received), checking a
// segment's header before dest appears.
func writeVerified(rc io.ReadCloser, info storage.ObjectInfo, fn wal.FileName, dest string, padTo int64, o FetchOptions) (FetchResult, error) {
	name := fn.String()
	defer rc.Close()
	vr, err := archive.NewVerifyingReader(info, archive.MarkReadErrors(rc))
	if err != nil {
		return FetchResult{}, err
	}
	defer vr.Close()
	// The recorded size comes from the archive: a damaged or hostile
	// object must not fill pg_wal before its checksum fails.
	limit := int64(wal.MaxSegmentSize)
	if fn.Kind == wal.KindHistory || fn.Kind == wal.KindBackupHistory {
		limit = archive.MaxHistorySize
	}
	if vr.Size() > limit {
		return FetchResult{}, fmt.Errorf("%w: %s is recorded as %d bytes, more than a %s can be", archive.ErrCorrupt, info.Key, vr.Size(), fn.Kind)
	}

	dir := filepath.Dir(dest)
	tmp, err := destModes(dest, o.DataDir).CreateTemp(dir, ".walship-fetch-*")
	if err != nil {
		return FetchResult{}, fmt.Errorf("create a temporary file next to %s: %w", dest, err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := copyVerified(tmp, vr)
	if err != nil {
		return FetchResult{}, err
	}
	if padTo > n {
		if err := tmp.Truncate(padTo); err != nil {
			return FetchResult{}, fmt.Errorf("write %s: %w", dest, err)
		}
		n = padTo
	}
	if fn.Kind == wal.KindSegment || fn.Kind == wal.KindPartial {
		if err := checkSegment(tmp, fn, n, info.Key, o.DataDir); err != nil {
			return FetchResult{}, err
		}
	}
	if err := tmp.Close(); err != nil {
		return FetchResult{}, fmt.Errorf("write %s: %w", dest, err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return FetchResult{}, fmt.Errorf("move the fetched file into place at %s: %w", dest, err)
	}
	committed = true
	return FetchResult{Name: name, Key: info.Key, Size: n, Stored: info.Size}, nil
}

// destModes returns the modes of a file fetched to dest: those of the
// data directory (PostgreSQL's rule: 0640 when it allows group access,
// else 0600), found above dest when dataDir is not known.
func destModes(dest, dataDir string) pgperm.Modes {
	if dataDir != "" {
		return pgperm.Of(dataDir)
	}
	return pgperm.Enclosing(filepath.Dir(dest))
}

// copyVerified copies the verified content into w, telling local write
// failures (full or read-only disk: not retried) from storage read
// failures (retried) and damaged content (never retried).
func copyVerified(w io.Writer, vr *archive.VerifyingReader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, rerr := vr.Read(buf)
		if m > 0 {
			if _, err := w.Write(buf[:m]); err != nil {
				return n, fmt.Errorf("write the fetched file: %w (is the disk full or read-only?)", err)
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			if errors.Is(rerr, archive.ErrCorrupt) {
				return n, rerr
			}
			return n, streamError{fmt.Errorf("download: %w", rerr)}
		}
	}
}

// checkSegment validates a fetched segment's header against its name and
// the data directory's system identifier.
func checkSegment(f *os.File, fn wal.FileName, size int64, key, dataDir string) error {
	head := make([]byte, wal.LongPageHeaderSize)
	if _, err := f.ReadAt(head, 0); err != nil {
		return fmt.Errorf("%w: %s is too short to be a WAL segment (%d bytes)", archive.ErrCorrupt, key, size)
	}
	hdr, err := wal.ParsePageHeader(head)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", archive.ErrCorrupt, key, err)
	}
	if int64(hdr.SegSize) != size {
		return fmt.Errorf("%w: %s is %d bytes but its header says segments are %d bytes", archive.ErrCorrupt, key, size, hdr.SegSize)
	}
	if _, err := wal.CheckSegmentHeader(head, fn, size); err != nil {
		return fmt.Errorf("%w: %s: %v", archive.ErrCorrupt, key, err)
	}
	if dataDir == "" {
		return nil
	}
	if sys, ok := archive.ControlSystemID(dataDir); ok && sys != hdr.SysID {
		return fmt.Errorf("%w: %s belongs to database system %d, but this data directory is system %d: point --repo at this cluster's archive",
			archive.ErrForeign, key, hdr.SysID, sys)
	}
	return nil
}
