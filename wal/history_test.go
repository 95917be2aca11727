package wal

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseHistoryFixture(t *testing.T) {
	// Written by PostgreSQL 15 when a standby was promoted (README.txt).
	data := readFixture(t, "00000002.history")
	if string(data) != "1\t0/60000A0\tno recovery target specified\n" {
		t.Fatalf("fixture changed: %q", data)
	}
	got, err := ParseHistory(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []HistoryEntry{{TLI: 1, SwitchPoint: 0x60000A0, Reason: "no recovery target specified"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseHistory = %+v, want %+v", got, want)
	}
	if err := CheckHistory(2, got); err != nil {
		t.Fatal(err)
	}
	// The switch point is in segment 6, the one the promotion split into
	// 000000010000000000000006.partial and 000000020000000000000006.
	if seg := LSNToSegNo(got[0].SwitchPoint, 16<<20); SegmentFileName(2, seg, 16<<20) != "000000020000000000000006" {
		t.Errorf("switch point segment = %d", seg)
	}
}

func TestParseHistory(t *testing.T) {
	tests := []struct {
		desc string
		in   string
		want []HistoryEntry
	}{
		{"empty", "", nil},
		{"blank lines only", "\n\n  \n\t\n", nil},
		{"comments", "# a comment\n  # indented comment\n", nil},
		{"one line", "1\t0/3000000\tno recovery target specified\n",
			[]HistoryEntry{{1, 0x3000000, "no recovery target specified"}}},
		{"no final newline", "1\t0/3000000\tno recovery target specified",
			[]HistoryEntry{{1, 0x3000000, "no recovery target specified"}}},
		// A grandchild's file: the parent's lines, then "\n" + the new line,
		// as PostgreSQL's writeTimeLineHistory appends it.
		{"three timelines", "1\t0/3000000\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-11-22 02:31:24.123+00\n\n3\t1/A0000028\tat restore point \"before_upgrade\"\n",
			[]HistoryEntry{
				{1, 0x3000000, "no recovery target specified"},
				{2, 0x5000000, "before 2026-11-22 02:31:24.123+00"},
				{3, 0x1_A0000028, `at restore point "before_upgrade"`},
			}},
		{"no reason", "1\t0/3000000\n", []HistoryEntry{{1, 0x3000000, ""}}},
		{"no reason, trailing tab", "1\t0/3000000\t\n", []HistoryEntry{{1, 0x3000000, ""}}},
		{"spaces as separators", "  1   0/3000000   reason with  spaces  \n", []HistoryEntry{{1, 0x3000000, "reason with  spaces"}}},
		{"CRLF", "1\t0/3000000\tno recovery target specified\r\n", []HistoryEntry{{1, 0x3000000, "no recovery target specified"}}},
		{"tab in reason", "1\t0/3000000\ta\tb\n", []HistoryEntry{{1, 0x3000000, "a\tb"}}},
		{"zero-padded LSN", "1\t0/03000000\tx\n", []HistoryEntry{{1, 0x3000000, "x"}}},
		{"lowercase LSN", "1\t0/a0\tx\n", []HistoryEntry{{1, 0xA0, "x"}}},
		{"gaps in timelines", "1\t0/3000000\tx\n7\t0/4000000\ty\n", []HistoryEntry{{1, 0x3000000, "x"}, {7, 0x4000000, "y"}}},
		{"largest timeline", "4294967295\t0/1\tx\n", []HistoryEntry{{0xFFFFFFFF, 1, "x"}}},
	}
	for _, tt := range tests {
		got, err := ParseHistory([]byte(tt.in))
		if err != nil {
			t.Errorf("%s: ParseHistory(%q): %v", tt.desc, tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: ParseHistory(%q) = %+v, want %+v", tt.desc, tt.in, got, tt.want)
		}
	}
}

func TestParseHistoryRejects(t *testing.T) {
	tests := []struct {
		in  string
		err string
	}{
		{"x\t0/3000000\treason\n", `line 1 "x\t0/3000000\treason": want a decimal parent timeline`},
		{"1\n", "line 1"},
		{"1\t\n", "want a switch point LSN"},
		{"1\t3000000\treason\n", "want a switch point LSN"},
		{"1\t0/3000000x\treason\n", "want a switch point LSN"},
		{"1\t0/G\treason\n", "want a switch point LSN"},
		{"1/0\t0/3000000\n", "decimal parent timeline"},
		{"-1\t0/3000000\n", "decimal parent timeline"},
		{"+1\t0/3000000\n", "decimal parent timeline"},
		{"0x1\t0/3000000\n", "decimal parent timeline"},
		{"4294967296\t0/3000000\n", "decimal parent timeline"},
		{"0\t0/3000000\treason\n", "timeline 0 does not exist"},
		{"2\t0/3000000\tx\n1\t0/4000000\ty\n", "line 2 \"1\\t0/4000000\\ty\": timeline 1 does not follow timeline 2"},
		{"1\t0/3000000\tx\n\n# c\n1\t0/4000000\ty\n", "line 4"},
		{"1\t0/3000000\tx\x00\n", "NUL"},
		{"\x00", "NUL"},
		{"1\t0/3000000;rm -rf /\n", "want a switch point LSN"},
	}
	for _, tt := range tests {
		got, err := ParseHistory([]byte(tt.in))
		if err == nil {
			t.Errorf("ParseHistory(%q) = %+v, want an error", tt.in, got)
			continue
		}
		if !errors.Is(err, ErrInvalidHistory) {
			t.Errorf("ParseHistory(%q) error %v does not match ErrInvalidHistory", tt.in, err)
		}
		if msg := err.Error(); !strings.Contains(msg, tt.err) || strings.Contains(msg, "\n") {
			t.Errorf("ParseHistory(%q) error %q, want one line containing %q", tt.in, msg, tt.err)
		}
	}
}

func TestCheckHistory(t *testing.T) {
	entries := []HistoryEntry{{1, 0x3000000, ""}, {2, 0x5000000, ""}}
	if err := CheckHistory(3, entries); err != nil {
		t.Errorf("CheckHistory(3): %v", err)
	}
	if err := CheckHistory(1, nil); err != nil {
		t.Errorf("CheckHistory(1, nil): %v", err)
	}
	for _, tli := range []TimeLineID{0, 1, 2} {
		err := CheckHistory(tli, entries)
		if !errors.Is(err, ErrInvalidHistory) {
			t.Errorf("CheckHistory(%d) = %v, want an error", tli, err)
		}
	}
	if err := CheckHistory(2, entries); !strings.Contains(err.Error(), "00000002.history") {
		t.Errorf("CheckHistory error %q does not name the file", err)
	}
}

func TestTimelineAt(t *testing.T) {
	history := []HistoryEntry{{1, 0x3000000, ""}, {2, 0x5000000, ""}, {4, 0x5000000, ""}, {5, 0x9000000, ""}}
	tests := []struct {
		lsn  LSN
		want TimeLineID
	}{
		{0, 1},
		{0x2FFFFFF, 1},
		{0x3000000, 2}, // a switch point belongs to the child
		{0x4FFFFFF, 2},
		{0x5000000, 5}, // timeline 4 ended where it began
		{0x8FFFFFF, 5},
		{0x9000000, 6},
		{^LSN(0), 6},
	}
	for _, tt := range tests {
		if got := TimelineAt(history, 6, tt.lsn); got != tt.want {
			t.Errorf("TimelineAt(%s) = %d, want %d", tt.lsn, got, tt.want)
		}
	}
	if got := TimelineAt(nil, 1, 0x123); got != 1 {
		t.Errorf("TimelineAt with no history = %d", got)
	}
}
