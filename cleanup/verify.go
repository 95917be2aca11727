package cleanup

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	Timeline  wal.TimeLineID `json:"timeline"`   // the newest timeline, whose history is checked
	From      string         `json:"from"`       // first segment checked
	To        string         `json:"to"`         // newest archived segment
	Segments  int            `json:"segments"`   // segments checked
	Gaps      []Gap          `json:"gaps"`       // missing runs, in WAL order
	StopsLost []string       `json:"stops_lost"` // backups whose last segment is missing
}

// OK reports whether the archive has no gap.
func (r Report) OK() bool { return len(r.Gaps) == 0 && len(r.StopsLost) == 0 }

// Verify checks, from listings only (plus the small history files), that
// the archive holds every segment from the oldest backup's start (or the
// oldest archived segment) to the newest archived WAL along the history
// of the newest timeline, and every backup's last segment.
func Verify(ctx context.Context, s storage.Storage) (Report, error) {
	id, err := archive.ReadIdentity(ctx, s)
	if errors.Is(err, storage.ErrNotExist) {
		return Report{}, fmt.Errorf("%s holds no archived WAL (no cluster.json)", s)
	}
	if err != nil {
		return Report{}, err
	}
	segSize := id.SegmentSize
	have := map[string]bool{} // segment names present
	var newest wal.FileName
	err = s.List(ctx, archive.WALPrefix, func(o storage.ObjectInfo) error {
		base, _ := codec.Split(strings.TrimPrefix(o.Key, archive.WALPrefix))
		fn, err := wal.ParseFileName(base)
		if err != nil {
			return nil // not walship's: ignored
		}
		switch fn.Kind {
		case wal.KindSegment:
			have[base] = true
			if fn.TLI > newest.TLI || fn.TLI == newest.TLI && base[8:] > newest.String()[8:] {
				newest = fn
			}
		}
		return nil
	})
	if err != nil {
		return Report{}, fmt.Errorf("list %s: %w", s, err)
	}
	if len(have) == 0 {
		return Report{}, fmt.Errorf("%s holds no archived WAL segment", s)
	}
	// The newest timeline is that of the newest segment; a history file
	// of a timeline that has archived no segment yet changes nothing.
	var history []wal.HistoryEntry
	if newest.TLI > 1 {
		history, err = readHistory(ctx, s, newest.TLI)
		if err != nil {
			return Report{}, err
		}
	}
	end, err := newest.SegNo(segSize)
	if err != nil {
		return Report{}, err
	}

	// Where checking starts: the oldest backup, else the oldest segment.
	backups, err := basebackup.List(ctx, s)
	if err != nil {
		return Report{}, err
	}
	var start wal.SegNo
	if len(backups) > 0 {
		start = wal.LSNToSegNo(backups[0].StartLSN, segSize)
	} else {
		start = end
		for name := range have {
			fn, _ := wal.ParseFileName(name)
			if seg, err := fn.SegNo(segSize); err == nil && seg < start && onPath(history, newest.TLI, fn.TLI, seg, segSize) {
				start = seg
			}
		}
	}

	r := Report{Timeline: newest.TLI, To: newest.String()}
	for seg := start; seg <= end; seg++ {
		tli := timelineOf(history, newest.TLI, seg, segSize)
		name := wal.SegmentFileName(tli, seg, segSize)
		if r.From == "" {
			r.From = name
		}
		r.Segments++
		if have[name] {
			continue
		}
		lsn := wal.SegmentStartLSN(seg, segSize)
		if n := len(r.Gaps); n > 0 && r.Gaps[n-1].Timeline == tli && r.Gaps[n-1].EndLSN == lsn {
			r.Gaps[n-1].LastMissing, r.Gaps[n-1].EndLSN = name, lsn+wal.LSN(segSize)
			continue
		}
		r.Gaps = append(r.Gaps, Gap{Timeline: tli, FirstMissing: name, LastMissing: name, StartLSN: lsn, EndLSN: lsn + wal.LSN(segSize)})
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

func onPath(history []wal.HistoryEntry, newest, tli wal.TimeLineID, seg wal.SegNo, segSize int64) bool {
	return timelineOf(history, newest, seg, segSize) == tli
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
	data, err := io.ReadAll(io.LimitReader(vr, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	h, err := wal.ParseHistory(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return h, nil
}
