package stream

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/wal"
)

// The spool is a local directory of WAL received but not archived yet:
//
//	000000010000000000000005.partial   the segment being received
//	000000010000000000000004           complete, waiting for the archive
//	walship-stream.lock                held (flock) by the running wal-stream
//	walship-stream.status              the status, as JSON
//
// A segment is written into its .partial file, which is created at its
// full size (zero-filled, like pg_receivewal's) so that PostgreSQL can use
// it after a rename, and renamed to its plain name once complete and
// fsynced. A plain name in the spool is therefore always a complete
// segment; the archive gets it and then it is removed.
//
// What wal-stream creates there is its user's alone (directories 0700,
// files 0600), whatever the umask: the spool holds WAL, that is the
// database's changes. A spool inside a PostgreSQL data directory gets
// that directory's modes instead (0750/0640 with group access).
const (
	lockName   = "walship-stream.lock"
	statusName = "walship-stream.status"
	partialExt = ".partial"
)

// spool is an open spool directory.
type spool struct {
	dir   string
	lock  *os.File
	modes pgperm.Modes // of what is created in it
}

// openSpool creates dir if needed and locks it, so two wal-stream
// processes never write one spool.
func openSpool(dir string) (*spool, error) {
	modes := pgperm.Enclosing(dir)
	if err := modes.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("spool directory: %w (give --spool a directory this user can write)", err)
	}
	f, err := modes.OpenFile(filepath.Join(dir, lockName), os.O_RDWR)
	if err != nil {
		return nil, fmt.Errorf("spool directory: %w (give --spool a directory this user can write)", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: another walship wal-stream uses the spool %s", ErrBusy, dir)
		}
		return nil, fmt.Errorf("lock spool %s: %w", dir, err)
	}
	return &spool{dir: dir, lock: f, modes: modes}, nil
}

// ErrBusy reports a spool directory another wal-stream holds.
var ErrBusy = errors.New("spool in use")

func (s *spool) close() error { return s.lock.Close() }

func (s *spool) path(name string) string { return filepath.Join(s.dir, name) }

// contents lists the complete segments (in ready/ or, after a crash
// between the rename and the move, at the top) and the .partial segments
// of the spool.
func (s *spool) contents() (complete, partial []wal.FileName, err error) {
	for _, dir := range []string{s.dir, s.path(readyDir)} {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read spool: %w", err)
		}
		for _, e := range entries {
			fn, err := wal.ParseFileName(e.Name())
			if err != nil || !e.Type().IsRegular() {
				continue
			}
			switch {
			case fn.Kind == wal.KindSegment:
				complete = append(complete, fn)
			case fn.Kind == wal.KindPartial && dir == s.dir:
				partial = append(partial, fn)
			}
		}
	}
	return complete, partial, nil
}

// recover moves what an earlier run left at the top of the spool into
// ready/: complete segments, and .partial files of segments before start
// (the archive got ahead of them), which are archived as .partial.
func (s *spool) recover(start wal.LSN, segSize int64) error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("read spool: %w", err)
	}
	for _, e := range entries {
		fn, err := wal.ParseFileName(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		lsn, err := fn.StartLSN(segSize)
		if err != nil {
			continue
		}
		if fn.Kind == wal.KindSegment || fn.Kind == wal.KindPartial && lsn < segmentStartOf(start, segSize) {
			if err := s.moveReady(e.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}

func segmentStartOf(lsn wal.LSN, segSize int64) wal.LSN {
	return wal.SegmentStartLSN(wal.LSNToSegNo(lsn, segSize), segSize)
}

// segmentFile is the segment being received.
type segmentFile struct {
	f       *os.File
	name    wal.FileName // the segment (not .partial) name
	start   wal.LSN      // first byte of the segment
	written int64        // bytes written from the segment's start
	synced  int64        // bytes known durable
}

// openSegment opens (creating at full size) the .partial file of the
// segment of tli holding lsn.
func (s *spool) openSegment(tli wal.TimeLineID, lsn wal.LSN, segSize int64) (*segmentFile, error) {
	seg := wal.LSNToSegNo(lsn, segSize)
	name := wal.SegmentFile(tli, seg, segSize)
	path := s.path(name.String() + partialExt)
	f, err := s.modes.OpenFile(path, os.O_WRONLY)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() != segSize {
		err = f.Truncate(segSize)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool %s: %w", path, err)
	}
	return &segmentFile{f: f, name: name, start: wal.SegmentStartLSN(seg, segSize)}, nil
}

// writeAt writes data received for position lsn.
func (sf *segmentFile) writeAt(data []byte, lsn wal.LSN) error {
	off := int64(lsn - sf.start)
	if _, err := sf.f.WriteAt(data, off); err != nil {
		return fmt.Errorf("spool %s: %w", sf.f.Name(), err)
	}
	sf.written = max(sf.written, off+int64(len(data)))
	return nil
}

// sync makes what was written durable.
func (sf *segmentFile) sync() error {
	if sf.synced == sf.written {
		return nil
	}
	if err := sf.f.Sync(); err != nil {
		return fmt.Errorf("spool %s: fsync: %w", sf.f.Name(), err)
	}
	sf.synced = sf.written
	return nil
}

// complete syncs the full segment, renames it to its plain name and
// returns that path.
func (s *spool) complete(sf *segmentFile) (string, error) {
	if err := sf.sync(); err != nil {
		return "", err
	}
	if err := sf.f.Close(); err != nil {
		return "", fmt.Errorf("spool %s: %w", sf.f.Name(), err)
	}
	done := s.path(sf.name.String())
	if err := os.Rename(sf.f.Name(), done); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	return done, s.syncDir()
}

// abandon closes a .partial file, keeping it: at the end of a timeline,
// or when the stream stops midway.
func (sf *segmentFile) abandon() error {
	err := sf.sync()
	if cerr := sf.f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *spool) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool: fsync directory: %w", err)
	}
	return nil
}

// remove deletes a file of the spool once the archive holds it.
func (s *spool) remove(name string) error {
	err := os.Remove(s.path(name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// isPartialName reports whether name is a .partial file name.
func isPartialName(name string) bool { return strings.HasSuffix(name, partialExt) }
