package wal

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want LSN
		ok   bool
	}{
		{"16/B374D848", 0x16_B374D848, true},
		{"0/0", 0, true},
		{"0/3000000", 0x3000000, true},
		{"0/03000000", 0x3000000, true}, // zero-padded form
		{"00000000/00000000", 0, true},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0), true},
		{"ab/cdef", 0xAB_0000CDEF, true}, // PostgreSQL's pg_lsn accepts lowercase
		{"", 0, false},
		{"/", 0, false},
		{"0/", 0, false},
		{"/0", 0, false},
		{"0", 0, false},
		{"0/0/0", 0, false},
		{"100000000/0", 0, false}, // 9 digits
		{"0/100000000", 0, false},
		{"0x1/0", 0, false},
		{"+1/0", 0, false},
		{"-1/0", 0, false},
		{" 1/0", 0, false},
		{"1/0 ", 0, false},
		{"1/0\n", 0, false},
		{"G/0", 0, false},
		{"1_0/0", 0, false},
		{"1/0\x00", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if tt.ok {
			if err != nil || got != tt.want {
				t.Errorf("ParseLSN(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseLSN(%q) = %v, want an error", tt.in, got)
			continue
		}
		if !errors.Is(err, ErrInvalidLSN) {
			t.Errorf("ParseLSN(%q) error %v does not match ErrInvalidLSN", tt.in, err)
		}
		if !strings.Contains(err.Error(), "16/B374D848") {
			t.Errorf("ParseLSN(%q) error %q does not show a valid LSN", tt.in, err)
		}
	}
}

func TestLSNString(t *testing.T) {
	tests := []struct {
		lsn  LSN
		want string
	}{
		{0, "0/0"},
		{0x16_B374D848, "16/B374D848"},
		{0x3000000, "0/3000000"},
		{0x1_00000000, "1/0"},
		{^LSN(0), "FFFFFFFF/FFFFFFFF"},
	}
	for _, tt := range tests {
		if got := tt.lsn.String(); got != tt.want {
			t.Errorf("LSN(%#x).String() = %q, want %q", uint64(tt.lsn), got, tt.want)
		}
		back, err := ParseLSN(tt.want)
		if err != nil || back != tt.lsn {
			t.Errorf("ParseLSN(%q) = %v, %v; want %#x", tt.want, back, err, uint64(tt.lsn))
		}
	}
}

