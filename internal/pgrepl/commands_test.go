package pgrepl

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walship/walship/wal"
)

func TestStartReplicationCommand(t *testing.T) {
	for _, tc := range []struct {
		slot  string
		start wal.LSN
		tli   wal.TimeLineID
		want  string
	}{
		{"", 0x3000000, 0, "START_REPLICATION PHYSICAL 0/3000000"},
		{"", 0x16_B3000000, 3, "START_REPLICATION PHYSICAL 16/B3000000 TIMELINE 3"},
		{"walship", 0, 1, `START_REPLICATION SLOT "walship" PHYSICAL 0/0 TIMELINE 1`},
		{"a_1", 0xFFFFFFFF_FF000000, 4294967295, `START_REPLICATION SLOT "a_1" PHYSICAL FFFFFFFF/FF000000 TIMELINE 4294967295`},
		{strings.Repeat("x", 63), 1, 0, `START_REPLICATION SLOT "` + strings.Repeat("x", 63) + `" PHYSICAL 0/1`},
	} {
		got, err := StartReplicationCommand(tc.slot, tc.start, tc.tli)
		if err != nil || got != tc.want {
			t.Errorf("StartReplicationCommand(%q, %s, %d) = %q, %v; want %q", tc.slot, tc.start, tc.tli, got, err, tc.want)
		}
	}
	for _, slot := range []string{strings.Repeat("x", 64), "Walship", "wal-ship", "wal ship", `a"b`, "é", "a\x00"} {
		if got, err := StartReplicationCommand(slot, 0, 0); err == nil || !strings.Contains(err.Error(), "invalid replication slot name") {
			t.Errorf("StartReplicationCommand(%q) = %q, %v; want an invalid name", slot, got, err)
		}
	}
}

func TestQuoteIdentifier(t *testing.T) {
	if got := quoteIdentifier(`a"b`); got != `"a""b"` {
		t.Errorf("quoteIdentifier = %s", got)
	}
}

// row builds a one-row result; "NULL" stands for a NULL value.
func row(values ...string) *pgconn.Result {
	r := make([][]byte, len(values))
	for i, v := range values {
		if v != "NULL" {
			r[i] = []byte(v)
		}
	}
	return &pgconn.Result{Rows: [][][]byte{r}}
}

func TestParseTimelineHistory(t *testing.T) {
	content := "1\t0/3000148\tno recovery target specified\n"
	name, got, err := parseTimelineHistory(2, row("00000002.history", content))
	if err != nil || name != "00000002.history" || string(got) != content {
		t.Errorf("parseTimelineHistory = %q, %q, %v", name, got, err)
	}
	// The content is passed on as it is, even empty.
	if _, got, err := parseTimelineHistory(0x1A, row("0000001A.history", "")); err != nil || len(got) != 0 {
		t.Errorf("parseTimelineHistory of an empty file = %q, %v", got, err)
	}

	for name, tc := range map[string]struct {
		r    *pgconn.Result
		want string
	}{
		"no rows":      {&pgconn.Result{}, "got 0 rows"},
		"one column":   {row("00000002.history"), "of 1 columns"},
		"NULL content": {row("00000002.history", "NULL"), "NULL"},
		"other file":   {row("00000003.history", content), `file name "00000003.history", want 00000002.history`},
		"segment":      {row("000000020000000000000003", content), "file name"},
		"a path":       {row("../00000002.history", content), "file name"},
		"lower case":   {row("0000000a.history", content), "file name"},
		"server error": {&pgconn.Result{Err: &pgconn.PgError{Message: "could not open file"}}, "could not open file"},
	} {
		_, _, err := parseTimelineHistory(2, tc.r)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: parseTimelineHistory error %v, want one containing %q", name, err, tc.want)
		}
		if tc.r.Err == nil && !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v does not match ErrProtocol", name, err)
		}
	}
}

