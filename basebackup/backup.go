// Package basebackup owns base backups in the archive: taking them over a
// replication connection (backup-push), listing them (backup-list) and
// restoring them into a data directory (backup-fetch).
//
// Layout below the repository:
//
//	basebackups/<name>/base.tar<ext>           the data directory
//	basebackups/<name>/<oid>.tar<ext>          one per tablespace
//	basebackups/<name>/started.json            where the backup starts, written first
//	basebackups/<name>/backup_manifest<ext>    the server's manifest
//	basebackups/<name>/backup.json             metadata, written last
//	basebackups/<name>/permanent               present: retention keeps the backup
//
// A backup exists for backup-list and backup-fetch only once backup.json
// is stored, and backup.json is written only after every other object of
// the backup and the WAL segment the backup ends in are in the archive.
// An interrupted backup therefore leaves objects nothing lists; they are
// never reused (names are unique) and retention removes them. started.json
// lets retention keep the WAL a backup that is still running will need.
package basebackup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Prefix is the key prefix of all base backups.
const Prefix = "basebackups/"

// Names of the records inside a backup's prefix.
const (
	metaName      = "backup.json"  // the metadata record, written last
	startedName   = "started.json" // the start position, written first
	permanentName = "permanent"    // the permanent mark
)

// ErrNotFound reports a backup name that is not in the archive.
var ErrNotFound = errors.New("no such backup")

// Backup is the metadata record of one completed base backup.
type Backup struct {
	Name         string         `json:"name"`
	Timeline     wal.TimeLineID `json:"timeline"`
	StopTimeline wal.TimeLineID `json:"stop_timeline"`
	StartLSN     wal.LSN        `json:"start_lsn"`
	StopLSN      wal.LSN        `json:"stop_lsn"`
	StartWAL     string         `json:"start_wal"`
	StopWAL      string         `json:"stop_wal"`
	StartTime    time.Time      `json:"start_time"`
	FinishTime   time.Time      `json:"finish_time"`
	Size         int64          `json:"size"`        // bytes of the backup's files, uncompressed
	StoredSize   int64          `json:"stored_size"` // bytes in the archive
	PGVersion    int            `json:"pg_version"`  // server_version_num, e.g. 150018
	SystemID     string         `json:"system_id"`   // decimal: JSON numbers lose 64-bit precision
	SegmentSize  int64          `json:"segment_size"`
	Codec        string         `json:"codec"`
	Label        string         `json:"label"`
	Tablespaces  []Tablespace   `json:"tablespaces"`
	Files        []File         `json:"files"`
	Manifest     *File          `json:"manifest,omitempty"`
	// Permanent is set by List from the backup's permanent mark, which
	// is a separate object: backup.json is never rewritten.
	Permanent bool `json:"permanent,omitempty"`
}

// File is one stored object of a backup.
type File struct {
	Key           string `json:"key"` // below the backup's prefix, e.g. "base.tar.zst"
	TablespaceOID uint32 `json:"tablespace_oid,omitempty"`
	archive.Digest
	StoredSize int64 `json:"stored_size"`
}

// MajorVersion is the PostgreSQL major version, e.g. 15.
func (b Backup) MajorVersion() int { return b.PGVersion / 10000 }

// prefix is the key prefix of the backup's objects.
func (b Backup) prefix() string { return Prefix + b.Name + "/" }

// ValidName reports whether name is a backup name walship would create,
// so that names from the command line cannot reach outside basebackups/.
func ValidName(name string) bool {
	if name == "" || len(name) > 100 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// newName names a backup after the moment it starts, so names sort by
// time and never repeat (the metadata record is written without
// overwriting, which would catch a collision).
func newName(t time.Time) string {
	return namePrefix + t.UTC().Format(nameLayout)
}

const (
	namePrefix = "base_"
	nameLayout = "20060102T150405Z"
)

// NameTime is the start time encoded in the name of a backup walship
// made; ok is false for other names.
func NameTime(name string) (t time.Time, ok bool) {
	t, err := time.Parse(nameLayout, strings.TrimPrefix(name, namePrefix))
	return t, err == nil
}

// putMeta writes b's metadata record; it must come last.
func putMeta(ctx context.Context, s storage.Storage, b Backup) error {
	return putRecord(ctx, s, b.prefix()+metaName, b)
}

// putRecord stores b as checksummed JSON under key.
func putRecord(ctx context.Context, s storage.Storage, key string, b Backup) error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	sum := sha256.Sum256(data)
	meta := map[string]string{
		archive.MetaSHA256: hex.EncodeToString(sum[:]),
		archive.MetaSize:   strconv.Itoa(len(data)),
	}
	return s.Put(ctx, key, bytes.NewReader(data), int64(len(data)), meta)
}

