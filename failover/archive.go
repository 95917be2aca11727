package failover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// archiveView answers what the archive holds of the WAL of one cluster,
// by listings plus the few objects it must read. History files and record
// ends are cached: archived objects are never rewritten.
type archiveView struct {
	s       storage.Storage
	segSize int64
	codec   codec.Codec
	dataDir string // the standby's: its pg_wal may hold history files the archive lacks

	histories map[wal.TimeLineID][]wal.HistoryEntry
	ends      map[string]fileEnd // by object key
}

type fileEnd struct {
	end wal.LSN
	ok  bool
}

func newArchiveView(s storage.Storage, segSize int64, c codec.Codec, dataDir string) *archiveView {
	return &archiveView{s: s, segSize: segSize, codec: c, dataDir: dataDir,
		histories: map[wal.TimeLineID][]wal.HistoryEntry{1: nil}, ends: map[string]fileEnd{}}
}

// history returns the history of timeline tli from the archive, else from
// the standby's pg_wal; found is false when neither has it.
func (v *archiveView) history(ctx context.Context, tli wal.TimeLineID) (h []wal.HistoryEntry, found bool, err error) {
	if h, ok := v.histories[tli]; ok {
		return h, true, nil
	}
	name := wal.HistoryFileName(tli)
	data, err := v.readHistory(ctx, name)
	if errors.Is(err, storage.ErrNotExist) && v.dataDir != "" {
		data, err = os.ReadFile(filepath.Join(v.dataDir, "pg_wal", name))
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
	}
	if errors.Is(err, storage.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", name, err)
	}
	if h, err = wal.ParseHistory(data); err == nil {
		err = wal.CheckHistory(tli, h)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", name, err)
	}
	v.histories[tli] = h
	return h, true, nil
}

func (v *archiveView) readHistory(ctx context.Context, name string) ([]byte, error) {
	rc, info, err := archive.FindWAL(ctx, v.s, name, v.codec)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	vr, err := archive.NewVerifyingReader(info, archive.MarkReadErrors(rc))
	if err != nil {
		return nil, err
	}
	defer vr.Close()
	return archive.ReadSmall(vr, archive.MaxHistorySize)
}

// newestTimeline probes the archive for the history files of the
// timelines after tli, one by one as PostgreSQL does, and returns the
// last one found in an unbroken run (tli itself when there is none).
func (v *archiveView) newestTimeline(ctx context.Context, tli wal.TimeLineID) (wal.TimeLineID, error) {
	for {
		if _, ok := v.histories[tli+1]; ok {
			tli++
			continue
		}
		found, err := archive.HasWAL(ctx, v.s, wal.HistoryFileName(tli+1))
		if err != nil {
			return 0, fmt.Errorf("look for %s in %s: %w", wal.HistoryFileName(tli+1), v.s, err)
		}
		if !found {
			return tli, nil
		}
		tli++
	}
}

// lineage is the path of WAL that leads to a timeline: its history.
type lineage struct {
	tli  wal.TimeLineID
	hist []wal.HistoryEntry
}

// timelineOf is the timeline whose file holds segment seg on the way to
// l.tli: the segment holding a switch point is read from the newer
// timeline, as recovery does.
func (l lineage) timelineOf(seg wal.SegNo, segSize int64) wal.TimeLineID {
	for _, h := range l.hist {
		if seg < wal.LSNToSegNo(h.SwitchPoint, segSize) {
			return h.TLI
		}
	}
	return l.tli
}

// lineageEnd is what the archive holds on a lineage from a segment on.
type lineageEnd struct {
	Segment string  // the newest archived segment on the lineage ("" when none)
	End     wal.LSN // where the last complete record in the archive ends
	Missing string  // the first segment missing before Segment ("" when none)
}

// lineageEnd finds the newest segment the archive holds on lineage l from
// segment from on, and where the last complete WAL record in it ends.
func (v *archiveView) lineageEnd(ctx context.Context, l lineage, from wal.SegNo) (lineageEnd, error) {
	have := map[wal.SegNo]string{} // segment number → object key, on the lineage
	for _, t := range v.lineageTimelines(l, from) {
		segs, err := v.list(ctx, t, from)
		if err != nil {
			return lineageEnd{}, err
		}
		for seg, f := range segs {
			if f.segmentKey != "" && l.timelineOf(seg, v.segSize) == t {
				have[seg] = f.segmentKey
			}
		}
	}
	if len(have) == 0 {
		return lineageEnd{}, nil
	}
	newest := from
	for seg := range have {
		newest = max(newest, seg)
	}
	var res lineageEnd
	res.Segment = wal.SegmentFileName(l.timelineOf(newest, v.segSize), newest, v.segSize)
	for seg := from; seg < newest; seg++ {
		if have[seg] == "" {
			res.Missing = wal.SegmentFileName(l.timelineOf(seg, v.segSize), seg, v.segSize)
			break
		}
	}
	// The last record that ends in the archive: normally in the newest
	// segment, unless that one holds only the middle of a huge record.
	for seg := newest; seg >= from && have[seg] != ""; seg-- {
		e, err := v.recordEnd(ctx, have[seg], wal.SegmentStartLSN(seg, v.segSize))
		if err != nil {
			return lineageEnd{}, err
		}
		if e.ok {
			res.End = e.end
			return res, nil
		}
		if seg == 0 {
			break
		}
	}
	return res, nil
}

// lineageTimelines lists the timelines whose files hold l's segments from
// from on.
func (v *archiveView) lineageTimelines(l lineage, from wal.SegNo) []wal.TimeLineID {
	var out []wal.TimeLineID
	for _, h := range l.hist {
		if from < wal.LSNToSegNo(h.SwitchPoint, v.segSize) {
			out = append(out, h.TLI)
		}
	}
	return append(out, l.tli)
}

