package cleanup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Retention rules, as backup-delete applies them:
//
//   - RetainFull N keeps the newest N completed backups (by start time,
//     permanent ones counted).
//   - Before TIME deletes the backups that are not needed to recover to
//     TIME or any later moment: those that finished before TIME, except
//     the newest of them, which a recovery to TIME starts from.
//   - BeforeName deletes the backups that started before the named one.
//   - With several rules, a backup goes only when every rule lets it go.
//   - Whatever the rules say, the newest backup, permanent backups and
//     those named in Keep stay.
//
// WAL goes per timeline: on timeline T, the segments, .partial and
// .backup files (and wal-stream's snapshots, partial/) before the start of the oldest retained backup whose
// recovery can reach T (T is its own timeline, or T forked from it after
// the backup started, as T's history file says) — and on a timeline no
// retained backup reaches, those before the oldest retained backup's
// start on any timeline. Timeline history files are never removed. So a
// promotion, which starts a timeline whose name sorts after everything
// before it, cannot make retention remove what the newest backups need.
//
// A backup-push still running has stored its start record but not its
// metadata: its WAL is kept like a retained backup's. Objects of a
// backup without metadata (interrupted, or its deletion was) are removed
// once it started more than StaleAfter ago.

// StaleAfter is how long after its start a backup without metadata
// record is taken for still running: until then retention keeps its
// objects and the WAL it needs.
const StaleAfter = 7 * 24 * time.Hour

// Policy is what backup-delete keeps.
type Policy struct {
	RetainFull int       // keep the newest N backups; 0: no such rule
	Before     time.Time // keep what recovery to this time or later needs; zero: no such rule
	BeforeName string    // delete backups older than this one; "": no such rule
	Keep       []string  // keep these backups whatever the rules say
	Now        time.Time // the current time, for StaleAfter; zero: time.Now()
}

// ErrNoRule reports a Policy that selects nothing to delete by.
var ErrNoRule = errors.New("no retention rule")

// Decision is what retention does with one completed backup.
type Decision struct {
	Name       string         `json:"name"`
	Timeline   wal.TimeLineID `json:"timeline"`
	StartWAL   string         `json:"start_wal"`
	FinishTime time.Time      `json:"finish_time"`
	StoredSize int64          `json:"stored_size"`
	Delete     bool           `json:"delete"`
	Reason     string         `json:"reason"`
}

// WALRange summarises the WAL files removed from one timeline.
type WALRange struct {
	Timeline wal.TimeLineID `json:"timeline"`
	First    string         `json:"first"` // first file removed
	Last     string         `json:"last"`  // last file removed
	Files    int            `json:"files"`
	Bytes    int64          `json:"bytes"`     // stored bytes
	KeepFrom string         `json:"keep_from"` // the first segment kept on this timeline
}

// Plan is what one retention run removes.
type Plan struct {
	Backups   []Decision `json:"backups"`   // every completed backup, oldest first
	Leftovers []string   `json:"leftovers"` // backups without metadata whose objects go
	Running   []string   `json:"running"`   // backups without metadata taken for running
	WAL       []WALRange `json:"wal"`
	Notes     []string   `json:"notes"` // why less is removed than the rules allow

	doomed    []doomedBackup // the completed backups removed, oldest first
	leftovers []string       // the objects of leftovers
	walKeys   []string
}

// doomedBackup is a completed backup the plan removes.
type doomedBackup struct {
	name  string
	meta  string   // its metadata record: removed first
	files []string // its other objects
}

// DeletedBackups counts the backups the plan removes.
func (p *Plan) DeletedBackups() int {
	n := 0
	for _, d := range p.Backups {
		if d.Delete {
			n++
		}
	}
	return n
}

// WALFiles counts the WAL files the plan removes.
func (p *Plan) WALFiles() int { return len(p.walKeys) }

// Objects counts every object the plan removes.
func (p *Plan) Objects() int {
	n := len(p.leftovers) + len(p.walKeys)
	for _, d := range p.doomed {
		n += 1 + len(d.files)
	}
	return n
}