// Read returns the metadata of backup name.
func Read(ctx context.Context, s storage.Storage, name string) (Backup, error) {
	if !ValidName(name) {
		return Backup{}, fmt.Errorf("%w: %q is not a backup name (see walship backup-list)", ErrNotFound, name)
	}
	b, err := readRecord(ctx, s, name, metaName)
	if errors.Is(err, storage.ErrNotExist) {
		return Backup{}, fmt.Errorf("%w: %s (see walship backup-list)", ErrNotFound, name)
	}
	if err != nil {
		return Backup{}, err
	}
	if _, err := s.Stat(ctx, Prefix+name+"/"+permanentName); err == nil {
		b.Permanent = true
	} else if !errors.Is(err, storage.ErrNotExist) {
		return Backup{}, err
	}
	return b, nil
}

// readRecord reads and checks the JSON record called record of backup name.
func readRecord(ctx context.Context, s storage.Storage, name, record string) (Backup, error) {
	key := Prefix + name + "/" + record
	rc, info, err := s.Get(ctx, key)
	if err != nil {
		return Backup{}, err
	}
	defer rc.Close()
	vr, err := archive.NewVerifyingReader(info, archive.MarkReadErrors(rc))
	if err != nil {
		return Backup{}, err
	}
	data, err := archive.ReadSmall(vr, archive.MaxRecordSize)
	if err != nil {
		return Backup{}, err
	}
	var b Backup
	if err := json.Unmarshal(data, &b); err != nil {
		return Backup{}, fmt.Errorf("%w: %s: %v", archive.ErrCorrupt, key, err)
	}
	if err := b.check(name, record); err != nil {
		return Backup{}, fmt.Errorf("%w: %s %v", archive.ErrCorrupt, key, err)
	}
	return b, nil
}

// check refuses a record that would lead its readers astray: one that
// describes another backup, start or stop segments that are not WAL
// segment names (retention and wal-cleanup compare them), and object keys
// that are not plain names inside the backup's prefix.
func (b Backup) check(name, record string) error {
	if b.Name != name {
		return fmt.Errorf("describes backup %q", b.Name)
	}
	walNames := []struct{ field, value string }{{"start_wal", b.StartWAL}}
	if record == metaName {
		walNames = append(walNames, struct{ field, value string }{"stop_wal", b.StopWAL})
	}
	for _, w := range walNames {
		if fn, err := wal.ParseFileName(w.value); err != nil || fn.Kind != wal.KindSegment {
			return fmt.Errorf("has %s %q, which is not a WAL segment name", w.field, w.value)
		}
	}
	files := b.Files
	if b.Manifest != nil {
		files = append(files[:len(files):len(files)], *b.Manifest)
	}
	for _, f := range files {
		if !validKey(f.Key) {
			return fmt.Errorf("lists an object %q that is not a plain name inside the backup", f.Key)
		}
	}
	return nil
}

// validKey reports whether key, from a backup's record, is a plain object
// name such as base.tar.zst: no path, nothing hidden.
func validKey(key string) bool {
	return key != "" && len(key) <= 255 && key[0] != '.' && !strings.ContainsAny(key, "/\\\x00")
}

// List returns the completed backups, oldest first. Objects of backups
// without a metadata record (interrupted ones) are not listed.
func List(ctx context.Context, s storage.Storage) ([]Backup, error) {
	inv, err := Scan(ctx, s)
	return inv.Backups, err
}

// Inventory is everything stored below Prefix, from one listing.
type Inventory struct {
	Backups    []Backup            // completed backups, oldest first
	Keys       map[string][]string // every key of each completed backup, by name
	Incomplete []Incomplete        // prefixes without a metadata record, by name
}

// Incomplete is a backup without a metadata record: a backup-push that is
// still running, one that was interrupted, or one whose deletion was.
type Incomplete struct {
	Name string
	// Started is the backup's start record (Name, Timeline, StartLSN,
	// StartWAL, StartTime), nil when there is none.
	Started *Backup
	Keys    []string
	Newest  time.Time // the newest object's modification time
}