func TestLSNJSON(t *testing.T) {
	type doc struct {
		Start LSN `json:"start_lsn"`
	}
	b, err := json.Marshal(doc{Start: 0x16_B374D848})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"start_lsn":"16/B374D848"}` {
		t.Fatalf("json = %s", b)
	}
	var d doc
	if err := json.Unmarshal(b, &d); err != nil || d.Start != 0x16_B374D848 {
		t.Fatalf("Unmarshal = %v, %v", d.Start, err)
	}
	if err := json.Unmarshal([]byte(`{"start_lsn":"nonsense"}`), &d); !errors.Is(err, ErrInvalidLSN) {
		t.Fatalf("Unmarshal of a bad LSN: %v", err)
	}
}

func TestCheckSegmentSize(t *testing.T) {
	for shift := 0; shift < 63; shift++ {
		size := int64(1) << shift
		err := CheckSegmentSize(size)
		if want := shift >= 20 && shift <= 30; (err == nil) != want {
			t.Errorf("CheckSegmentSize(1<<%d) = %v", shift, err)
		}
	}
	for _, size := range []int64{0, -1, -(1 << 24), 3 << 20, 1<<20 + 1, 1<<24 - 1, 1<<30 + 1<<20, 1 << 31} {
		err := CheckSegmentSize(size)
		if err == nil {
			t.Errorf("CheckSegmentSize(%d) = nil, want an error", size)
			continue
		}
		if !errors.Is(err, ErrInvalidSegmentSize) || !strings.Contains(err.Error(), "power of two from 1 MB to 1 GB") {
			t.Errorf("CheckSegmentSize(%d) = %q", size, err)
		}
	}
}

// TestSegmentArithmetic checks names, numbers and LSNs around the points
// where the segment part of a name rolls over into the log part.
func TestSegmentArithmetic(t *testing.T) {
	tests := []struct {
		segSize int64
		seg     SegNo
		name    string // on timeline 1
		start   LSN
	}{
		{1 << 20, 0, "000000010000000000000000", 0},
		{1 << 20, 1, "000000010000000000000001", 0x100000},
		{1 << 20, 4095, "000000010000000000000FFF", 0xFFF00000},
		{1 << 20, 4096, "000000010000000100000000", 0x1_00000000},
		{1 << 20, 4097, "000000010000000100000001", 0x1_00100000},
		{1 << 20, 1<<44 - 1, "00000001FFFFFFFF00000FFF", 0xFFFFFFFF_FFF00000},
		{16 << 20, 1, "000000010000000000000001", 0x1000000},
		{16 << 20, 2, "000000010000000000000002", 0x2000000},
		{16 << 20, 255, "0000000100000000000000FF", 0xFF000000},
		{16 << 20, 256, "000000010000000100000000", 0x1_00000000},
		{16 << 20, 0x16B3, "0000000100000016000000B3", 0x16_B3000000},
		{16 << 20, 1<<40 - 1, "00000001FFFFFFFF000000FF", 0xFFFFFFFF_FF000000},
		{1 << 30, 1, "000000010000000000000001", 0x40000000},
		{1 << 30, 3, "000000010000000000000003", 0xC0000000},
		{1 << 30, 4, "000000010000000100000000", 0x1_00000000},
		{1 << 30, 5, "000000010000000100000001", 0x1_40000000},
		{1 << 30, 1<<34 - 1, "00000001FFFFFFFF00000003", 0xFFFFFFFF_C0000000},
	}
	for _, tt := range tests {
		if got := SegmentFileName(1, tt.seg, tt.segSize); got != tt.name {
			t.Errorf("SegmentFileName(1, %d, %s) = %s, want %s", tt.seg, formatSize(tt.segSize), got, tt.name)
		}
		if got := SegmentStartLSN(tt.seg, tt.segSize); got != tt.start {
			t.Errorf("SegmentStartLSN(%d, %s) = %s, want %s", tt.seg, formatSize(tt.segSize), got, tt.start)
		}
		// Every byte of the segment maps back to it.
		for _, lsn := range []LSN{tt.start, tt.start + 1, tt.start + LSN(tt.segSize) - 1} {
			if got := LSNToSegNo(lsn, tt.segSize); got != tt.seg {
				t.Errorf("LSNToSegNo(%s, %s) = %d, want %d", lsn, formatSize(tt.segSize), got, tt.seg)
			}
		}
		if got := SegmentOffset(tt.start+123, tt.segSize); got != 123 {
			t.Errorf("SegmentOffset(%s+123, %s) = %d", tt.start, formatSize(tt.segSize), got)
		}
		f, err := ParseFileName(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := f.SegNo(tt.segSize); err != nil || got != tt.seg {
			t.Errorf("%s.SegNo(%s) = %d, %v; want %d", tt.name, formatSize(tt.segSize), got, err, tt.seg)
		}
		if got, err := f.StartLSN(tt.segSize); err != nil || got != tt.start {
			t.Errorf("%s.StartLSN(%s) = %s, %v; want %s", tt.name, formatSize(tt.segSize), got, err, tt.start)
		}
	}
	// The last byte of the LSN space is in the last segment.
	for _, size := range []int64{1 << 20, 16 << 20, 1 << 30} {
		last := LSNToSegNo(^LSN(0), size)
		if SegmentStartLSN(last, size)+LSN(size-1) != ^LSN(0) {
			t.Errorf("%s: last segment %d does not end at FFFFFFFF/FFFFFFFF", formatSize(size), last)
		}
	}
}

func TestSegmentArithmeticPanics(t *testing.T) {
	mustPanic := func(name string, fn func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", name)
			}
		}()
		fn()
	}
	mustPanic("SegmentFileName with size 0", func() { SegmentFileName(1, 1, 0) })
	mustPanic("SegmentStartLSN with size 3 MB", func() { SegmentStartLSN(1, 3<<20) })
	mustPanic("LSNToSegNo with size 2 GB", func() { LSNToSegNo(1, 2<<30) })
	mustPanic("SegmentOffset with size -1", func() { SegmentOffset(1, -1) })
	mustPanic("SegmentFileName beyond the LSN space", func() { SegmentFileName(1, 1<<40, 16<<20) })
	mustPanic("SegmentStartLSN beyond the LSN space", func() { SegmentStartLSN(1<<44, 1<<20) })
}