func TestParseSlot(t *testing.T) {
	for name, tc := range map[string]struct {
		r    *pgconn.Result
		want Slot
	}{
		"missing":         {row("NULL", "NULL", "NULL"), Slot{}},
		"never used":      {row("physical", "NULL", "NULL"), Slot{Exists: true}},
		"keeping WAL":     {row("physical", "16/B374D848", "3"), Slot{Exists: true, RestartLSN: 0x16_B374D848, RestartTLI: 3}},
		"zero-padded LSN": {row("physical", "0/03000000", "1"), Slot{Exists: true, RestartLSN: 0x3000000, RestartTLI: 1}},
	} {
		got, err := parseSlot("s", tc.r)
		if err != nil || got != tc.want {
			t.Errorf("%s: parseSlot = %+v, %v; want %+v", name, got, err, tc.want)
		}
	}
	for name, tc := range map[string]struct {
		r        *pgconn.Result
		want     string
		protocol bool
	}{
		"no rows":         {&pgconn.Result{}, "got 0 rows", true},
		"two columns":     {row("physical", "0/1"), "of 2 columns", true},
		"logical":         {row("logical", "0/1", "1"), `of type "logical"`, false},
		"LSN without TLI": {row("physical", "0/1", "NULL"), "both be NULL", true},
		"TLI without LSN": {row("physical", "NULL", "1"), "both be NULL", true},
		"bad LSN":         {row("physical", "0/1/2", "1"), "invalid restart_lsn", true},
		"zero LSN":        {row("physical", "0/0", "1"), "invalid restart_lsn", true},
		"bad TLI":         {row("physical", "0/1", "0"), "restart_tli: invalid timeline", true},
		"type missing":    {row("NULL", "0/1", "1"), "without a type", true},
		"server error":    {&pgconn.Result{Err: &pgconn.PgError{Message: "boom"}}, "boom", false},
	} {
		_, err := parseSlot("s", tc.r)
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrProtocol) != tc.protocol {
			t.Errorf("%s: parseSlot error %v, want one containing %q (ErrProtocol: %v)", name, err, tc.want, tc.protocol)
		}
	}
}

func TestParseTimelineEnd(t *testing.T) {
	got, err := parseTimelineEnd([][]byte{[]byte("2"), []byte("0/5000060")})
	if want := (TimelineEnd{NextTLI: 2, NextStart: 0x5000060}); err != nil || got != want {
		t.Errorf("parseTimelineEnd = %+v, %v; want %+v", got, err, want)
	}
	for name, values := range map[string][][]byte{
		"one value": {[]byte("2")},
		"NULL":      {[]byte("2"), nil},
		"tli 0":     {[]byte("0"), []byte("0/1")},
		"tli 2^32":  {[]byte("4294967296"), []byte("0/1")},
		"negative":  {[]byte("-2"), []byte("0/1")},
		"bad LSN":   {[]byte("2"), []byte("5000060")},
		"three":     {[]byte("2"), []byte("0/1"), []byte("x")},
	} {
		if got, err := parseTimelineEnd(values); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: parseTimelineEnd = %+v, %v; want an ErrProtocol", name, got, err)
		}
	}
}

// FuzzParseReplies feeds the parsers of result sets values of any shape.
func FuzzParseReplies(f *testing.F) {
	f.Add([]byte("physical"), []byte("0/3000000"), []byte("1"))
	f.Add([]byte("00000002.history"), []byte("1\t0/3000148\tx\n"), []byte{})
	f.Add([]byte("2"), []byte("0/5000060"), []byte(nil))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		if s, err := parseSlot("s", &pgconn.Result{Rows: [][][]byte{{a, b, c}}}); err == nil {
			if s.Exists != (a != nil) || (s.RestartLSN == 0) != (s.RestartTLI == 0) {
				t.Fatalf("parseSlot(%q, %q, %q) = %+v", a, b, c, s)
			}
		}
		if name, content, err := parseTimelineHistory(2, &pgconn.Result{Rows: [][][]byte{{a, b}}}); err == nil {
			if name != "00000002.history" || !bytes.Equal(content, b) {
				t.Fatalf("parseTimelineHistory(%q, %q) = %q, %q", a, b, name, content)
			}
		}
		if end, err := parseTimelineEnd([][]byte{a, b}); err == nil && end.NextTLI == 0 {
			t.Fatalf("parseTimelineEnd(%q, %q) = %+v", a, b, end)
		} else if err != nil && !errors.Is(err, ErrProtocol) {
			t.Fatalf("parseTimelineEnd(%q, %q): %v is not an ErrProtocol", a, b, err)
		}
	})
}
