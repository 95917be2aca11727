package cleanup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Gap is a run of segments missing from the archive on a timeline.
type Gap struct {
	Timeline     wal.TimeLineID `json:"timeline"`
	FirstMissing string         `json:"first_missing"`
	LastMissing  string         `json:"last_missing"`
	StartLSN     wal.LSN        `json:"start_lsn"` // first byte missing
	EndLSN       wal.LSN        `json:"end_lsn"`   // first byte after the gap
}

// Report is what wal-verify found.
type Report struct {
	Timeline  wal.TimeLineID `json:"timeline"`   // the newest timeline
	From      string         `json:"from"`       // first segment checked on the newest timeline's path
	To        string         `json:"to"`         // newest archived segment
	Segments  int            `json:"segments"`   // segments checked, on all paths
	Paths     []Path         `json:"paths"`      // one per timeline with archived segments
	Gaps      []Gap          `json:"gaps"`       // missing runs, by timeline and WAL order
	StopsLost []string       `json:"stops_lost"` // backups whose last segment is missing
}

// Path is the history of one timeline that was checked: from the first
// segment checked to the timeline's newest archived segment, through its
// ancestors' segments up to each switch point.
type Path struct {
	Timeline wal.TimeLineID `json:"timeline"`
	From     string         `json:"from"`
	To       string         `json:"to"`
	Segments int            `json:"segments"`
}

// OK reports whether the archive has no gap.
func (r Report) OK() bool { return len(r.Gaps) == 0 && len(r.StopsLost) == 0 }

// Verify checks, from listings only (plus the small history files), that
// the archive holds every segment from the oldest backup's start (or the
// oldest archived segment) to the newest archived segment of each
// timeline along that timeline's history, and every backup's last
// segment.
func Verify(ctx context.Context, s storage.Storage) (Report, error) {
	id, err := archive.ReadIdentity(ctx, s)
	if errors.Is(err, storage.ErrNotExist) {
		return Report{}, fmt.Errorf("%s holds no archived WAL (no cluster.json)", s)
	}
	if err != nil {
		return Report{}, err
	}
	segSize := id.SegmentSize
	have := map[string]bool{}                   // segment names present
	newest := map[wal.TimeLineID]wal.FileName{} // each timeline's newest segment
	var top wal.FileName                        // the newest segment of all
	var oldest wal.SegNo = ^wal.SegNo(0)
	err = s.List(ctx, archive.WALPrefix, func(o storage.ObjectInfo) error {
		base, _ := codec.Split(strings.TrimPrefix(o.Key, archive.WALPrefix))
		fn, err := wal.ParseFileName(base)
		if err != nil || fn.Kind != wal.KindSegment {
			return nil // not a segment: ignored
		}
		seg, err := fn.SegNo(segSize)
		if err != nil {
			return nil
		}
		have[base] = true
		oldest = min(oldest, seg)
		if n, ok := newest[fn.TLI]; !ok || base[8:] > n.String()[8:] {
			newest[fn.TLI] = fn
		}
		if fn.TLI > top.TLI || fn.TLI == top.TLI && base[8:] > top.String()[8:] {
			top = fn
		}
		return nil
	})
	if err != nil {
		return Report{}, fmt.Errorf("list %s: %w", s, err)
	}
	if len(have) == 0 {
		return Report{}, fmt.Errorf("%s holds no archived WAL segment", s)
	}

	// Where checking starts: the oldest backup, else the oldest segment.
	backups, err := basebackup.List(ctx, s)
	if err != nil {
		return Report{}, err
	}
	start := oldest
	if len(backups) > 0 {
		start = wal.LSNToSegNo(backups[0].StartLSN, segSize)
	}

	r := Report{Timeline: top.TLI, To: top.String()}
	type missing struct {
		tli wal.TimeLineID
		seg wal.SegNo
	}
	checked := map[string]bool{}
	var lost []missing
	tlis := make([]wal.TimeLineID, 0, len(newest))
	for tli := range newest {
		tlis = append(tlis, tli)
	}
	sort.Slice(tlis, func(i, j int) bool { return tlis[i] < tlis[j] })
	for _, tli := range tlis {
		var history []wal.HistoryEntry
		if tli > 1 {
			if history, err = readHistory(ctx, s, tli); err != nil {
				return Report{}, err
			}
		}
		end, err := newest[tli].SegNo(segSize)
		if err != nil {
			return Report{}, err
		}
		p := Path{Timeline: tli, To: newest[tli].String()}
		for seg := start; seg <= end; seg++ {
			name := wal.SegmentFileName(timelineOf(history, tli, seg, segSize), seg, segSize)
			if p.From == "" {
				p.From = name
			}
			p.Segments++
			if checked[name] {
				continue
			}
			checked[name] = true
			if !have[name] {
				lost = append(lost, missing{timelineOf(history, tli, seg, segSize), seg})
			}
		}
		if p.Segments > 0 {
			r.Paths = append(r.Paths, p)
		}
		if tli == top.TLI {
			r.From = p.From
		}
	}
	r.Segments = len(checked)
	sort.Slice(lost, func(i, j int) bool {
		return lost[i].tli < lost[j].tli || lost[i].tli == lost[j].tli && lost[i].seg < lost[j].seg
	})
	for _, m := range lost {
		name := wal.SegmentFileName(m.tli, m.seg, segSize)
		lsn := wal.SegmentStartLSN(m.seg, segSize)
		if n := len(r.Gaps); n > 0 && r.Gaps[n-1].Timeline == m.tli && r.Gaps[n-1].EndLSN == lsn {
			r.Gaps[n-1].LastMissing, r.Gaps[n-1].EndLSN = name, lsn+wal.LSN(segSize)
			continue
		}
		r.Gaps = append(r.Gaps, Gap{Timeline: m.tli, FirstMissing: name, LastMissing: name, StartLSN: lsn, EndLSN: lsn + wal.LSN(segSize)})
	}
	for _, b := range backups {
		if !have[b.StopWAL] {
			r.StopsLost = append(r.StopsLost, b.Name+" ("+b.StopWAL+")")
		}
	}
	return r, nil
}

// timelineOf is the timeline whose file holds segment seg on the way to
// timeline newest: the segment holding a switch point is read from the
// newer timeline, as recovery does.
func timelineOf(history []wal.HistoryEntry, newest wal.TimeLineID, seg wal.SegNo, segSize int64) wal.TimeLineID {
	for _, h := range history {
		if seg < wal.LSNToSegNo(h.SwitchPoint, segSize) {
			return h.TLI
		}
	}
	return newest
}

func readHistory(ctx context.Context, s storage.Storage, tli wal.TimeLineID) ([]wal.HistoryEntry, error) {
	name := wal.HistoryFileName(tli)
	rc, info, err := archive.FindWAL(ctx, s, name, codec.All()[0])
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	defer rc.Close()
	vr, err := archive.NewVerifyingReader(info, archive.MarkReadErrors(rc))
	if err != nil {
		return nil, err
	}
	data, err := archive.ReadSmall(vr, archive.MaxHistorySize)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	h, err := wal.ParseHistory(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return h, nil
}
