package archive

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/crypt"
	"github.com/walship/walship/storage/faulty"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

const seg1MB = 1 << 20

// pushSegment pushes the synthetic segment seg of timeline tli (1 MB
// segments) and returns its name and Push's error.
func pushSegment(t *testing.T, s storage.Storage, tli wal.TimeLineID, seg wal.SegNo, o PushOptions) (string, error) {
	t.Helper()
	name, data := waltest.Segment(testSysID, tli, seg, seg1MB, waltest.Compressible(uint64(seg)))
	_, err := Push(context.Background(), s, writeFile(t, t.TempDir(), name, data), o)
	return name, err
}

// pushHistory pushes the history file of timeline tli with content.
func pushHistory(t *testing.T, s storage.Storage, tli wal.TimeLineID, content string, o PushOptions) PushResult {
	t.Helper()
	res, err := Push(context.Background(), s, writeFile(t, t.TempDir(), wal.HistoryFileName(tli), []byte(content)), o)
	if err != nil {
		t.Fatalf("push %s: %v", wal.HistoryFileName(tli), err)
	}
	return res
}

func lsn(t *testing.T, s string) wal.LSN {
	t.Helper()
	l, err := wal.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestHistoryPushedWithAncestry: a history file is stored uncompressed
// under its own name, with its ancestry in the metadata, and wal-fetch's
// lookup finds it with one request.
func TestHistoryPushedWithAncestry(t *testing.T) {
	ctx := context.Background()
	s := faulty.New(mem.New())
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	content := "1\t0/5000028\tno recovery target specified\n\n2\t0/9000000\tat restore point \"x\"\n"
	res := pushHistory(t, s, 3, content, o)
	if res.Codec != "none" || res.Stored != int64(len(content)) {
		t.Fatalf("stored as %+v, want uncompressed", res)
	}
	info, err := s.Stat(ctx, "wal/00000003.history")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Metadata[MetaHistory]; got != "1:0/5000028,2:0/9000000" {
		t.Fatalf("%s = %q", MetaHistory, got)
	}
	gets := s.Calls(faulty.OpGet)
	lists := s.Calls(faulty.OpList)
	if got := fetch(t, s, "00000003.history"); string(got) != content {
		t.Fatalf("fetched %q", got)
	}
	if g, l := s.Calls(faulty.OpGet)-gets, s.Calls(faulty.OpList)-lists; g != 1 || l != 0 {
		t.Fatalf("fetching the history took %d GET and %d LIST requests, want 1 GET", g, l)
	}

	// Identical again: fine; other content: two servers promoted to
	// the same timeline.
	if res := pushHistory(t, s, 3, content, o); !res.AlreadyArchived {
		t.Fatal("an identical history file was not taken as archived")
	}
	other := writeFile(t, t.TempDir(), "00000003.history", []byte("1\t0/5000028\tno recovery target specified\n2\t0/9100000\tx\n"))
	if _, err := Push(ctx, s, other, o); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "promoted to timeline 3") {
		t.Fatalf("a different history for timeline 3: %v", err)
	}
	// A history PostgreSQL could not read is refused.
	bad := writeFile(t, t.TempDir(), "00000004.history", []byte("5\t0/1\tnewer than itself\n"))
	if _, err := Push(ctx, s, bad, o); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an impossible history: %v", err)
	}
}