// PlanRetention decides, from listings and the small metadata and history
// records, what pol removes from s. It changes nothing.
func PlanRetention(ctx context.Context, s storage.Storage, pol Policy) (*Plan, error) {
	if pol.RetainFull < 0 {
		return nil, fmt.Errorf("--retain-full %d: give the number of backups to keep, 1 or more", pol.RetainFull)
	}
	if pol.RetainFull == 0 && pol.Before.IsZero() && pol.BeforeName == "" {
		return nil, fmt.Errorf("%w: give --retain-full N and/or --before TIME|NAME", ErrNoRule)
	}
	if pol.Now.IsZero() {
		pol.Now = time.Now()
	}
	inv, err := basebackup.Scan(ctx, s)
	if err != nil {
		return nil, err
	}
	p := &Plan{}
	if err := p.decide(inv.Backups, pol); err != nil {
		return nil, err
	}

	// The WAL to keep is measured from the retained backups and from
	// those still running.
	var needs []basebackup.Backup
	for i, d := range p.Backups {
		if !d.Delete {
			needs = append(needs, inv.Backups[i])
		} else {
			db := doomedBackup{name: d.Name}
			for _, key := range inv.Keys[d.Name] {
				if strings.HasSuffix(key, "/backup.json") {
					db.meta = key
				} else {
					db.files = append(db.files, key)
				}
			}
			p.doomed = append(p.doomed, db)
		}
	}
	for _, in := range inv.Incomplete {
		if mayBeRunning(in, pol.Now) {
			p.Running = append(p.Running, in.Name)
			if in.Started != nil {
				needs = append(needs, *in.Started)
			}
			continue
		}
		p.Leftovers = append(p.Leftovers, in.Name)
		p.leftovers = append(p.leftovers, in.Keys...)
	}
	if len(needs) == 0 {
		p.Notes = append(p.Notes, "the archive holds no backup to keep WAL for: WAL is left alone")
		return p, nil
	}
	if err := p.planWAL(ctx, s, needs); err != nil {
		return nil, err
	}
	return p, nil
}

// mayBeRunning reports whether a backup without metadata record may
// still be running at now: it started (by its start record, else its
// name) or last stored an object less than StaleAfter ago.
func mayBeRunning(in basebackup.Incomplete, now time.Time) bool {
	started, ok := basebackup.NameTime(in.Name)
	if in.Started != nil {
		started, ok = in.Started.StartTime, true
	}
	return ok && now.Sub(started) < StaleAfter || now.Sub(in.Newest) < StaleAfter
}

