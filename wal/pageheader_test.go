package wal

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixtureDir holds the first page of real WAL segments; its README.txt says
// how they were made.
const fixtureDir = "../testdata/wal"

// segmentFixture is the first page of one archived segment from a real
// cluster, with what the cluster reported about itself.
type segmentFixture struct {
	file     string // in fixtureDir
	name     string // the segment's archive name
	major    int    // PostgreSQL major version
	sysID    uint64 // SELECT system_identifier FROM pg_control_system()
	segSize  int64
	info     uint16
	tli      TimeLineID // in the page header
	pageAddr LSN
	remLen   uint32
}

var segmentFixtures = []segmentFixture{
	{"pg13-16mb-000000010000000000000001.page", "000000010000000000000001", 13, 7710817670789201617, 16 << 20, 0x0002, 1, 0x1000000, 0},
	{"pg13-1mb-000000010000000000000006.page", "000000010000000000000006", 13, 7710817685722078990, 1 << 20, 0x0007, 1, 0x600000, 0x1B},
	{"pg15-16mb-000000010000000000000001.page", "000000010000000000000001", 15, 7710817639733050960, 16 << 20, 0x0002, 1, 0x1000000, 0},
	{"pg15-1mb-000000010000000000000006.page", "000000010000000000000006", 15, 7710817656267050645, 1 << 20, 0x0007, 1, 0x600000, 0xD9},
	{"pg17-16mb-000000010000000000000001.page", "000000010000000000000001", 17, 7710817709192204107, 16 << 20, 0x0002, 1, 0x1000000, 0},
	{"pg17-1mb-000000010000000000000005.page", "000000010000000000000005", 17, 7710817730343825287, 1 << 20, 0x0007, 1, 0x500000, 0x40},
	{"pg18-16mb-000000010000000000000001.page", "000000010000000000000001", 18, 7710817749844328403, 16 << 20, 0x0002, 1, 0x1000000, 0},
	{"pg18-1mb-000000010000000000000008.page", "000000010000000000000008", 18, 7710817766613528639, 1 << 20, 0x0007, 1, 0x800000, 0x7F1},
	// The old timeline's last segment, renamed by the promotion.
	{"pg15-16mb-000000010000000000000006.partial.page", "000000010000000000000006.partial", 15, 7710817639733050960, 16 << 20, 0x0006, 1, 0x6000000, 0},
	// The new timeline's first segment: copied from timeline 1, so its
	// first page header still says timeline 1.
	{"pg15-16mb-000000020000000000000006.page", "000000020000000000000006", 15, 7710817639733050960, 16 << 20, 0x0006, 1, 0x6000000, 0},
}