// TestFenceAroundFork: timeline 2 forked from 1 at 0/500028. Segments
// of timeline 1 that end at or before the fork are archived; those that
// straddle it or lie past it are refused with a one-line explanation and
// leave nothing in the archive; the .partial the promoted server writes
// is archived.
func TestFenceAroundFork(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	pushHistory(t, s, 2, "1\t0/500028\tno recovery target specified\n", o)
	for _, tc := range []struct {
		tli     wal.TimeLineID
		seg     wal.SegNo
		refused bool
	}{
		{1, 3, false}, // before
		{1, 4, false}, // ends at 0/500000, before the fork
		{1, 5, true},  // straddles
		{1, 6, true},  // past
		{2, 5, false}, // the new timeline
		{2, 9, false},
	} {
		name, err := pushSegment(t, s, tc.tli, tc.seg, o)
		if !tc.refused {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		var sup *SupersededError
		if !errors.Is(err, ErrSuperseded) || !errors.As(err, &sup) {
			t.Fatalf("%s past the fork: %v, want ErrSuperseded", name, err)
		}
		if *sup != (SupersededError{Timeline: 1, SwitchPoint: lsn(t, "0/500028"), NewTimeline: 2}) {
			t.Errorf("%s: %+v", name, *sup)
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, "superseded by timeline 2 at LSN 0/500028; it must not accept writes") ||
			!strings.Contains(msg, "standby-rejoin") || !strings.Contains(msg, name) {
			t.Errorf("message: %s", msg)
		}
		if ok, _ := HasWAL(ctx, s, name); ok {
			t.Errorf("refused %s is in the archive", name)
		}
	}

	// The promoted server's last segment of timeline 1.
	name, data := waltest.Segment(testSysID, 1, 5, seg1MB, waltest.Compressible(5))
	if _, err := Push(ctx, s, writeFile(t, t.TempDir(), name+".partial", data), o); err != nil {
		t.Fatalf("%s.partial: %v", name, err)
	}

	// A fork exactly at a segment boundary: the segment ending there
	// is the new timeline's past.
	s = mem.New()
	pushHistory(t, s, 2, "1\t0/600000\tno recovery target specified\n", o)
	if name, err := pushSegment(t, s, 1, 5, o); err != nil {
		t.Fatalf("%s, ending at the fork: %v", name, err)
	}
	if name, err := pushSegment(t, s, 1, 6, o); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("%s, starting at the fork: %v", name, err)
	}
}

// TestFenceChain: newer timelines that forked from other ones are
// skipped; the first one descending from the segment's timeline decides.
func TestFenceChain(t *testing.T) {
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	var sup *SupersededError
	// Timeline 3 forked from 1, not from 2: the chain goes on to 4.
	s2 := mem.New()
	pushHistory(t, s2, 2, "1\t0/400000\tx\n", o)
	pushHistory(t, s2, 3, "1\t0/300000\tPITR to before timeline 2\n", o)
	if name, err := pushSegment(t, s2, 2, 20, o); err != nil {
		t.Fatalf("%s: timeline 3 does not descend from 2: %v", name, err)
	}
	pushHistory(t, s2, 4, "1\t0/300000\tx\n3\t0/700000\tx\n", o)
	if name, err := pushSegment(t, s2, 2, 21, o); err != nil {
		t.Fatalf("%s: timeline 4 does not descend from 2 either: %v", name, err)
	}
	pushHistory(t, s2, 5, "1\t0/400000\tx\n2\t0/1500000\tx\n", o)
	_, err := pushSegment(t, s2, 2, 22, o)
	if !errors.As(err, &sup) || sup.NewTimeline != 5 || sup.SwitchPoint != lsn(t, "0/1500000") {
		t.Fatalf("segment 22 of timeline 2 after timeline 5 forked from it at 0/1500000: %v", err)
	}
	// The first descendant decides: timeline 2 left 1 at 0/400000, and
	// timeline 3's earlier fork from 1 does not make 1's WAL before
	// 0/400000 (timeline 2's past) unwanted.
	if name, err := pushSegment(t, s2, 1, 3, o); err != nil {
		t.Fatalf("%s, before timeline 2's fork: %v", name, err)
	}
}