// Scan lists every base backup, complete or not, reading each metadata
// and start record.
func Scan(ctx context.Context, s storage.Storage) (Inventory, error) {
	type entry struct {
		keys                []string
		meta, started, perm bool
		newest              time.Time
	}
	entries := map[string]*entry{}
	var names []string
	err := s.List(ctx, Prefix, func(o storage.ObjectInfo) error {
		name, file, ok := strings.Cut(strings.TrimPrefix(o.Key, Prefix), "/")
		if !ok || !ValidName(name) {
			return nil // not walship's: left alone
		}
		e := entries[name]
		if e == nil {
			e = &entry{}
			entries[name] = e
			names = append(names, name)
		}
		e.keys = append(e.keys, o.Key)
		e.meta = e.meta || file == metaName
		e.started = e.started || file == startedName
		e.perm = e.perm || file == permanentName
		if o.ModTime.After(e.newest) {
			e.newest = o.ModTime
		}
		return nil
	})
	if err != nil {
		return Inventory{}, fmt.Errorf("list backups in %s: %w", s, err)
	}
	inv := Inventory{Keys: map[string][]string{}}
	for _, name := range names {
		e := entries[name]
		if !e.meta {
			in := Incomplete{Name: name, Keys: e.keys, Newest: e.newest}
			if e.started {
				b, err := readRecord(ctx, s, name, startedName)
				if err != nil && !errors.Is(err, storage.ErrNotExist) {
					return Inventory{}, err
				}
				if err == nil {
					in.Started = &b
				}
			}
			inv.Incomplete = append(inv.Incomplete, in)
			continue
		}
		b, err := readRecord(ctx, s, name, metaName)
		if errors.Is(err, storage.ErrNotExist) {
			continue // deleted since the listing
		}
		if err != nil {
			return Inventory{}, err
		}
		b.Permanent = e.perm
		inv.Backups = append(inv.Backups, b)
		inv.Keys[name] = e.keys
	}
	sort.Slice(inv.Backups, func(i, j int) bool { return inv.Backups[i].StartTime.Before(inv.Backups[j].StartTime) })
	return inv, nil
}

// MarkPermanent sets (permanent true) or removes the permanent mark of
// backup name. Retention never deletes a permanent backup, nor the WAL it
// needs.
func MarkPermanent(ctx context.Context, s storage.Storage, name string, permanent bool) error {
	b, err := Read(ctx, s, name)
	if err != nil {
		return err
	}
	key := b.prefix() + permanentName
	if !permanent {
		return s.Delete(ctx, key)
	}
	data := []byte("kept by walship backup-mark; remove with walship backup-mark --release " + name + "\n")
	sum := sha256.Sum256(data)
	meta := map[string]string{
		archive.MetaSHA256: hex.EncodeToString(sum[:]),
		archive.MetaSize:   strconv.Itoa(len(data)),
	}
	err = s.Put(ctx, key, bytes.NewReader(data), int64(len(data)), meta)
	if errors.Is(err, storage.ErrExist) {
		return nil
	}
	return err
}

// Target is a recovery target a backup must end before.
type Target struct {
	Time time.Time // zero: none
	LSN  wal.LSN   // zero: none
}

// Choose resolves NAME or LATEST. With a target, LATEST is the newest
// backup that ends before the target; a named backup that ends after the
// target is refused, since recovery cannot stop before a backup's end.
func Choose(ctx context.Context, s storage.Storage, name string, t Target) (Backup, error) {
	if name != "LATEST" {
		b, err := Read(ctx, s, name)
		if err != nil {
			return Backup{}, err
		}
		return b, t.check(b)
	}
	backups, err := List(ctx, s)
	if err != nil {
		return Backup{}, err
	}
	for i := len(backups) - 1; i >= 0; i-- {
		if t.check(backups[i]) == nil {
			return backups[i], nil
		}
	}
	if len(backups) == 0 {
		return Backup{}, fmt.Errorf("%w: the archive %s has no completed backup: run walship backup-push first", ErrNotFound, s)
	}
	return Backup{}, fmt.Errorf("%w: every backup in %s ends after the recovery target; the oldest, %s, ends at %s (%s)",
		ErrNotFound, s, backups[0].Name, backups[0].StopLSN, backups[0].FinishTime.Format(time.RFC3339))
}

func (t Target) check(b Backup) error {
	if !t.Time.IsZero() && t.Time.Before(b.FinishTime) {
		return fmt.Errorf("backup %s ends at %s, after the recovery target time %s: choose an older backup (or LATEST)",
			b.Name, b.FinishTime.Format(time.RFC3339), t.Time.Format(time.RFC3339))
	}
	if t.LSN != 0 && t.LSN < b.StopLSN {
		return fmt.Errorf("backup %s ends at LSN %s, after the recovery target LSN %s: choose an older backup (or LATEST)", b.Name, b.StopLSN, t.LSN)
	}
	return nil
}
