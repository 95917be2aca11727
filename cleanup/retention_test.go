package cleanup

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

const seg16 = 16 << 20

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// fakeArchive builds archives for retention tests.
type fakeArchive struct {
	t *testing.T
	s *mem.Storage
}

func newFakeArchive(t *testing.T) *fakeArchive {
	a := &fakeArchive{t: t, s: mem.New()}
	putChecked(t, a.s, "cluster.json", []byte(`{"system_id":"1","segment_size":16777216}`))
	return a
}

// wal stores segments first..last of timeline tli.
func (a *fakeArchive) wal(tli wal.TimeLineID, first, last int) {
	for n := first; n <= last; n++ {
		putChecked(a.t, a.s, "wal/"+wal.SegmentFileName(tli, wal.SegNo(n), seg16)+".zst", []byte("x"))
	}
}

// fork stores the history file of timeline tli, given as ancestor
// timeline/segment pairs where each ended.
func (a *fakeArchive) fork(tli wal.TimeLineID, ends ...[2]int) {
	var h strings.Builder
	for _, e := range ends {
		fmt.Fprintf(&h, "%d\t%s\tno recovery target specified\n", e[0], wal.SegmentStartLSN(wal.SegNo(e[1]), seg16)+0x60)
	}
	putChecked(a.t, a.s, "wal/"+wal.HistoryFileName(tli), []byte(h.String()))
}

func record(name string, tli wal.TimeLineID, startSeg int, finish time.Time) basebackup.Backup {
	start := wal.SegmentStartLSN(wal.SegNo(startSeg), seg16) + 0x28
	return basebackup.Backup{
		Name: name, Timeline: tli, StopTimeline: tli, StartLSN: start, StopLSN: start + 0x1000,
		StartWAL:    wal.SegmentFileName(tli, wal.SegNo(startSeg), seg16),
		StopWAL:     wal.SegmentFileName(tli, wal.SegNo(startSeg), seg16),
		StartTime:   finish.Add(-time.Minute),
		FinishTime:  finish,
		SegmentSize: seg16,
	}
}

// backup stores a completed backup starting in segment startSeg.
func (a *fakeArchive) backup(name string, tli wal.TimeLineID, startSeg int, finish time.Time) {
	b := record(name, tli, startSeg, finish)
	data, _ := json.Marshal(b)
	putChecked(a.t, a.s, "basebackups/"+name+"/base.tar.zst", []byte("tar"))
	putChecked(a.t, a.s, "basebackups/"+name+"/backup.json", data)
}

// started stores the start record of a backup that has not completed.
func (a *fakeArchive) started(name string, tli wal.TimeLineID, startSeg int, start time.Time) {
	b := record(name, tli, startSeg, start)
	b.StartTime = start
	data, _ := json.Marshal(b)
	putChecked(a.t, a.s, "basebackups/"+name+"/started.json", data)
}

func (a *fakeArchive) keys() []string {
	var keys []string
	a.s.List(context.Background(), "", func(o storage.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	})
	return keys
}

// walLeft lists the WAL names left on the archive, without extension.
func (a *fakeArchive) walLeft() []string {
	var names []string
	for _, k := range a.keys() {
		if name, ok := strings.CutPrefix(k, "wal/"); ok {
			names = append(names, strings.TrimSuffix(name, ".zst"))
		}
	}
	return names
}

func (a *fakeArchive) backupsLeft() []string {
	var names []string
	for _, k := range a.keys() {
		if rest, ok := strings.CutPrefix(k, "basebackups/"); ok {
			name, _, _ := strings.Cut(rest, "/")
			if len(names) == 0 || names[len(names)-1] != name {
				names = append(names, name)
			}
		}
	}
	return names
}

// apply plans pol, checks the plan changed nothing, and executes it.
func (a *fakeArchive) apply(pol Policy) *Plan {
	a.t.Helper()
	before := a.keys()
	p, err := PlanRetention(context.Background(), a.s, pol)
	if err != nil {
		a.t.Fatal(err)
	}
	if after := a.keys(); !slices.Equal(before, after) {
		a.t.Fatalf("planning changed the archive:\nbefore %v\nafter  %v", before, after)
	}
	if err := p.Execute(context.Background(), a.s, nil); err != nil {
		a.t.Fatal(err)
	}
	return p
}

