package wal

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func FuzzParseFileName(f *testing.F) {
	for _, s := range []string{
		"000000010000000000000001",
		"000000010000000000000001.partial",
		"00000002.history",
		"000000010000000000000004.00000028.backup",
		"../../etc/passwd",
		"",
		"0000000100000000000000a1",
		"000000000000000000000001",
		"00000001000000000000001",
		"000000010000000000000001.00000028.backup\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		fn, err := ParseFileName(name)
		if err != nil {
			if !errors.Is(err, ErrInvalidName) {
				t.Fatalf("ParseFileName(%q) error %v does not match ErrInvalidName", name, err)
			}
			if fn != (FileName{}) {
				t.Fatalf("ParseFileName(%q) returned %+v with an error", name, fn)
			}
			return
		}
		// Round trip: an accepted name is canonical.
		if s := fn.String(); s != name {
			t.Fatalf("ParseFileName(%q).String() = %q", name, s)
		}
		// An accepted name is a plain file name.
		if strings.ContainsAny(name, "/\\\x00") || strings.Contains(name, "..") || fn.TLI == 0 {
			t.Fatalf("ParseFileName accepted %q", name)
		}
		for _, r := range name {
			if !strings.ContainsRune("0123456789ABCDEF.abchiklloprstuy", r) {
				t.Fatalf("ParseFileName accepted %q with %q", name, r)
			}
		}
		// Segment arithmetic agrees with the name where the segment exists.
		for _, size := range []int64{1 << 20, 16 << 20, 1 << 30} {
			seg, err := fn.SegNo(size)
			if err != nil {
				continue
			}
			if got := SegmentFileName(fn.TLI, seg, size); got != fn.SegmentName() {
				t.Fatalf("%s: SegmentFileName(SegNo(%d)) = %s", name, size, got)
			}
			if lsn := SegmentStartLSN(seg, size); LSNToSegNo(lsn, size) != seg {
				t.Fatalf("%s: LSNToSegNo(SegmentStartLSN) != SegNo for size %d", name, size)
			}
			// A backup history name is where its backup started: the
			// formatter gives the same name back from that position.
			if start, err := fn.StartLSN(size); err == nil && fn.Kind == KindBackupHistory {
				if got := BackupHistoryFileName(fn.TLI, start, size); got != name {
					t.Fatalf("%s: BackupHistoryFileName(StartLSN(%d)) = %s", name, size, got)
				}
			}
		}
		// Each kind's own formatter gives the name back.
		switch fn.Kind {
		case KindHistory:
			if got := HistoryFileName(fn.TLI); got != name {
				t.Fatalf("%s: HistoryFileName = %s", name, got)
			}
		case KindSegment, KindPartial:
			if got := fn.SegmentName() + name[segmentNameLen:]; got != name {
				t.Fatalf("%s: SegmentName = %s", name, fn.SegmentName())
			}
		}
	})
}

// FuzzArchiveLess checks that the order recovery needs archived files in
// is a strict order on arbitrary names (sort.Slice would misbehave
// otherwise), puts history files first and names of other tools last.
func FuzzArchiveLess(f *testing.F) {
	names := []string{
		"000000010000000000000001", "000000020000000000000001", "000000010000000000000002",
		"000000010000000000000001.partial", "00000002.history", "00000003.history",
		"000000010000000000000004.00000028.backup", "", "x", "../00000002.history",
		"000000010000000100000000", "0000000100000000000000FF",
	}
	for i := range names {
		f.Add(names[i], names[(i+1)%len(names)], names[(i+5)%len(names)])
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		ab, ba := ArchiveLess(a, b), ArchiveLess(b, a)
		if ab && ba || ArchiveLess(a, a) {
			t.Fatalf("ArchiveLess(%q, %q) = %v and reversed %v", a, b, ab, ba)
		}
		if ab && ArchiveLess(b, c) && !ArchiveLess(a, c) {
			t.Fatalf("ArchiveLess is not transitive on %q < %q < %q", a, b, c)
		}
		if !ab && !ba && a != b {
			t.Fatalf("ArchiveLess cannot order distinct names %q and %q", a, b)
		}
		fa, errA := ParseFileName(a)
		fb, errB := ParseFileName(b)
		switch {
		case errA == nil && errB != nil && !ab:
			t.Fatalf("WAL file name %q does not come before %q", a, b)
		case errA == nil && errB == nil && fa.Kind == KindHistory && fb.Kind != KindHistory && !ab:
			t.Fatalf("history file %q does not come before %q", a, b)
		case errA == nil && errB == nil && fa.Kind != KindHistory && fb.Kind != KindHistory &&
			(fa.Log < fb.Log || fa.Log == fb.Log && fa.Seg < fb.Seg) && !ab:
			t.Fatalf("%q does not come before %q, which is later in the WAL", a, b)
		}
	})
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"16/B374D848", "0/0", "FFFFFFFF/FFFFFFFF", "0/03000000", "1/", "/1", "100000000/0", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lsn, err := ParseLSN(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidLSN) {
				t.Fatalf("ParseLSN(%q) error %v does not match ErrInvalidLSN", s, err)
			}
			return
		}
		back, err := ParseLSN(lsn.String())
		if err != nil || back != lsn {
			t.Fatalf("ParseLSN(%q) = %v, but ParseLSN(%q) = %v, %v", s, lsn, lsn.String(), back, err)
		}
		if !strings.EqualFold(strings.TrimLeft(s[:strings.IndexByte(s, '/')], "0"), strings.TrimLeft(fmt.Sprintf("%X", uint32(lsn>>32)), "0")) {
			t.Fatalf("ParseLSN(%q) = %v: high half differs", s, lsn)
		}
	})
}