// decide applies pol to backups (oldest first).
func (p *Plan) decide(backups []basebackup.Backup, pol Policy) error {
	keep := map[string]bool{}
	for _, name := range pol.Keep {
		keep[name] = true
	}
	found := map[string]bool{}
	beforeIdx := -1 // backups before this index may go by the name rule
	for i, b := range backups {
		found[b.Name] = true
		if b.Name == pol.BeforeName {
			beforeIdx = i
		}
	}
	for name := range keep {
		if !found[name] {
			return fmt.Errorf("%w: --keep %s (see walship backup-list)", basebackup.ErrNotFound, name)
		}
	}
	if pol.BeforeName != "" && beforeIdx < 0 {
		return fmt.Errorf("%w: --before %s (see walship backup-list)", basebackup.ErrNotFound, pol.BeforeName)
	}
	// For a time, the newest backup finished by then is kept: recovery to
	// that time starts from it.
	timeIdx := -1
	if !pol.Before.IsZero() {
		for i, b := range backups {
			if !b.FinishTime.After(pol.Before) {
				timeIdx = i
			}
		}
	}
	for i, b := range backups {
		d := Decision{Name: b.Name, Timeline: b.Timeline, StartWAL: b.StartWAL, FinishTime: b.FinishTime, StoredSize: b.StoredSize, Delete: true}
		var reasons []string
		if pol.RetainFull > 0 {
			if i >= len(backups)-pol.RetainFull {
				d.Delete, d.Reason = false, fmt.Sprintf("one of the newest %d", pol.RetainFull)
			} else {
				reasons = append(reasons, fmt.Sprintf("older than the newest %d", pol.RetainFull))
			}
		}
		if !pol.Before.IsZero() {
			switch {
			case i == timeIdx:
				d.Delete, d.Reason = false, "recovery to "+pol.Before.Format(time.RFC3339)+" starts from it"
			case i > timeIdx:
				d.Delete, d.Reason = false, "needed for recovery to "+pol.Before.Format(time.RFC3339)+" or later"
			default:
				reasons = append(reasons, "not needed to recover to "+pol.Before.Format(time.RFC3339)+" or later")
			}
		}
		if pol.BeforeName != "" {
			if i >= beforeIdx {
				d.Delete, d.Reason = false, "not older than "+pol.BeforeName
			} else {
				reasons = append(reasons, "older than "+pol.BeforeName)
			}
		}
		switch {
		case !d.Delete:
		case i == len(backups)-1:
			d.Delete, d.Reason = false, "the newest backup is always kept"
		case b.Permanent:
			d.Delete, d.Reason = false, "permanent (walship backup-mark)"
		case keep[b.Name]:
			d.Delete, d.Reason = false, "named by --keep"
		default:
			d.Reason = strings.Join(reasons, ", ")
		}
		p.Backups = append(p.Backups, d)
	}
	return nil
}

// walFile is an archived WAL object retention may remove.
type walFile struct {
	key  string
	name string
	tli  wal.TimeLineID
	seg  wal.SegNo
	size int64
}