func readFixture(t testing.TB, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustParseFileName(t testing.TB, name string) FileName {
	t.Helper()
	f, err := ParseFileName(name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestSegmentFixtures(t *testing.T) {
	for _, fx := range segmentFixtures {
		t.Run(fx.file, func(t *testing.T) {
			page := readFixture(t, fx.file)
			if len(page) != 8192 {
				t.Fatalf("fixture is %d bytes, want one 8 KiB page", len(page))
			}
			h, err := CheckSegmentHeader(page, mustParseFileName(t, fx.name), fx.segSize)
			if err != nil {
				t.Fatal(err)
			}
			want := PageHeader{
				Magic:     h.Magic, // checked through MagicVersion below
				Info:      fx.info,
				TLI:       fx.tli,
				PageAddr:  fx.pageAddr,
				RemLen:    fx.remLen,
				Long:      true,
				SysID:     fx.sysID,
				SegSize:   uint32(fx.segSize),
				BlockSize: 8192,
			}
			if h != want {
				t.Errorf("header = %+v\nwant     %+v", h, want)
			}
			if major, ok := MagicVersion(h.Magic); !ok || major != fx.major {
				t.Errorf("MagicVersion(0x%04X) = %d, %v; want %d", h.Magic, major, ok, fx.major)
			}
			// ParsePageHeader alone reads the same header.
			if p, err := ParsePageHeader(page); err != nil || p != h {
				t.Errorf("ParsePageHeader = %+v, %v", p, err)
			}
		})
	}
}

func TestMagicVersion(t *testing.T) {
	want := map[uint16]int{0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
	for magic := 0; magic <= 0xFFFF; magic++ {
		major, ok := MagicVersion(uint16(magic))
		if w, known := want[uint16(magic)]; ok != known || major != w {
			t.Errorf("MagicVersion(0x%04X) = %d, %v; want %d, %v", magic, major, ok, w, known)
		}
	}
}

func TestParsePageHeaderShortInput(t *testing.T) {
	page := readFixture(t, "pg15-16mb-000000010000000000000001.page")
	for _, n := range []int{0, 1, 23, 24, 39} {
		_, err := ParsePageHeader(page[:n])
		if err == nil || !errors.Is(err, ErrInvalidHeader) {
			t.Errorf("ParsePageHeader(%d bytes of a long header) = %v, want an error", n, err)
		}
	}
	if _, err := ParsePageHeader(nil); err == nil {
		t.Error("ParsePageHeader(nil) succeeded")
	}
	// A short header needs only 24 bytes.
	short := append([]byte(nil), page[:24]...)
	binary.LittleEndian.PutUint16(short[2:], 0)
	h, err := ParsePageHeader(short)
	if err != nil || h.Long || h.SysID != 0 || h.PageAddr != 0x1000000 || h.TLI != 1 {
		t.Errorf("ParsePageHeader(short header) = %+v, %v", h, err)
	}
}

// TestCheckSegmentHeaderTampered damages copies of a real header one field
// at a time and checks each is caught with a message that says what.
func TestCheckSegmentHeaderTampered(t *testing.T) {
	const (
		file    = "pg15-16mb-000000010000000000000001.page"
		name    = "000000010000000000000001"
		segSize = 16 << 20
	)
	orig := readFixture(t, file)
	le := binary.LittleEndian
	tests := []struct {
		desc    string
		tamper  func(b []byte) []byte
		name    string
		segSize int64
		err     string // substring of the message; "" for success
		is      error
	}{
		{"untouched", nil, name, segSize, "", nil},
		{"other segment", nil, "000000010000000000000002", segSize,
			"page address 0/1000000 does not match segment 000000010000000000000002, which starts at 0/2000000", ErrInvalidHeader},
		{"page address", func(b []byte) []byte { le.PutUint64(b[8:], 0x3000000); return b }, name, segSize,
			"page address 0/3000000 does not match segment 000000010000000000000001", ErrInvalidHeader},
		{"page address off by a page", func(b []byte) []byte { le.PutUint64(b[8:], 0x1002000); return b }, name, segSize,
			"page address 0/1002000 does not match", ErrInvalidHeader},
		{"later timeline in the name", nil, "000000050000000000000001", segSize, "", nil},
		{"newer timeline in the header", func(b []byte) []byte { le.PutUint32(b[4:], 3); return b }, name, segSize,
			"page header timeline 3 is newer than timeline 1 of 000000010000000000000001", ErrInvalidHeader},
		{"timeline 0", func(b []byte) []byte { le.PutUint32(b[4:], 0); return b }, name, segSize,
			"timeline 0", ErrInvalidHeader},
		{"unknown magic", func(b []byte) []byte { le.PutUint16(b[0:], 0xD120); return b }, name, segSize,
			"page magic 0xD120 is unknown", ErrInvalidHeader},
		{"not WAL at all", func(b []byte) []byte { copy(b, "%PDF-1.7 not a WAL file at all, no no no"); return b }, name, segSize,
			"is not WAL of PostgreSQL 13 to 18", ErrInvalidHeader},
		{"zeroes", func(b []byte) []byte { clear(b); return b }, name, segSize,
			"page magic 0x0000 is unknown", ErrInvalidHeader},
		{"unknown flag", func(b []byte) []byte { le.PutUint16(b[2:], 0x0012); return b }, name, segSize,
			"invalid page header flags 0x0012", ErrInvalidHeader},
		{"short header", func(b []byte) []byte { le.PutUint16(b[2:], 0x0001); return b }, name, segSize,
			"does not start with a long page header", ErrInvalidHeader},
		{"segment size in header", func(b []byte) []byte { le.PutUint32(b[32:], 1<<20); return b }, name, segSize,
			"comes from a cluster with 1 MB WAL segments, not 16 MB", ErrInvalidHeader},
		{"archive expects 64 MB", nil, name, 64 << 20,
			"comes from a cluster with 16 MB WAL segments, not 64 MB", ErrInvalidHeader},
		{"block size 3000", func(b []byte) []byte { le.PutUint32(b[36:], 3000); return b }, name, segSize,
			"invalid WAL block size 3000", ErrInvalidHeader},
		{"block size 512", func(b []byte) []byte { le.PutUint32(b[36:], 512); return b }, name, segSize,
			"invalid WAL block size 512", ErrInvalidHeader},
		{"block size 128k", func(b []byte) []byte { le.PutUint32(b[36:], 128<<10); return b }, name, segSize,
			"invalid WAL block size 131072", ErrInvalidHeader},
		{"block size 1k", func(b []byte) []byte { le.PutUint32(b[36:], 1<<10); return b }, name, segSize, "", nil},
		{"block size 64k", func(b []byte) []byte { le.PutUint32(b[36:], 64<<10); return b }, name, segSize, "", nil},
		{"truncated to 39 bytes", func(b []byte) []byte { return b[:39] }, name, segSize,
			"000000010000000000000001 is too short to be a WAL segment: 39 bytes", ErrInvalidHeader},
		{"empty", func(b []byte) []byte { return b[:0] }, name, segSize,
			"too short", ErrInvalidHeader},
		{"exactly the long header", func(b []byte) []byte { return b[:40] }, name, segSize, "", nil},
		{"history name", nil, "00000002.history", segSize,
			"00000002.history is a timeline history file, not a WAL segment", nil},
		{"backup history name", nil, "000000010000000000000001.00000028.backup", segSize,
			"is a backup history file, not a WAL segment", nil},
		{"invalid segment size", nil, name, 3 << 20, "power of two", ErrInvalidSegmentSize},
		{"segment beyond 1 GB range", nil, "000000010000000000000004", 1 << 30,
			"comes from a cluster with 16 MB WAL segments, not 1 GB", ErrInvalidHeader},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			b := append([]byte(nil), orig...)
			if tt.tamper != nil {
				b = tt.tamper(b)
			}
			f := mustParseFileName(t, tt.name)
			h, err := CheckSegmentHeader(b, f, tt.segSize)
			if tt.err == "" {
				if err != nil {
					t.Fatalf("CheckSegmentHeader: %v", err)
				}
				if h.SysID != 7710817639733050960 {
					t.Errorf("SysID = %d", h.SysID)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckSegmentHeader succeeded, want an error containing %q", tt.err)
			}
			if !strings.Contains(err.Error(), tt.err) {
				t.Errorf("error %q does not contain %q", err, tt.err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q does not match %v", err, tt.is)
			}
		})
	}
}

// TestCheckSegmentHeaderSegmentOutOfRange checks a name whose segment part
// cannot exist with the right segment size.
func TestCheckSegmentHeaderSegmentOutOfRange(t *testing.T) {
	b := append([]byte(nil), readFixture(t, "pg15-16mb-000000010000000000000001.page")...)
	_, err := CheckSegmentHeader(b, mustParseFileName(t, "000000010000000000000100"), 16<<20)
	if !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), "000000FF") {
		t.Fatalf("CheckSegmentHeader = %v", err)
	}
}