func FuzzParsePageHeader(f *testing.F) {
	for _, fx := range segmentFixtures {
		f.Add(readFixture(f, fx.file)[:64])
	}
	f.Add([]byte{})
	f.Add(make([]byte, 24))
	f.Add(make([]byte, 40))
	names := []FileName{
		{Kind: KindSegment, TLI: 1, Seg: 1},
		{Kind: KindPartial, TLI: 2, Seg: 6},
		{Kind: KindSegment, TLI: 1, Log: 0xFFFFFFFF, Seg: 0xFF},
		{Kind: KindHistory, TLI: 2},
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParsePageHeader(b)
		if err != nil {
			if len(b) >= LongPageHeaderSize {
				t.Fatalf("ParsePageHeader failed on %d bytes: %v", len(b), err)
			}
		} else if h.Long != (h.Info&XLPLongHeader != 0) {
			t.Fatalf("Long = %v with Info 0x%04X", h.Long, h.Info)
		}
		for _, name := range names {
			for _, size := range []int64{1 << 20, 16 << 20, 0} {
				ch, err := CheckSegmentHeader(b, name, size)
				if err != nil {
					if strings.Contains(err.Error(), "\n") {
						t.Fatalf("multi-line error %q", err)
					}
					continue
				}
				if ch != h || !ch.Long || int64(ch.SegSize) != size || ch.TLI > name.TLI {
					t.Fatalf("CheckSegmentHeader accepted %+v for %s, size %d", ch, name, size)
				}
			}
		}
	})
}

func FuzzParseHistory(f *testing.F) {
	f.Add(readFixture(f, "00000002.history"))
	for _, s := range []string{
		"",
		"# comment\n\n1\t0/3000000\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-01-01\n",
		"1\t0/3000000\n",
		"2\t0/3000000\tx\n1\t0/4000000\ty\n",
		"0\t0/0\t\n",
		"1 0/0 a\tb\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ParseHistory(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidHistory) {
				t.Fatalf("error %v does not match ErrInvalidHistory", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		var b strings.Builder
		for i, e := range entries {
			if e.TLI == 0 || i > 0 && e.TLI <= entries[i-1].TLI {
				t.Fatalf("entries %+v: timelines do not increase", entries)
			}
			// Write each entry back as PostgreSQL would.
			fmt.Fprintf(&b, "%d\t%s\t%s\n", e.TLI, e.SwitchPoint, e.Reason)
		}
		again, err := ParseHistory([]byte(b.String()))
		if err != nil {
			t.Fatalf("entries %+v written back do not parse: %v", entries, err)
		}
		if len(entries) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(again, entries) {
			t.Fatalf("round trip: %+v became %+v", entries, again)
		}
		if last := entries[len(entries)-1].TLI; last < ^TimeLineID(0) {
			if err := CheckHistory(last+1, entries); err != nil {
				t.Fatalf("CheckHistory: %v", err)
			}
		}
	})
}