// planWAL picks the WAL files none of needs (retained or running
// backups) can use.
func (p *Plan) planWAL(ctx context.Context, s storage.Storage, needs []basebackup.Backup) error {
	segSize := needs[0].SegmentSize
	if id, err := archive.ReadIdentity(ctx, s); err == nil {
		segSize = id.SegmentSize
	} else if !errors.Is(err, storage.ErrNotExist) {
		return err
	}
	if err := wal.CheckSegmentSize(segSize); err != nil {
		return fmt.Errorf("%w: WAL segment size of %s: %v", archive.ErrCorrupt, s, err)
	}
	var files []walFile
	timelines := map[wal.TimeLineID]bool{} // timelines with a history file
	err := s.List(ctx, archive.WALPrefix, func(o storage.ObjectInfo) error {
		base, _ := codec.Split(strings.TrimPrefix(o.Key, archive.WALPrefix))
		fn, err := wal.ParseFileName(base)
		if err != nil {
			return nil // not walship's: left alone
		}
		if fn.Kind == wal.KindHistory {
			timelines[fn.TLI] = true
			return nil
		}
		seg, err := fn.SegNo(segSize)
		if err != nil {
			return nil
		}
		files = append(files, walFile{key: o.Key, name: base, tli: fn.TLI, seg: seg, size: o.Size})
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", s, err)
	}
	// wal-stream's snapshots of segments (partial/<segment>.<bytes>)
	// go with their segment.
	err = s.List(ctx, archive.PartialPrefix, func(o storage.ObjectInfo) error {
		seg, _, _ := strings.Cut(strings.TrimPrefix(o.Key, archive.PartialPrefix), ".")
		fn, err := wal.ParseFileName(seg)
		if err != nil || fn.Kind != wal.KindSegment {
			return nil
		}
		n, err := fn.SegNo(segSize)
		if err != nil {
			return nil
		}
		files = append(files, walFile{key: o.Key, name: strings.TrimPrefix(o.Key, archive.PartialPrefix), tli: fn.TLI, seg: n, size: o.Size})
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", s, err)
	}

	// The oldest segment any kept backup starts in: the cut on timelines
	// no kept backup reaches (or whose history file is missing).
	oldest := wal.LSNToSegNo(needs[0].StartLSN, segSize)
	for _, b := range needs {
		oldest = min(oldest, wal.LSNToSegNo(b.StartLSN, segSize))
	}
	cut := map[wal.TimeLineID]wal.SegNo{}
	cutFor := func(tli wal.TimeLineID) (wal.SegNo, error) {
		if c, ok := cut[tli]; ok {
			return c, nil
		}
		var history []wal.HistoryEntry
		if tli > 1 && timelines[tli] {
			h, err := readHistory(ctx, s, tli)
			if err != nil {
				return 0, err
			}
			history = h
		}
		c, reached := oldest, false
		for _, b := range needs {
			if reaches(b, tli, history) {
				start := wal.LSNToSegNo(b.StartLSN, segSize)
				if !reached || start < c {
					c, reached = start, true
				}
			}
		}
		if tli > 1 && !timelines[tli] {
			c = oldest
			p.Notes = append(p.Notes, fmt.Sprintf("timeline %d has no history file in the archive: its WAL is cut only before %s", tli, wal.SegmentFileName(tli, oldest, segSize)))
		}
		cut[tli] = c
		return c, nil
	}

	ranges := map[wal.TimeLineID]*WALRange{}
	for _, f := range files {
		c, err := cutFor(f.tli)
		if err != nil {
			return err
		}
		if f.seg >= c {
			continue
		}
		p.walKeys = append(p.walKeys, f.key)
		r := ranges[f.tli]
		if r == nil {
			r = &WALRange{Timeline: f.tli, First: f.name, Last: f.name, KeepFrom: wal.SegmentFileName(f.tli, c, segSize)}
			ranges[f.tli] = r
		}
		r.First, r.Last = min(r.First, f.name), max(r.Last, f.name)
		r.Files++
		r.Bytes += f.size
	}
	for _, r := range ranges {
		p.WAL = append(p.WAL, *r)
	}
	sort.Slice(p.WAL, func(i, j int) bool { return p.WAL[i].Timeline < p.WAL[j].Timeline })
	sort.Strings(p.walKeys)
	return nil
}

// reaches reports whether recovery from b can run into timeline tli,
// whose history (ancestors, oldest first) is given: tli is b's timeline,
// or it branched off b's timeline after b started.
func reaches(b basebackup.Backup, tli wal.TimeLineID, history []wal.HistoryEntry) bool {
	if tli == b.Timeline {
		return true
	}
	for _, h := range history {
		if h.TLI == b.Timeline {
			return h.SwitchPoint > b.StartLSN
		}
	}
	return false
}

// Execute removes what p lists: first the metadata records of the deleted
// backups, so that each disappears from backup-list at once and an
// interruption leaves no listed backup without its files; then their
// other objects and the leftovers; then the WAL. Deletes go in batches
// where the storage supports them.
//
// When the storage refuses deletes because of retention (S3 Object Lock),
// the archive stays consistent and the error, a *RefusedError, says what
// stays until when: a backup whose metadata record is refused stays
// listed with all its files, and then no WAL is removed (the plan counted
// on that backup going); files refused after their backup's record went
// are removed as leftovers by a later run; WAL files refused stay, with
// the rest of the WAL removed.
func (p *Plan) Execute(ctx context.Context, s storage.Storage, log *slog.Logger) error {
	var metas, files []string
	for _, d := range p.doomed {
		if d.meta != "" {
			metas = append(metas, d.meta)
		}
		files = append(files, d.files...)
	}
	files = append(files, p.leftovers...)

	if len(metas) > 0 {
		start := time.Now()
		refused, err := deleteRetained(ctx, s, metas)
		if err != nil || len(refused) > 0 {
			return p.metadataRefused(ctx, s, log, refused, err)
		}
		if log != nil {
			log.Info(fmt.Sprintf("removed %d backup metadata records", len(metas)), "objects", len(metas), "took", time.Since(start).Round(time.Millisecond))
		}
	}
	if err := deleteStep(ctx, s, log, "backup files", files); err != nil {
		if _, re, ok := refusal(err); ok {
			var de *storage.DeleteError
			n := 1
			if errors.As(err, &de) {
				n = len(de.Failed)
			}
			return &RefusedError{err: err, msg: fmt.Sprintf("%d objects of the deleted backups are %s: the backups are no longer listed, "+
				"and a later backup-delete removes what is left of them %s; no WAL was removed", n, re, afterRetention(re))}
		}
		return fmt.Errorf("remove backup files from %s: %w", s, err)
	}
	if len(p.walKeys) == 0 {
		return nil
	}
	start := time.Now()
	refused, err := deleteRetained(ctx, s, p.walKeys)
	if err != nil {
		return fmt.Errorf("remove WAL files from %s: %w", s, err)
	}
	removed := len(p.walKeys) - len(refused)
	if log != nil {
		log.Info(fmt.Sprintf("removed %d WAL files", removed), "objects", removed, "took", time.Since(start).Round(time.Millisecond))
	}
	if len(refused) > 0 {
		what, re := walRefused(refused)
		return &RefusedError{err: &storage.DeleteError{Failed: refused}, msg: fmt.Sprintf("deleted %d backup(s) and %d of %d WAL files; %s; run backup-delete again %s",
			len(p.doomed), removed, len(p.walKeys), what, afterRetention(re))}
	}
	return nil
}

// deleteStep removes keys, logging how many and how long it took.
func deleteStep(ctx context.Context, s storage.Storage, log *slog.Logger, what string, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	start := time.Now()
	if err := storage.DeleteAll(ctx, s, keys, nil); err != nil {
		return err
	}
	if log != nil {
		log.Info(fmt.Sprintf("removed %d %s", len(keys), what), "objects", len(keys), "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// metadataRefused handles metadata records that could not be removed:
// refused because of retention, or err. The backups whose record is still
// there stay listed and keep their files; the files of those whose record
// went are removed, since nothing lists them any more. No WAL is removed,
// as the plan assumed every deleted backup gone: the next run plans again
// from what is listed.
func (p *Plan) metadataRefused(ctx context.Context, s storage.Storage, log *slog.Logger, refused []storage.KeyError, err error) error {
	stays := map[string]bool{}
	for _, f := range refused {
		stays[f.Key] = true
	}
	var kept, gone []doomedBackup
	for _, d := range p.doomed {
		switch {
		case d.meta == "":
			gone = append(gone, d)
		case stays[d.meta]:
			kept = append(kept, d)
		case err != nil:
			// Stopped by another failure: whether the record went is
			// not known without a look.
			if _, serr := s.Stat(ctx, d.meta); errors.Is(serr, storage.ErrNotExist) {
				gone = append(gone, d)
			} else {
				kept = append(kept, d)
			}
		default:
			gone = append(gone, d)
		}
	}
	var files []string
	for _, d := range gone {
		files = append(files, d.files...)
	}
	files = append(files, p.leftovers...)
	var tail string
	switch ferr := deleteStep(ctx, s, log, "backup files", files); {
	case ferr != nil:
		tail = fmt.Sprintf("; removing the files of the %d backup(s) that went failed too (a later run removes them): %v", len(gone), ferr)
	case len(gone) > 0:
		tail = fmt.Sprintf("; %d other backup(s) deleted", len(gone))
	}
	if err != nil {
		return fmt.Errorf("remove backup metadata records from %s: %w; no WAL was removed%s", s, err, tail)
	}
	rerr := &storage.DeleteError{Failed: refused}
	key, re, _ := refusal(rerr)
	named := kept[0]
	for _, d := range kept {
		if d.meta == key {
			named = d
		}
	}
	msg := fmt.Sprintf("backup %s: %d objects are %s; delete %s", named.name, 1+len(named.files), re, afterRetention(re))
	if len(kept) > 1 {
		msg += fmt.Sprintf(" (%d backups in all could not be deleted)", len(kept))
	}
	return &RefusedError{err: rerr, msg: msg + "; no WAL was removed" + tail}
}