// TestFenceCache: "no newer timeline" costs its requests once per
// interval, also across runs (the cache directory); a history found is
// never asked for again; within the interval after a promotion a push
// may still land (the documented window).
func TestFenceCache(t *testing.T) {
	s := faulty.New(mem.New())
	cacheDir := t.TempDir()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	newFence := func(interval time.Duration) *Fence {
		f := NewFence(FenceOptions{CacheDir: cacheDir, Repo: "mem:test", Interval: interval})
		f.now = func() time.Time { return now }
		return f
	}
	fence := newFence(10 * time.Second)
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test", CacheDir: cacheDir, Fence: fence}
	seg := wal.SegNo(1)
	stats := func(what string, want int, wantErr error, o PushOptions) {
		t.Helper()
		before := s.Calls(faulty.OpStat)
		name, err := pushSegment(t, s, 1, seg, o)
		seg++
		if !errors.Is(err, wantErr) {
			t.Fatalf("%s: push %s: %v, want %v", what, name, err, wantErr)
		}
		if got := s.Calls(faulty.OpStat) - before; got != want {
			t.Errorf("%s: %d Stat requests, want %d", what, got, want)
		}
	}
	// One request: the history key.
	stats("first push", 1, nil, o)
	stats("within the interval", 0, nil, o)
	now = now.Add(9 * time.Second)
	stats("still within", 0, nil, o)
	o.Fence = newFence(10 * time.Second)
	stats("next run, within the interval", 0, nil, o)
	now = now.Add(2 * time.Second)
	stats("after the interval", 1, nil, o)

	// Timeline 2 forks at 0/100000, the start of segment 1.
	pushHistory(t, s, 2, "1\t0/100000\tx\n", PushOptions{Codec: zstdCodec(t), Repo: "mem:test"})
	stats("within the interval after the promotion", 0, nil, o)
	now = now.Add(11 * time.Second)
	stats("after it", 1, ErrSuperseded, o)
	now = now.Add(time.Hour)
	stats("a found history is never asked for again", 0, ErrSuperseded, o)
	o.Fence = newFence(10 * time.Second)
	stats("nor in the next run", 0, ErrSuperseded, o)

	// Interval 0 asks every time (the cache of timeline 2 is warm, so
	// the probe is of nothing; use another archive).
	s2 := faulty.New(mem.New())
	zero := NewFence(FenceOptions{CacheDir: t.TempDir(), Repo: "mem:other"})
	for i := 1; i <= 3; i++ {
		before := s2.Calls(faulty.OpStat)
		if _, err := pushSegment(t, s2, 1, wal.SegNo(i), PushOptions{Codec: zstdCodec(t), Repo: "mem:other", Fence: zero}); err != nil {
			t.Fatal(err)
		}
		if got := s2.Calls(faulty.OpStat) - before; got != 1 {
			t.Errorf("interval 0, push %d: %d Stat requests, want 1", i, got)
		}
	}
}

// TestFenceRefusedProbe: a Stat refused for good (S3's 403 for a missing
// key to a host without s3:ListBucket) means "no newer timeline"; a
// failing store is an error, never a pass.
func TestFenceRefusedProbe(t *testing.T) {
	s := faulty.New(mem.New())
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	s.Fail(faulty.OpStat, 0, storage.Permanent(errors.New("403 Forbidden")))
	if name, err := pushSegment(t, s, 1, 1, o); err != nil {
		t.Fatalf("%s with the probe refused: %v", name, err)
	}
	s.Clear()
	boom := errors.New("connection reset")
	s.Fail(faulty.OpStat, 0, boom)
	if name, err := pushSegment(t, s, 1, 2, o); !errors.Is(err, boom) {
		t.Fatalf("%s with the probe failing: %v", name, err)
	} else if ok, _ := HasWAL(context.Background(), s, name); ok {
		t.Fatalf("%s was archived although the fence could not be checked", name)
	}
}

// TestFenceEncrypted: a host that holds only the public key cannot read
// history content, but fences by the metadata. A history stored by an
// older walship (compressed, no ancestry metadata) is read from its
// content when the key allows, and otherwise the push fails and says
// which setting is missing.
func TestFenceEncrypted(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	raw := mem.New()
	pusher := crypt.Wrap(raw, crypt.Keys{Recipients: []age.Recipient{id.Recipient()}, Plain: func(k string) bool { return k == IdentityKey }})
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	pushHistory(t, pusher, 2, "1\t0/300000\tx\n", o)
	info, err := raw.Stat(ctx, "wal/00000002.history")
	if err != nil || info.Metadata[crypt.MetaEnvelope] != crypt.EnvelopeAge {
		t.Fatalf("the history was not stored encrypted: %+v, %v", info, err)
	}
	if name, err := pushSegment(t, pusher, 1, 3, o); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("%s past the fork, encrypted archive: %v", name, err)
	}
}

func TestReadableByAll(t *testing.T) {
	for key, want := range map[string]bool{
		"cluster.json":                         true,
		"wal/00000002.history":                 true,
		"wal/00000002.history.zst":             true,
		"wal/000000010000000000000001.zst":     false,
		"wal/000000010000000000000001.partial": false,
		"basebackups/b/backup.json":            false,
		"partial/00000002.history":             false,
		"wal/00000002.history.x/y":             false,
	} {
		if got := ReadableByAll(key); got != want {
			t.Errorf("ReadableByAll(%q) = %v, want %v", key, got, want)
		}
	}
}

