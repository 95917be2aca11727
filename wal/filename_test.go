package wal

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
)

func TestParseFileNameAccepts(t *testing.T) {
	tests := []struct {
		name    string
		want    FileName
		segName string
	}{
		{"000000010000000000000001", FileName{Kind: KindSegment, TLI: 1, Log: 0, Seg: 1}, "000000010000000000000001"},
		{"0000000A000000FF000000FE", FileName{Kind: KindSegment, TLI: 10, Log: 0xFF, Seg: 0xFE}, "0000000A000000FF000000FE"},
		{"FFFFFFFFFFFFFFFFFFFFFFFF", FileName{Kind: KindSegment, TLI: 0xFFFFFFFF, Log: 0xFFFFFFFF, Seg: 0xFFFFFFFF}, "FFFFFFFFFFFFFFFFFFFFFFFF"},
		{"000000010000000000000001.partial", FileName{Kind: KindPartial, TLI: 1, Log: 0, Seg: 1}, "000000010000000000000001"},
		{"00000002.history", FileName{Kind: KindHistory, TLI: 2}, ""},
		{"0000ABCD.history", FileName{Kind: KindHistory, TLI: 0xABCD}, ""},
		{"000000010000000000000004.00000028.backup", FileName{Kind: KindBackupHistory, TLI: 1, Log: 0, Seg: 4, Offset: 0x28}, "000000010000000000000004"},
		{"00000003000000020000003C.00FFFFF8.backup", FileName{Kind: KindBackupHistory, TLI: 3, Log: 2, Seg: 0x3C, Offset: 0xFFFFF8}, "00000003000000020000003C"},
	}
	for _, tt := range tests {
		got, err := ParseFileName(tt.name)
		if err != nil {
			t.Errorf("ParseFileName(%q): %v", tt.name, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseFileName(%q) = %+v, want %+v", tt.name, got, tt.want)
		}
		if s := got.String(); s != tt.name {
			t.Errorf("ParseFileName(%q).String() = %q", tt.name, s)
		}
		if s := got.SegmentName(); s != tt.segName {
			t.Errorf("ParseFileName(%q).SegmentName() = %q, want %q", tt.name, s, tt.segName)
		}
	}
}

func TestParseFileNameRejects(t *testing.T) {
	for _, name := range []string{
		"",
		".",
		"..",
		"../../etc/passwd",
		"/etc/passwd",
		"00000001000000000000001",   // 23 characters
		"0000000100000000000000001", // 25 characters
		"000000010000000000000001 ", // trailing space
		" 000000010000000000000001",
		"000000010000000000000001\n",
		"000000010000000000000001\x00",
		"00000001000000000000000\x00",
		"0000000100000000000000a1", // lowercase hex
		"0000000a0000000000000001",
		"00000001000000000000000G",
		"../00000001000000000000001",
		"0000000100000000/0000001",
		"000000010000000000000001/",
		"000000010000000000000001.partia",
		"000000010000000000000001.partial2",
		"000000010000000000000001.PARTIAL",
		"000000010000000000000001.partial.partial",
		"000000010000000000000001.gz",
		"000000010000000000000001.zst",
		"00000002.History",
		"00000002.history2",
		"0000002.history",
		"000000002.history",
		"0000000g.history",
		"0000000a.history",
		".history",
		"00000002",
		"000000010000000000000001.00000028.backu",
		"000000010000000000000001.00000028.backup.gz",
		"000000010000000000000001.0000028.backup",
		"000000010000000000000001.000000028.backup",
		"000000010000000000000001.0000002g.backup",
		"000000010000000000000001.0000002a.backup",
		"000000010000000000000001-00000028.backup",
		"000000010000000000000001.backup",
		"00000001000000000000000a.00000028.backup",
		"000000010000000000000001..0000028.backup",
		"000000010000000000000001.00000028/backup",
		"RECOVERYXLOG",
		"RECOVERYHISTORY",
		"archive_status",
		"000000010000000000000001.ready",
		"０００００００１0000000000000001", // full-width digits
	} {
		f, err := ParseFileName(name)
		if err == nil {
			t.Errorf("ParseFileName(%q) = %+v, want an error", name, f)
			continue
		}
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ParseFileName(%q) error %v does not match ErrInvalidName", name, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "000000010000000000000001") || !strings.Contains(msg, "00000002.history") ||
			!strings.Contains(msg, ".partial") || !strings.Contains(msg, ".backup") {
			t.Errorf("ParseFileName(%q) error %q does not say what a valid name looks like", name, msg)
		}
		if strings.ContainsAny(msg, "\n\x00") {
			t.Errorf("ParseFileName(%q) error %q is not one printable line", name, msg)
		}
	}
}

func TestParseFileNameTimelineZero(t *testing.T) {
	for _, name := range []string{
		"000000000000000000000001",
		"000000000000000000000001.partial",
		"00000000.history",
		"000000000000000000000001.00000028.backup",
	} {
		_, err := ParseFileName(name)
		if !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), "timeline 0") {
			t.Errorf("ParseFileName(%q) = %v, want a timeline 0 error", name, err)
		}
	}
}