func segNames(tli wal.TimeLineID, first, last int) []string {
	var names []string
	for n := first; n <= last; n++ {
		names = append(names, wal.SegmentFileName(tli, wal.SegNo(n), seg16))
	}
	return names
}

func wantSet(t *testing.T, what string, got []string, want ...[]string) {
	t.Helper()
	w := slices.Concat(want...)
	slices.Sort(w)
	g := slices.Clone(got)
	slices.Sort(g)
	if !slices.Equal(g, w) {
		t.Fatalf("%s:\n got %v\nwant %v", what, g, w)
	}
}

func TestRetainFull(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 10)
	// wal-stream snapshots go with their segment.
	putChecked(t, a.s, "partial/"+wal.SegmentFileName(1, 3, seg16)+".00001000.zst", []byte("x"))
	putChecked(t, a.s, "partial/"+wal.SegmentFileName(1, 11, seg16)+".00001000.zst", []byte("x"))
	a.backup("base_1", 1, 2, t0)
	a.backup("base_2", 1, 5, t0.Add(time.Hour))
	a.backup("base_3", 1, 8, t0.Add(2*time.Hour))
	p := a.apply(Policy{RetainFull: 2})
	if p.DeletedBackups() != 1 || !p.Backups[0].Delete {
		t.Fatalf("plan %+v, want base_1 deleted", p.Backups)
	}
	wantSet(t, "backups", a.backupsLeft(), []string{"base_2", "base_3"})
	wantSet(t, "WAL", a.walLeft(), segNames(1, 5, 10))
	var snaps []string
	for _, k := range a.keys() {
		if strings.HasPrefix(k, "partial/") {
			snaps = append(snaps, k)
		}
	}
	wantSet(t, "snapshots", snaps, []string{"partial/" + wal.SegmentFileName(1, 11, seg16) + ".00001000.zst"})
}

// TestRetentionAcrossPromotion: the newest backup is on timeline 2; WAL
// of timeline 1 before it goes, the history file stays, and timeline 2's
// WAL from the backup on stays.
func TestRetentionAcrossPromotion(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 9) // 6 holds the switch; 7–9 written by the old primary after it
	a.fork(2, [2]int{1, 6})
	a.wal(2, 6, 12)
	a.backup("base_1", 1, 2, t0)
	a.backup("base_2", 2, 8, t0.Add(time.Hour))

	// Both kept: timeline 2 is reachable from base_1, so only what
	// precedes base_1 goes.
	a.apply(Policy{RetainFull: 2})
	wantSet(t, "WAL with both backups", a.walLeft(), segNames(1, 2, 9), segNames(2, 6, 12), []string{"00000002.history"})

	p := a.apply(Policy{RetainFull: 1})
	wantSet(t, "backups", a.backupsLeft(), []string{"base_2"})
	// Timeline 1 is not on base_2's way: cut at base_2's start like any
	// timeline no kept backup reaches.
	wantSet(t, "WAL", a.walLeft(), segNames(1, 8, 9), segNames(2, 8, 12), []string{"00000002.history"})
	if len(p.WAL) != 2 || p.WAL[1].First != segNames(2, 6, 6)[0] || p.WAL[1].Files != 2 {
		t.Fatalf("WAL plan %+v", p.WAL)
	}
}

// TestNewestIsByTime: a newer timeline does not make an older backup the
// newest. After a failed experiment on timeline 2, the cluster went on on
// timeline 1; its backup is the newest and keeps timeline 1's WAL.
func TestNewestIsByTime(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 12)
	a.fork(2, [2]int{1, 3})
	a.wal(2, 3, 5)
	a.backup("base_1", 2, 4, t0)
	a.backup("base_2", 1, 9, t0.Add(time.Hour))
	a.apply(Policy{RetainFull: 1})
	wantSet(t, "backups", a.backupsLeft(), []string{"base_2"})
	wantSet(t, "WAL", a.walLeft(), segNames(1, 9, 12), []string{"00000002.history"})
}

