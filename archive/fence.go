package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Fencing. After a failover the old primary may still run and write (a
// zombie). Its WAL past the point where the promoted server's timeline
// forked from its own is a history nobody may recover into, so walship
// refuses to archive it: the archive keeps one consistent history, and
// the refused WAL piles up in the zombie's pg_wal, where it harms nobody.
//
// The archive's timeline history files are the truth. Each .history
// object carries its timeline's ancestry in plaintext metadata
// (MetaHistory), so a host that holds only public encryption keys reads
// it with one Stat. A segment of timeline T is refused when the history
// of T+1 (or, when T+1 forked from an older timeline, of T+2, …) says the
// lineage left T at a switch point before the segment's end.
//
// Requests: a history found is immutable and cached for good; "T+1 has no
// history yet" is trusted for an interval (DefaultFenceInterval), so a
// busy archiver asks at most once per interval. A push within the
// interval after a promotion may still land: it is WAL of the old
// timeline, which recovery along the new timeline never reads, so the
// archive's history stays sound.

// ErrSuperseded reports WAL, or a backup, of a timeline that a newer
// timeline in the archive has superseded at an earlier LSN: the server
// writing it is an old primary that kept running after a failover.
var ErrSuperseded = errors.New("timeline superseded by a newer one")

// MetaHistory is the metadata key under which a .history object records
// its timeline's ancestry, "1:0/3000000,2:0/5000028": each ancestor
// timeline and the LSN where the lineage left it, oldest first. A leading
// "+" says older entries were left out (the value is kept short enough
// for S3's metadata limit).
const MetaHistory = "walship-history"

// maxAncestryMeta bounds the MetaHistory value; S3 allows 2 KB of user
// metadata per object, and the checksum and envelope need some of it.
const maxAncestryMeta = 1500

// DefaultFenceInterval is how long the absence of a newer timeline's
// history is trusted.
const DefaultFenceInterval = 10 * time.Second

// SupersededError is the error, matching ErrSuperseded, of a refused push
// or backup.
type SupersededError struct {
	Timeline    wal.TimeLineID // the timeline the server writes
	SwitchPoint wal.LSN        // where the newer lineage left it
	NewTimeline wal.TimeLineID // the timeline whose history says so
}

func (e *SupersededError) Error() string {
	return fmt.Sprintf("this server was superseded by timeline %d at LSN %s; it must not accept writes: stop it and rejoin it as a standby (walship standby-rejoin)",
		e.NewTimeline, e.SwitchPoint)
}

// Is makes errors.Is(err, ErrSuperseded) true.
func (e *SupersededError) Is(target error) bool { return target == ErrSuperseded }

// FenceOptions configures a Fence.
type FenceOptions struct {
	CacheDir string // where what was learned is kept between runs; "" keeps it in memory only
	Repo     string // the repository URL, which names the cache
	// Interval is how long "no newer timeline" is trusted; 0 asks the
	// archive on every check.
	Interval time.Duration
}

// Fence answers whether a timeline has been superseded, remembering
// what it learned. It is safe for concurrent use; concurrent checks
// share one request.
type Fence struct {
	o   FenceOptions
	now func() time.Time

	mu     sync.Mutex
	found  map[wal.TimeLineID]ancestry
	absent map[wal.TimeLineID]time.Time // when it was last seen missing
}

// NewFence returns a Fence with the given options.
func NewFence(o FenceOptions) *Fence {
	return &Fence{o: o, now: time.Now, found: map[wal.TimeLineID]ancestry{}, absent: map[wal.TimeLineID]time.Time{}}
}

// ancestry is the lineage of a timeline, from its history file.
type ancestry struct {
	entries   []wal.HistoryEntry // oldest first; Reason unused
	truncated bool               // older entries were left out
}

// Check returns a *SupersededError when the archive holds the history of
// a newer timeline whose lineage left timeline tli before end: WAL of
// tli up to end holds writes past a fork. WAL that ends at or before the
// switch point is still part of the newer timeline's past and passes.
// sysID names the cluster, for the cache.
func (f *Fence) Check(ctx context.Context, s storage.Storage, sysID uint64, tli wal.TimeLineID, end wal.LSN) error {
	// PostgreSQL names a new timeline newest+1, so the first missing
	// history ends the chain.
	for next := tli + 1; next > tli; next++ {
		a, found, err := f.history(ctx, s, sysID, next)
		if err != nil {
			return err
		}
		if !found {
			return nil
		}
		switchPoint, descends, known := a.leftAt(tli)
		if !known {
			return fmt.Errorf("%s lists only the newest of its ancestors and cannot be read in full: give this host the key to read it (--decrypt-identity-file) to check whether it supersedes timeline %d",
				wal.HistoryFileName(next), tli)
		}
		if descends {
			// The first descendant decides: WAL before its fork is its
			// past, whatever later timelines did.
			if end > switchPoint {
				return &SupersededError{Timeline: tli, SwitchPoint: switchPoint, NewTimeline: next}
			}
			return nil
		}
	}
	return nil
}

// leftAt returns where the lineage left timeline tli; descends is false
// when tli is not an ancestor, and known false when that cannot be told
// from a truncated ancestry.
func (a ancestry) leftAt(tli wal.TimeLineID) (switchPoint wal.LSN, descends, known bool) {
	for _, e := range a.entries {
		if e.TLI == tli {
			return e.SwitchPoint, true, true
		}
	}
	if a.truncated && (len(a.entries) == 0 || tli < a.entries[0].TLI) {
		return 0, false, false
	}
	return 0, false, true
}

// history returns the ancestry of timeline tli, and whether its history
// file is in the archive.
func (f *Fence) history(ctx context.Context, s storage.Storage, sysID uint64, tli wal.TimeLineID) (ancestry, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.found[tli]; ok {
		return a, true, nil
	}
	if at, ok := f.absent[tli]; ok && f.fresh(at) {
		return ancestry{}, false, nil
	}
	found, absent := f.cacheFile(sysID, tli, ".history"), f.cacheFile(sysID, tli, ".absent")
	if a, ok := loadAncestry(found); ok {
		f.found[tli] = a
		return a, true, nil
	}
	if at, ok := loadTime(absent); ok && f.fresh(at) {
		f.absent[tli] = at
		return ancestry{}, false, nil
	}

	checked := f.now()
	a, ok, err := f.probe(ctx, s, tli)
	if err != nil {
		return ancestry{}, false, err
	}
	if !ok {
		f.absent[tli] = checked
		if f.o.Interval > 0 {
			storeCache(absent, []byte(checked.UTC().Format(time.RFC3339Nano)))
		}
		return ancestry{}, false, nil
	}
	delete(f.absent, tli)
	f.found[tli] = a
	if !a.truncated {
		storeCache(found, []byte(formatAncestry(a.entries, 0)))
	}
	if absent != "" {
		os.Remove(absent)
	}
	return a, true, nil
}

// fresh reports whether a check made at t is still trusted.
func (f *Fence) fresh(t time.Time) bool {
	age := f.now().Sub(t)
	// A clock set back makes the record look new; distrust it then.
	return f.o.Interval > 0 && age >= -time.Second && age < f.o.Interval
}

// probe asks the archive for the history of timeline tli: one Stat of
// its key (history files are always stored uncompressed, so there is no
// other key to try: one request per probe is what fencing costs).
func (f *Fence) probe(ctx context.Context, s storage.Storage, tli wal.TimeLineID) (ancestry, bool, error) {
	name := wal.HistoryFileName(tli)
	for _, key := range []string{WALKey(name, noCodec())} {
		info, err := s.Stat(ctx, key)
		switch {
		case err == nil:
			a, err := readAncestry(ctx, s, info, tli)
			return a, err == nil, err
		case errors.Is(err, ErrCorrupt):
			return ancestry{}, false, err
		case storage.IsPermanent(err):
			// Missing; or refused, as S3 answers a missing key to a
			// host without s3:ListBucket. Only a history seen fences.
		default:
			return ancestry{}, false, fmt.Errorf("look for %s in %s: %w", name, s, err)
		}
	}
	return ancestry{}, false, nil
}

// readAncestry reads the ancestry of the history object described by
// info: from its metadata, or else (objects stored before walship
// recorded it) from its content.
func readAncestry(ctx context.Context, s storage.Storage, info storage.ObjectInfo, tli wal.TimeLineID) (ancestry, error) {
	var short *ancestry
	if v, ok := info.Metadata[MetaHistory]; ok {
		a, err := parseAncestry(v)
		if err == nil && wal.CheckHistory(tli, a.entries) == nil {
			if !a.truncated {
				return a, nil
			}
			short = &a
		}
	}
	entries, err := readHistory(ctx, s, info.Key, tli)
	if err != nil && short != nil {
		return *short, nil // Check says so if the newest entries do not tell
	}
	return ancestry{entries: entries}, err
}

// readHistory reads and parses the history object under key.
func readHistory(ctx context.Context, s storage.Storage, key string, tli wal.TimeLineID) ([]wal.HistoryEntry, error) {
	rc, info, err := s.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s to check whether timeline %d superseded this one: %w", key, tli, err)
	}
	defer rc.Close()
	vr, err := NewVerifyingReader(info, MarkReadErrors(rc))
	if err != nil {
		return nil, err
	}
	defer vr.Close()
	data, err := ReadSmall(vr, MaxHistorySize)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	entries, err := historyOf(data, tli)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, key, err)
	}
	return entries, nil
}