func TestParseFileNameLongInputIsClipped(t *testing.T) {
	_, err := ParseFileName(strings.Repeat("A", 100000))
	if err == nil || len(err.Error()) > 1000 {
		t.Fatalf("error for a 100000-byte name is %d bytes long", len(err.Error()))
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{
		KindSegment:       "WAL segment",
		KindPartial:       "partial WAL segment",
		KindHistory:       "timeline history file",
		KindBackupHistory: "backup history file",
		0:                 "Kind(0)",
		9:                 "Kind(9)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}

func TestZeroFileNameString(t *testing.T) {
	if s := (FileName{}).String(); s != "" {
		t.Errorf("FileName{}.String() = %q", s)
	}
	if s := (FileName{Kind: 7, TLI: 1}).SegmentName(); s != "" {
		t.Errorf("SegmentName of an unknown kind = %q", s)
	}
}

func TestFileNameSegNo(t *testing.T) {
	tests := []struct {
		name    string
		segSize int64
		want    SegNo
		err     string // substring of the error; "" for success
	}{
		{"000000010000000000000001", 16 << 20, 1, ""},
		{"0000000100000000000000FF", 16 << 20, 255, ""},
		{"000000010000000000000100", 16 << 20, 0, "go up to 000000FF, not 00000100"},
		{"000000010000000100000000", 16 << 20, 256, ""},
		{"000000020000000100000000.partial", 16 << 20, 256, ""},
		{"000000010000000000000FFF", 1 << 20, 4095, ""},
		{"000000010000000000001000", 1 << 20, 0, "go up to 00000FFF"},
		{"000000010000000000000003", 1 << 30, 3, ""},
		{"000000010000000000000004", 1 << 30, 0, "with 1 GB segments"},
		{"000000010000000000000004.00000028.backup", 16 << 20, 4, ""},
		{"000000010000000000000001", 3 << 20, 0, "power of two"},
		{"000000010000000000000001", 0, 0, "power of two"},
		{"00000002.history", 16 << 20, 0, "timeline history file, not part of a WAL segment"},
	}
	for _, tt := range tests {
		f, err := ParseFileName(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.SegNo(tt.segSize)
		if tt.err == "" {
			if err != nil || got != tt.want {
				t.Errorf("%s.SegNo(%d) = %d, %v; want %d", tt.name, tt.segSize, got, err, tt.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s.SegNo(%d) = %d, %v; want an error containing %q", tt.name, tt.segSize, got, err, tt.err)
		}
	}
	f, _ := ParseFileName("000000010000000000000100")
	if _, err := f.SegNo(16 << 20); !errors.Is(err, ErrInvalidName) {
		t.Errorf("out-of-range segment: %v does not match ErrInvalidName", err)
	}
	if _, err := f.SegNo(1); !errors.Is(err, ErrInvalidSegmentSize) {
		t.Errorf("bad size: %v does not match ErrInvalidSegmentSize", err)
	}
}

func TestFileNameStartLSN(t *testing.T) {
	tests := []struct {
		name    string
		segSize int64
		want    LSN
		err     string
	}{
		{"000000010000000000000004.00000028.backup", 16 << 20, 0x4000028, ""},
		{"00000001000000000000000C.00000028.backup", 1 << 20, 0xC00028, ""},
		{"000000010000000000000004.00FFFFFF.backup", 16 << 20, 0x4FFFFFF, ""},
		{"000000010000000000000004.01000000.backup", 16 << 20, 0, "beyond the end of a 16 MB segment"},
		{"000000010000000000000006.partial", 16 << 20, 0x6000000, ""},
		{"00000002.history", 16 << 20, 0, "not part of a WAL segment"},
	}
	for _, tt := range tests {
		f, err := ParseFileName(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.StartLSN(tt.segSize)
		if tt.err == "" {
			if err != nil || got != tt.want {
				t.Errorf("%s.StartLSN = %s, %v; want %s", tt.name, got, err, tt.want)
			}
		} else if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s.StartLSN = %s, %v; want an error containing %q", tt.name, got, err, tt.err)
		}
	}
}

func TestNameBuilders(t *testing.T) {
	if got := HistoryFileName(2); got != "00000002.history" {
		t.Errorf("HistoryFileName(2) = %q", got)
	}
	if got := HistoryFileName(0x1A); got != "0000001A.history" {
		t.Errorf("HistoryFileName(0x1A) = %q", got)
	}
	if got := SegmentFileName(0x1A, 0x16B3, 16<<20); got != "0000001A00000016000000B3" {
		t.Errorf("SegmentFileName = %q", got)
	}
	// As PostgreSQL named the backup history files of the fixtures.
	if got := BackupHistoryFileName(1, 0x4000028, 16<<20); got != "000000010000000000000004.00000028.backup" {
		t.Errorf("BackupHistoryFileName 16 MB = %q", got)
	}
	if got := BackupHistoryFileName(1, 0xC00028, 1<<20); got != "00000001000000000000000C.00000028.backup" {
		t.Errorf("BackupHistoryFileName 1 MB = %q", got)
	}
	f := SegmentFile(3, 257, 16<<20)
	if f != (FileName{Kind: KindSegment, TLI: 3, Log: 1, Seg: 1}) {
		t.Errorf("SegmentFile = %+v", f)
	}
}

func TestArchiveLess(t *testing.T) {
	names := []string{
		"junk",
		"000000020000000000000003",
		"000000010000000000000004",
		"00000002.history",
		"000000010000000000000003.partial",
		"000000010000000000000003",
	}
	sort.Slice(names, func(i, j int) bool { return ArchiveLess(names[i], names[j]) })
	want := []string{"00000002.history", "000000010000000000000003", "000000010000000000000003.partial",
		"000000020000000000000003", "000000010000000000000004", "junk"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("order %v, want %v", names, want)
	}
}
