// Package cleanup owns pruning of archived WAL: wal-cleanup, with the
// rules of PostgreSQL's pg_archivecleanup, on a walship archive or on a
// plain directory.
//
// The rules (src/bin/pg_archivecleanup): the OLDEST argument may be a
// segment name, a .partial name or a .backup name (the last two are cut
// to their segment); with an extension (-x) it is stripped first. A file
// is a candidate when its name, with the extension stripped, is a segment
// name or a .partial name (and, with the backup option, a .backup name);
// it is removed when its log and segment number (the name after the
// 8-character timeline) sort before OLDEST's. Timeline history files are
// never removed.
//
// On a walship archive, WAL that a completed base backup, or one still
// being taken, needs is kept whatever OLDEST says, so a standby's archive_cleanup_command cannot make
// the archive's backups unrestorable.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
)

// ErrBadOldest reports an OLDEST argument pg_archivecleanup would refuse.
var ErrBadOldest = errors.New("invalid file name argument")

const segLen = 24

// isHex24 is pg_archivecleanup's test for a segment name: 24 upper-case
// hex digits.
func isHex24(s string) bool { return len(s) == segLen && isHex(s) }

func isSegment(s string) bool { return isHex24(s) }

func isPartial(s string) bool {
	return len(s) == segLen+len(".partial") && isHex24(s[:segLen]) && s[segLen:] == ".partial"
}

// isBackupHistory: SEGMENT.OFFSET.backup with an 8-hex-digit offset.
func isBackupHistory(s string) bool {
	return len(s) == segLen+1+8+len(".backup") && isHex24(s[:segLen]) && s[segLen] == '.' &&
		isHex(s[segLen+1:segLen+9]) && s[segLen+9:] == ".backup"
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// ParseOldest turns the OLDEST argument into the segment name files are
// compared with, as pg_archivecleanup does.
func ParseOldest(arg, ext string) (string, error) {
	name := strings.TrimSuffix(arg, ext)
	switch {
	case isSegment(name):
		return name, nil
	case isPartial(name), isBackupHistory(name):
		return name[:segLen], nil
	}
	return "", fmt.Errorf("%w %q: give a WAL segment name, SEGMENT.partial or SEGMENT.OFFSET.backup (archive_cleanup_command passes %%r)", ErrBadOldest, arg)
}

// Removable reports whether a file called name goes for oldest.
func Removable(name, ext, oldest string, backupFiles bool) bool {
	if ext != "" {
		name = strings.TrimSuffix(name, ext)
	}
	if !(isSegment(name) || isPartial(name) || backupFiles && isBackupHistory(name)) {
		return false
	}
	return name[8:] < oldest[8:]
}

// DirOptions configures Dir.
type DirOptions struct {
	Ext         string    // pg_archivecleanup -x
	DryRun      bool      // -n: print what would go, remove nothing
	BackupFiles bool      // -b: also remove .backup files
	Out         io.Writer // where -n prints, one path per line
}

// Dir prunes a plain directory exactly like pg_archivecleanup.
func Dir(dir, oldestArg string, o DirOptions) ([]string, error) {
	oldest, err := ParseOldest(oldestArg, o.Ext)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("could not open archive location %q: %w", dir, err)
	}
	var removed []string
	for _, e := range entries {
		if !Removable(e.Name(), o.Ext, oldest, o.BackupFiles) {
			continue
		}
		path := dir + "/" + e.Name()
		if o.DryRun {
			fmt.Fprintln(o.Out, path)
		} else if err := os.Remove(path); err != nil {
			return removed, fmt.Errorf("could not remove file %q: %w", path, err)
		}
		removed = append(removed, path)
	}
	return removed, nil
}

// ArchiveOptions configures Archive.
type ArchiveOptions struct {
	DryRun bool      // list, remove nothing
	Out    io.Writer // where a dry run prints, one key per line
	Logger *slog.Logger
}

// Archive prunes the WAL of a walship archive for oldestArg, keeping what
// completed base backups need. It returns the keys removed (or, in a dry
// run, that would be). Files the storage keeps because of retention (S3
// Object Lock) do not stop it: it removes the others and returns those
// it removed with a *RefusedError.
func Archive(ctx context.Context, s storage.Storage, oldestArg string, o ArchiveOptions) ([]string, error) {
	oldest, err := ParseOldest(oldestArg, "")
	if err != nil {
		return nil, err
	}
	inv, err := basebackup.Scan(ctx, s)
	if err != nil {
		return nil, err
	}
	backups := inv.Backups
	for _, in := range inv.Incomplete {
		// A backup-push still running needs its WAL as much.
		if in.Started != nil && mayBeRunning(in, time.Now()) {
			backups = append(backups, *in.Started)
		}
	}
	cutoff := oldest
	for _, b := range backups {
		if b.StartWAL[8:] < cutoff[8:] {
			if o.Logger != nil {
				o.Logger.Info(fmt.Sprintf("keeping WAL from %s on: base backup %s needs it", b.StartWAL, b.Name))
			}
			cutoff = b.StartWAL
		}
	}
	var keys []string
	err = s.List(ctx, archive.WALPrefix, func(obj storage.ObjectInfo) error {
		base, _ := codec.Split(strings.TrimPrefix(obj.Key, archive.WALPrefix))
		if !strings.Contains(base, "/") && Removable(base, "", cutoff, false) {
			keys = append(keys, obj.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s, err)
	}
	sort.Strings(keys)
	if o.DryRun {
		for _, key := range keys {
			fmt.Fprintln(o.Out, key)
		}
		return keys, nil
	}
	// Oldest first, in batches: an interruption leaves the newest of
	// them, and files under retention (S3 Object Lock), which are the
	// newest ones when every file got the same retention, do not keep
	// the older ones from going.
	refused, err := deleteRetained(ctx, s, keys)
	if err != nil {
		return nil, fmt.Errorf("remove WAL from %s: %w", s, err)
	}
	if len(refused) == 0 {
		return keys, nil
	}
	stays := map[string]bool{}
	for _, f := range refused {
		stays[f.Key] = true
	}
	var removed []string
	for _, key := range keys {
		if !stays[key] {
			removed = append(removed, key)
		}
	}
	what, re := walRefused(refused)
	return removed, &RefusedError{err: &storage.DeleteError{Failed: refused}, msg: fmt.Sprintf("removed %d of %d WAL files older than %s; %s; they can be removed %s",
		len(removed), len(keys), cutoff, what, afterRetention(re))}
}