// TestPushAheadFenced: look-ahead goes through the same check and
// leaves no marker for a refused segment, so PostgreSQL's own call for
// it is refused too.
func TestPushAheadFenced(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:a"}
	pushHistory(t, s, 2, "1\t0/500000\tx\n", o)
	dataDir := t.TempDir()
	walDir := filepath.Join(dataDir, "pg_wal")
	if err := os.MkdirAll(filepath.Join(walDir, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	var names []string
	for seg := wal.SegNo(3); seg <= 6; seg++ {
		name, data := waltest.Segment(testSysID, 1, seg, seg1MB, waltest.Compressible(uint64(seg)))
		writeFile(t, walDir, name, data)
		writeFile(t, filepath.Join(walDir, "archive_status"), name+".ready", nil)
		names = append(names, name)
	}
	o.DataDir = dataDir
	res := PushAhead(ctx, s, filepath.Join(walDir, names[0]), 3, o)
	if len(res) != 3 || res[0].Err != nil || !errors.Is(res[1].Err, ErrSuperseded) || !errors.Is(res[2].Err, ErrSuperseded) {
		t.Fatalf("pushed ahead %v; want %s archived and the two after the fork refused", res, names[1])
	}
	for i, name := range names[1:] {
		taken := TakeMarker(dataDir, "mem:a", filepath.Join(walDir, name))
		if taken != (i == 0) {
			t.Errorf("%s: marker taken %v", name, taken)
		}
	}
	if _, err := Push(ctx, s, filepath.Join(walDir, names[2]), o); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("PostgreSQL's own call for %s: %v", names[2], err)
	}
}

// TestAncestryMetadata: long lineages keep their newest entries within
// S3's metadata limit and say so; a truncated one that does not name the
// timeline asked about is never taken for "not an ancestor".
func TestAncestryMetadata(t *testing.T) {
	var entries []wal.HistoryEntry
	var text strings.Builder
	for i := 1; i <= 200; i++ {
		e := wal.HistoryEntry{TLI: wal.TimeLineID(i), SwitchPoint: wal.LSN(uint64(i) << 32)}
		entries = append(entries, e)
		fmt.Fprintf(&text, "%d\t%s\tx\n", e.TLI, e.SwitchPoint)
	}
	v := formatAncestry(entries, maxAncestryMeta)
	if len(v) > maxAncestryMeta || !strings.HasPrefix(v, "+") {
		t.Fatalf("%d bytes: %.40s…", len(v), v)
	}
	a, err := parseAncestry(v)
	if err != nil || !a.truncated || a.entries[len(a.entries)-1] != entries[199] {
		t.Fatalf("parse: %v %+v", err, a)
	}
	if _, _, known := a.leftAt(1); known {
		t.Fatal("a timeline older than the kept entries was taken as known")
	}
	if at, descends, known := a.leftAt(200); !known || !descends || at != entries[199].SwitchPoint {
		t.Fatal("the newest ancestor was lost")
	}
	if _, descends, known := a.leftAt(201); !known || descends {
		t.Fatal("a timeline newer than every entry")
	}

	// Pushed: the metadata is short, and checks still see the lineage.
	s := mem.New()
	o := PushOptions{Codec: zstdCodec(t), Repo: "mem:test"}
	pushHistory(t, s, 201, text.String(), o)
	f := NewFence(FenceOptions{})
	err = f.Check(context.Background(), s, testSysID, 200, wal.LSN(201)<<32)
	var sup *SupersededError
	if !errors.As(err, &sup) || sup.NewTimeline != 201 {
		t.Fatalf("check of timeline 200: %v", err)
	}
	if err := f.Check(context.Background(), s, testSysID, 200, wal.LSN(200)<<32); err != nil {
		t.Fatalf("check of timeline 200 up to its fork: %v", err)
	}
	for _, bad := range []string{"x", "1:", "0:0/1", "2:0/1,1:0/2", "1:0/1,", "1:0/1,1:0/2", "-1:0/1"} {
		if _, err := parseAncestry(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseAncestry(f *testing.F) {
	for _, s := range []string{"", "1:0/3000000", "+7:1/0,9:A/B", "1:0/1,2:FFFFFFFF/FFFFFFFF"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		a, err := parseAncestry(v)
		if err != nil {
			return
		}
		again, err := parseAncestry(formatAncestry(a.entries, 0))
		if err != nil || len(again.entries) != len(a.entries) {
			t.Fatalf("%q: round trip: %v %+v", v, err, again)
		}
		for i := range a.entries {
			if again.entries[i] != a.entries[i] {
				t.Fatalf("%q: entry %d changed", v, i)
			}
		}
	})
}