// TestReachDescendants: a kept backup on timeline 1 keeps the WAL of
// timeline 3, which forked (through 2) after the backup started, from its
// fork on; timeline 2's own branch is kept as well.
func TestReachDescendants(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 6)
	a.fork(2, [2]int{1, 6})
	a.wal(2, 6, 9)
	a.fork(3, [2]int{1, 6}, [2]int{2, 9})
	a.wal(3, 9, 11)
	a.backup("base_1", 1, 1, t0)
	a.backup("base_2", 1, 4, t0.Add(time.Hour))
	a.backup("base_3", 3, 10, t0.Add(2*time.Hour))
	a.apply(Policy{RetainFull: 2})
	wantSet(t, "WAL", a.walLeft(), segNames(1, 4, 6), segNames(2, 6, 9), segNames(3, 9, 11),
		[]string{"00000002.history", "00000003.history"})
}

func TestKeepRules(t *testing.T) {
	build := func() *fakeArchive {
		a := newFakeArchive(t)
		a.wal(1, 1, 10)
		for i := 1; i <= 4; i++ {
			a.backup(fmt.Sprintf("base_%d", i), 1, 2*i, t0.Add(time.Duration(i)*time.Hour))
		}
		return a
	}
	for _, tc := range []struct {
		what string
		pol  Policy
		mark string
		left []string
	}{
		{"before time keeps the backup recovery starts from", Policy{Before: t0.Add(150 * time.Minute)}, "", []string{"base_2", "base_3", "base_4"}},
		{"before a time after all keeps the newest", Policy{Before: t0.Add(100 * time.Hour)}, "", []string{"base_4"}},
		{"before a name", Policy{BeforeName: "base_3"}, "", []string{"base_3", "base_4"}},
		{"every rule must agree", Policy{RetainFull: 1, BeforeName: "base_3"}, "", []string{"base_3", "base_4"}},
		{"keep", Policy{RetainFull: 1, Keep: []string{"base_2"}}, "", []string{"base_2", "base_4"}},
		{"permanent", Policy{RetainFull: 1}, "base_1", []string{"base_1", "base_4"}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			a := build()
			if tc.mark != "" {
				if err := basebackup.MarkPermanent(context.Background(), a.s, tc.mark, true); err != nil {
					t.Fatal(err)
				}
			}
			a.apply(tc.pol)
			wantSet(t, "backups", a.backupsLeft(), tc.left)
			// WAL from the oldest backup left.
			var first int
			fmt.Sscanf(strings.TrimPrefix(tc.left[0], "base_"), "%d", &first)
			wantSet(t, "WAL", a.walLeft(), segNames(1, 2*first, 10))
		})
	}
}

func TestPolicyErrors(t *testing.T) {
	a := newFakeArchive(t)
	a.backup("base_1", 1, 2, t0)
	for _, pol := range []Policy{{}, {RetainFull: -1}, {RetainFull: 1, Keep: []string{"base_9"}}, {BeforeName: "base_9"}} {
		if _, err := PlanRetention(context.Background(), a.s, pol); err == nil {
			t.Errorf("policy %+v accepted", pol)
		}
	}
}

// TestRunningBackup: a backup that has stored its start record but not
// its metadata keeps the WAL it needs; once it is older than StaleAfter
// its objects go as leftovers.
func TestRunningBackup(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 10)
	a.backup("base_1", 1, 2, t0)
	a.backup("base_3", 1, 8, t0.Add(2*time.Hour))
	a.started("base_2", 1, 5, t0.Add(time.Hour))

	p := a.apply(Policy{RetainFull: 1, Now: t0.Add(3 * time.Hour)})
	if !slices.Equal(p.Running, []string{"base_2"}) {
		t.Fatalf("running %v, want base_2", p.Running)
	}
	wantSet(t, "backups", a.backupsLeft(), []string{"base_2", "base_3"})
	wantSet(t, "WAL while base_2 may run", a.walLeft(), segNames(1, 5, 10))

	p = a.apply(Policy{RetainFull: 1, Now: time.Now().Add(StaleAfter + time.Hour)})
	if !slices.Equal(p.Leftovers, []string{"base_2"}) {
		t.Fatalf("leftovers %v, want base_2", p.Leftovers)
	}
	wantSet(t, "backups", a.backupsLeft(), []string{"base_3"})
	wantSet(t, "WAL", a.walLeft(), segNames(1, 8, 10))
}

// TestNoBackups: without backups, retention leaves WAL alone.
func TestNoBackups(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 3)
	p := a.apply(Policy{RetainFull: 1})
	if p.Objects() != 0 || len(a.walLeft()) != 3 {
		t.Fatalf("plan %+v removed something", p)
	}
}
