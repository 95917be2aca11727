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

	metaKeys  []string // metadata records of deleted backups: removed first
	backupKey []string // the other objects of deleted backups and leftovers
	walKeys   []string
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
func (p *Plan) Objects() int { return len(p.metaKeys) + len(p.backupKey) + len(p.walKeys) }

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
			for _, key := range inv.Keys[d.Name] {
				if strings.HasSuffix(key, "/backup.json") {
					p.metaKeys = append(p.metaKeys, key)
				} else {
					p.backupKey = append(p.backupKey, key)
				}
			}
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
		p.backupKey = append(p.backupKey, in.Keys...)
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
func (p *Plan) Execute(ctx context.Context, s storage.Storage, log *slog.Logger) error {
	steps := []struct {
		what string
		keys []string
	}{
		{"backup metadata records", p.metaKeys},
		{"backup files", p.backupKey},
		{"WAL files", p.walKeys},
	}
	for _, st := range steps {
		if len(st.keys) == 0 {
			continue
		}
		start := time.Now()
		if err := storage.DeleteAll(ctx, s, st.keys, nil); err != nil {
			return fmt.Errorf("remove %s from %s: %w", st.what, s, err)
		}
		if log != nil {
			log.Info(fmt.Sprintf("removed %d %s", len(st.keys), st.what), "objects", len(st.keys), "took", time.Since(start).Round(time.Millisecond))
		}
	}
	return nil
}