// files is what the archive holds for one segment number of a timeline.
type files struct {
	segmentKey string  // the complete segment
	partialKey string  // TTTTTTTTLLLLLLLLSSSSSSSS.partial
	snapshots  []int64 // wal-stream snapshots: bytes of the segment each holds
	snapKeys   []string
}

// list returns the WAL files of timeline tli from segment from on, one
// listing per 4 GB of WAL (the name's log part), up to the first such
// range that holds none.
func (v *archiveView) list(ctx context.Context, tli wal.TimeLineID, from wal.SegNo) (map[wal.SegNo]*files, error) {
	out := map[wal.SegNo]*files{}
	at := func(seg wal.SegNo) *files {
		if out[seg] == nil {
			out[seg] = &files{}
		}
		return out[seg]
	}
	perLog := wal.SegNo(0x100000000 / v.segSize)
	for log := from / perLog; ; log++ {
		prefix := wal.SegmentFileName(tli, log*perLog, v.segSize)[:16]
		n := 0
		err := v.s.List(ctx, archive.WALPrefix+prefix, func(o storage.ObjectInfo) error {
			base, _ := codec.Split(strings.TrimPrefix(o.Key, archive.WALPrefix))
			fn, err := wal.ParseFileName(base)
			if err != nil || fn.TLI != tli || fn.Kind != wal.KindSegment && fn.Kind != wal.KindPartial {
				return nil
			}
			seg, err := fn.SegNo(v.segSize)
			if err != nil || seg < from {
				return nil
			}
			n++
			if fn.Kind == wal.KindSegment {
				at(seg).segmentKey = o.Key
			} else {
				at(seg).partialKey = o.Key
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", v.s, err)
		}
		err = v.s.List(ctx, archive.PartialPrefix+prefix, func(o storage.ObjectInfo) error {
			seg, bytes, ok := parseSnapshotKey(o.Key, tli, v.segSize)
			if ok && seg >= from {
				n++
				f := at(seg)
				f.snapshots, f.snapKeys = append(f.snapshots, bytes), append(f.snapKeys, o.Key)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", v.s, err)
		}
		if n == 0 && log > from/perLog {
			return out, nil
		}
		if n == 0 {
			// Nothing in the first range: look one further, in case
			// from is at its very end.
			continue
		}
	}
}

// parseSnapshotKey reads partial/SEGMENT.BYTES[.ext], a wal-stream
// snapshot of the first BYTES (8 hex digits) of SEGMENT.
func parseSnapshotKey(key string, tli wal.TimeLineID, segSize int64) (wal.SegNo, int64, bool) {
	base, _ := codec.Split(strings.TrimPrefix(key, archive.PartialPrefix))
	name, hex, ok := strings.Cut(base, ".")
	if !ok || len(hex) != 8 {
		return 0, 0, false
	}
	n, err := strconv.ParseUint(hex, 16, 32)
	if err != nil {
		return 0, 0, false
	}
	fn, err := wal.ParseFileName(name)
	if err != nil || fn.Kind != wal.KindSegment || fn.TLI != tli {
		return 0, 0, false
	}
	seg, err := fn.SegNo(segSize)
	if err != nil {
		return 0, 0, false
	}
	return seg, int64(n), true
}

// recordEnd reads the archived object at key, a segment starting at
// start, and returns where its last complete record ends.
func (v *archiveView) recordEnd(ctx context.Context, key string, start wal.LSN) (fileEnd, error) {
	if e, ok := v.ends[key]; ok {
		return e, nil
	}
	rc, info, err := v.s.Get(ctx, key)
	if err != nil {
		return fileEnd{}, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	vr, err := archive.NewVerifyingReader(info, archive.MarkReadErrors(rc))
	if err != nil {
		return fileEnd{}, fmt.Errorf("read %s: %w", key, err)
	}
	defer vr.Close()
	end, ok, err := LastRecordEnd(vr, start, v.segSize)
	if err == nil {
		// Read to the end, so that the checksum is verified.
		_, err = io.Copy(io.Discard, vr)
	}
	if err != nil {
		return fileEnd{}, fmt.Errorf("read %s: %w", key, err)
	}
	e := fileEnd{end, ok}
	v.ends[key] = e
	return e, nil
}

// timelineEnd is what the archive holds of timeline tli from segment from
// on: complete segments, .partial segments and wal-stream snapshots.
type timelineEnd struct {
	End  wal.LSN // where the last complete record ends; 0 when nothing is archived
	File string  // the object it is in
}

// timelineEnd finds the newest WAL the archive holds of timeline tli (its
// own files only) from segment from on.
func (v *archiveView) timelineEnd(ctx context.Context, tli wal.TimeLineID, from wal.SegNo) (timelineEnd, error) {
	segs, err := v.list(ctx, tli, from)
	if err != nil {
		return timelineEnd{}, err
	}
	nums := make([]wal.SegNo, 0, len(segs))
	for seg := range segs {
		nums = append(nums, seg)
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] > nums[j] })
	for _, seg := range nums {
		f := segs[seg]
		keys := append([]string{f.segmentKey, f.partialKey}, f.snapKeys...)
		var best timelineEnd
		for _, key := range keys {
			if key == "" {
				continue
			}
			e, err := v.recordEnd(ctx, key, wal.SegmentStartLSN(seg, v.segSize))
			if err != nil {
				return timelineEnd{}, err
			}
			if e.ok && e.end > best.End {
				best = timelineEnd{End: e.end, File: strings.TrimPrefix(key, archive.WALPrefix)}
			}
		}
		if best.End != 0 {
			return best, nil
		}
	}
	return timelineEnd{}, nil
}
