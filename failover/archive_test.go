package failover

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// testArchive holds timeline 1 up to segment 5 with segment 4 missing and
// a .partial of segment 6, and timeline 2, which branched off in segment
// 3, with its segments 3 and 4.
func testArchive(t *testing.T) (*archiveView, *walStream, wal.LSN) {
	t.Helper()
	rng := rand.New(rand.NewSource(4))
	w := &walStream{}
	for w.pos < 6*testSegSize+testSegSize/2 {
		w.record(rng, int64(24+rng.Intn(5000)), false)
	}
	zstd, err := codec.ByName("zstd")
	if err != nil {
		t.Fatal(err)
	}
	s := mem.New()
	dir := t.TempDir()
	push := func(name string, data []byte) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := archive.Push(context.Background(), s, path, archive.PushOptions{Codec: zstd, Repo: "mem://test"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, seg := range []int64{1, 2, 3, 5} {
		push(wal.SegmentFileName(1, wal.SegNo(seg), testSegSize), w.segment(seg))
	}
	partial := append([]byte(nil), w.segment(6)...)
	clear(partial[testSegSize/3:]) // what the old primary wrote of segment 6
	push(wal.SegmentFileName(1, 6, testSegSize)+".partial", partial)
	fork := wal.LSN(3*testSegSize + testSegSize/2)
	push(wal.HistoryFileName(2), []byte("1\t"+fork.String()+"\tno recovery target specified\n"))
	for _, seg := range []int64{3, 4} {
		push(wal.SegmentFileName(2, wal.SegNo(seg), testSegSize), w.segment(seg))
	}
	return newArchiveView(s, testSegSize, zstd, ""), w, fork
}

func TestArchiveTarget(t *testing.T) {
	ctx := context.Background()
	view, w, fork := testArchive(t)
	endOf := func(seg int64) wal.LSN {
		end, ok := lastEnd(t, w.segment(seg), seg)
		if !ok {
			t.Fatalf("no record ends in segment %d", seg)
		}
		return end
	}

	// A standby on timeline 1 before the fork follows timeline 2: its
	// segment 4 is the newest on the way, timeline 1's segment 5 is not.
	st := standbyState{InRecovery: true, Replay: wal.LSN(testSegSize + 100), CheckpointTLI: 1}
	got, err := archiveTarget(ctx, view, st)
	if err != nil {
		t.Fatal(err)
	}
	want := lineageEnd{Segment: wal.SegmentFileName(2, 4, testSegSize), End: endOf(4)}
	if got.Lineage.tli != 2 || got.Archive != want {
		t.Fatalf("target: timeline %d %+v, want timeline 2 %+v", got.Lineage.tli, got.Archive, want)
	}
	if gap := remaining(st, got); gap == "" {
		t.Fatal("a standby far behind has nothing left to replay")
	}
	st.Replay = want.End
	if gap := remaining(st, got); gap != "" {
		t.Fatalf("a standby at the archive's end still lacks: %s", gap)
	}
	st.Received = want.End + 100
	if gap := remaining(st, got); gap == "" {
		t.Fatal("WAL received by streaming but not replayed went unnoticed")
	}

	// Timeline 1 alone: its segment 4 is missing.
	end, err := view.lineageEnd(ctx, lineage{tli: 1}, 1)
	if err != nil {
		t.Fatal(err)
	}
	want = lineageEnd{Segment: wal.SegmentFileName(1, 5, testSegSize), End: endOf(5), Missing: wal.SegmentFileName(1, 4, testSegSize)}
	if end != want {
		t.Fatalf("timeline 1: %+v, want %+v", end, want)
	}
	gap := remaining(standbyState{Replay: endOf(3)}, plannedTarget{Lineage: lineage{tli: 1}, Archive: end})
	if !bytes.Contains([]byte(gap), []byte(want.Missing+" is missing")) {
		t.Fatalf("the gap is not named: %s", gap)
	}

	// What timeline 1 holds beyond the fork: the .partial of segment 6
	// goes furthest.
	te, err := view.timelineEnd(ctx, 1, wal.LSNToSegNo(fork, testSegSize))
	if err != nil {
		t.Fatal(err)
	}
	partialEnd, ok := lastEnd(t, w.segment(6)[:testSegSize/3], 6)
	if !ok || te.End != partialEnd || te.File != wal.SegmentFileName(1, 6, testSegSize)+".partial.zst" {
		t.Fatalf("timeline 1 beyond the fork: %+v, want the .partial, ending at %s", te, partialEnd)
	}
	if te, err := view.timelineEnd(ctx, 2, 5); err != nil || te.End != 0 {
		t.Fatalf("timeline 2 after segment 4: %+v %v, want nothing", te, err)
	}
}

func TestFetchHeld(t *testing.T) {
	dir := t.TempDir()
	seg := wal.SegmentFileName(1, 3, testSegSize)
	if FetchHeld(dir, seg) {
		t.Fatal("held without a hold")
	}
	release, err := holdFetch(dir, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !FetchHeld(dir, seg) || !FetchHeld(dir, seg+".partial") {
		t.Fatal("a segment is not held")
	}
	if FetchHeld(dir, "00000002.history") {
		t.Fatal("a history file is held: PostgreSQL needs it to choose the new timeline")
	}
	release()
	if FetchHeld(dir, seg) {
		t.Fatal("still held after release")
	}
	if _, err := holdFetch(dir, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if FetchHeld(dir, seg) {
		t.Fatal("an expired hold still holds")
	}
}

func TestParseStandbyReplies(t *testing.T) {
	row := func(vals ...string) [][][]byte {
		r := make([][]byte, len(vals))
		for i, v := range vals {
			if v != "NULL" {
				r[i] = []byte(v)
			}
		}
		return [][][]byte{r}
	}
	st, err := parseState(row("t", "0/5000060", "NULL", "1", "2", "f"))
	if err != nil || !st.InRecovery || st.Replay != 0x5000060 || st.Received != 0 || st.MinRecoveryTL != 2 || st.Paused {
		t.Fatalf("state: %+v %v", st, err)
	}
	if _, err := parseState(row("t", "garbage", "NULL", "1", "1", "f")); err == nil {
		t.Fatal("a bad LSN was accepted")
	}
	r, err := parseReceiver(row("streaming", "0/6000000", "0/6000100", "1", "10.0.0.5", "5433",
		"user=replicator password=******** host=10.0.0.5 port=5433 sslmode='verify full' application_name=x"))
	if err != nil || r.Flushed != 0x6000000 || r.LatestEnd != 0x6000100 || hostPort(r) != "10.0.0.5:5433" {
		t.Fatalf("receiver: %+v %v", r, err)
	}
	if got, want := upstreamConnInfo(r), `host=10.0.0.5 port=5433 user=replicator sslmode='verify full'`; got != want {
		t.Fatalf("upstream conninfo %q, want %q", got, want)
	}
	if r, err := parseReceiver(nil); r != nil || err != nil {
		t.Fatalf("no receiver: %+v %v", r, err)
	}
	srv, err := parseServer(row("/var/lib/postgresql/15/main", "7312345678901234567", "150018", "on"))
	if err != nil || srv.SystemID != 7312345678901234567 || srv.Version != 150018 {
		t.Fatalf("server: %+v %v", srv, err)
	}
}

func FuzzConnInfoValue(f *testing.F) {
	f.Add("user=a host='b c' port=5432", "host")
	f.Add("a='\\'", "a")
	f.Fuzz(func(t *testing.T, ci, key string) {
		connInfoValue(ci, key)
	})
}