// historyOf parses the content of timeline tli's history file.
func historyOf(data []byte, tli wal.TimeLineID) ([]wal.HistoryEntry, error) {
	entries, err := wal.ParseHistory(data)
	if err != nil {
		return nil, err
	}
	if err := wal.CheckHistory(tli, entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// formatAncestry writes entries as the MetaHistory value, leaving out the
// oldest ones when it would exceed limit bytes (0: no limit).
func formatAncestry(entries []wal.HistoryEntry, limit int) string {
	parts := make([]string, 0, len(entries))
	n := 0
	truncated := false
	for i := len(entries) - 1; i >= 0; i-- {
		p := fmt.Sprintf("%d:%s", entries[i].TLI, entries[i].SwitchPoint)
		if limit > 0 && n+len(p)+2 > limit {
			truncated = true
			break
		}
		parts = append(parts, p)
		n += len(p) + 1
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	v := strings.Join(parts, ",")
	if truncated {
		v = "+" + v
	}
	return v
}

// parseAncestry reads what formatAncestry writes.
func parseAncestry(v string) (ancestry, error) {
	var a ancestry
	v, a.truncated = strings.CutPrefix(v, "+")
	if v == "" {
		return a, nil
	}
	for _, p := range strings.Split(v, ",") {
		tliText, lsnText, ok := strings.Cut(p, ":")
		tli, err := strconv.ParseUint(tliText, 10, 32)
		if !ok || err != nil || tli == 0 {
			return ancestry{}, fmt.Errorf("invalid ancestry entry %q", p)
		}
		lsn, err := wal.ParseLSN(lsnText)
		if err != nil {
			return ancestry{}, fmt.Errorf("invalid ancestry entry %q: %v", p, err)
		}
		if k := len(a.entries); k > 0 && wal.TimeLineID(tli) <= a.entries[k-1].TLI {
			return ancestry{}, fmt.Errorf("invalid ancestry %q: timelines must increase", v)
		}
		a.entries = append(a.entries, wal.HistoryEntry{TLI: wal.TimeLineID(tli), SwitchPoint: lsn})
	}
	return a, nil
}

// cacheFile is the cache file of timeline tli (ext ".history": its
// ancestry; ".absent": when it was last seen missing) in the archive of
// cluster sysID; "" without a cache directory.
func (f *Fence) cacheFile(sysID uint64, tli wal.TimeLineID, ext string) string {
	if f.o.CacheDir == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(f.o.Repo + "\x00" + strconv.FormatUint(sysID, 10)))
	return filepath.Join(f.o.CacheDir, "timelines-"+hex.EncodeToString(sum[:8]), fmt.Sprintf("%08X%s", uint32(tli), ext))
}

func loadAncestry(path string) (ancestry, bool) {
	if path == "" {
		return ancestry{}, false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return ancestry{}, false
	}
	a, err := parseAncestry(string(data))
	return a, err == nil && !a.truncated
}

func loadTime(path string) (time.Time, bool) {
	if path == "" {
		return time.Time{}, false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(data))
	return t, err == nil
}

// storeCache replaces the cache file at path with data; a failure only
// costs a request later.
func storeCache(path string, data []byte) {
	if path == "" {
		return
	}
	dir := filepath.Dir(path)
	if pgperm.Owner().MkdirAll(dir) != nil {
		return
	}
	tmp, err := pgperm.Owner().CreateTemp(dir, ".cache-*")
	if err != nil {
		return
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil && cerr == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
}

// noCodec is the codec of uncompressed objects.
func noCodec() codec.Codec {
	_, c := codec.Split("")
	return c
}

// checkFence refuses segment fn (open as f, its header checked) when a
// newer timeline in the archive left its timeline before the segment's
// end.
func checkFence(ctx context.Context, s storage.Storage, f *os.File, fn wal.FileName, o PushOptions) error {
	_, hdr, err := readPageHeader(f, fn)
	if err != nil {
		return err
	}
	segSize := int64(hdr.SegSize)
	start, err := fn.StartLSN(segSize)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	end := start + wal.LSN(segSize)
	fence := o.Fence
	if fence == nil {
		fence = NewFence(FenceOptions{CacheDir: o.CacheDir, Repo: o.Repo, Interval: DefaultFenceInterval})
	}
	err = fence.Check(ctx, s, hdr.SysID, fn.TLI, end)
	var sup *SupersededError
	switch {
	case errors.As(err, &sup):
		return fmt.Errorf("refusing %s, WAL of timeline %d up to %s: %w", fn, fn.TLI, end, err)
	case err != nil:
		return fmt.Errorf("%s: check whether a newer timeline superseded timeline %d: %w", fn, fn.TLI, err)
	}
	return nil
}

// historyMeta parses the history file fn (open as f) and returns its
// ancestry as the MetaHistory value.
func historyMeta(f *os.File, size int64, fn wal.FileName) (string, error) {
	data := make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil {
		return "", fmt.Errorf("read %s: %w", fn, err)
	}
	entries, err := historyOf(data, fn.TLI)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrInvalid, fn, err)
	}
	return formatAncestry(entries, maxAncestryMeta), nil
}

// historyElsewhere returns the key under which an older walship stored
// history file name compressed, or "".
func historyElsewhere(ctx context.Context, s storage.Storage, name string) (string, error) {
	for _, c := range codec.All() {
		if c.Ext() == "" {
			continue
		}
		key := WALKey(name, c)
		_, err := s.Stat(ctx, key)
		switch {
		case err == nil:
			return key, nil
		case errors.Is(err, ErrCorrupt) || !storage.IsPermanent(err):
			return "", fmt.Errorf("look for %s in %s: %w", key, s, err)
		}
	}
	return "", nil
}
