package wal

import (
	"encoding/binary"
	"fmt"
)

// PageHeader is the header at the start of every WAL page
// (XLogPageHeaderData), with the fields of the long header
// (XLogLongPageHeaderData) that begins the first page of each segment.
type PageHeader struct {
	Magic    uint16     // xlp_magic: the WAL format version, see MagicVersion
	Info     uint16     // xlp_info: flag bits
	TLI      TimeLineID // xlp_tli: timeline of the first record on the page
	PageAddr LSN        // xlp_pageaddr: LSN of the page's first byte
	RemLen   uint32     // xlp_rem_len: bytes of a record continued from the previous page

	// Long is true when Info has XLPLongHeader; only then are the fields
	// below read.
	Long      bool
	SysID     uint64 // xlp_sysid: the cluster's system identifier (pg_control)
	SegSize   uint32 // xlp_seg_size: the cluster's WAL segment size
	BlockSize uint32 // xlp_xlog_blcksz: the WAL page size (XLOG_BLCKSZ)
}

// Header sizes and flags as in PostgreSQL's xlog_internal.h (13 to 18,
// MAXALIGN 8).
const (
	ShortPageHeaderSize = 24 // SizeOfXLogShortPHD
	LongPageHeaderSize  = 40 // SizeOfXLogLongPHD
	XLPLongHeader       = 0x0002

	// xlpAllFlags is every xlp_info bit PostgreSQL 13 to 18 define:
	// XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER, XLP_BKP_REMOVABLE and
	// XLP_FIRST_IS_OVERWRITE_CONTRECORD.
	xlpAllFlags = 0x000F

	// WAL page sizes PostgreSQL can be built with (--with-wal-blocksize).
	minBlockSize = 1 << 10
	maxBlockSize = 64 << 10
)

// ParsePageHeader decodes a WAL page header from the start of b: the short
// header, and the long fields too when Info has XLPLongHeader. It fails only
// when b is too short for the header it announces; it does not judge the
// values (see CheckSegmentHeader).
func ParsePageHeader(b []byte) (PageHeader, error) {
	if len(b) < ShortPageHeaderSize {
		return PageHeader{}, invalid(ErrInvalidHeader, fmt.Sprintf(
			"WAL page header needs %d bytes, got %d", ShortPageHeaderSize, len(b)))
	}
	le := binary.LittleEndian
	h := PageHeader{
		Magic:    le.Uint16(b[0:]),
		Info:     le.Uint16(b[2:]),
		TLI:      TimeLineID(le.Uint32(b[4:])),
		PageAddr: LSN(le.Uint64(b[8:])),
		RemLen:   le.Uint32(b[16:]),
		// b[20:24] is alignment padding.
	}
	if h.Info&XLPLongHeader == 0 {
		return h, nil
	}
	if len(b) < LongPageHeaderSize {
		return PageHeader{}, invalid(ErrInvalidHeader, fmt.Sprintf(
			"WAL long page header needs %d bytes, got %d", LongPageHeaderSize, len(b)))
	}
	h.Long = true
	h.SysID = le.Uint64(b[24:])
	h.SegSize = le.Uint32(b[32:])
	h.BlockSize = le.Uint32(b[36:])
	return h, nil
}

// MagicVersion maps a WAL page magic (XLOG_PAGE_MAGIC) to the PostgreSQL
// major version that writes it, for the versions walship supports (13 to
// 18). ok is false for any other value.
func MagicVersion(magic uint16) (major int, ok bool) {
	switch magic {
	case 0xD106:
		return 13, true
	case 0xD10D:
		return 14, true
	case 0xD110:
		return 15, true
	case 0xD113:
		return 16, true
	case 0xD116:
		return 17, true
	case 0xD118:
		return 18, true
	}
	return 0, false
}

// CheckSegmentHeader validates the first bytes of a WAL segment or partial
// segment named name, from a cluster whose segments are segSize bytes: a
// long page header with a known magic and flags, a page address equal to
// the segment's start, the same segment size, a plausible WAL block size,
// and a page timeline no newer than the name's. (The first segment of a new
// timeline starts with a page copied from the parent timeline, so its
// header may carry an older timeline.) It returns the parsed header, whose
// SysID and Magic the caller compares with the archive's.
//
// Errors are one line, say what is wrong and match ErrInvalidHeader (or
// ErrInvalidSegmentSize / ErrInvalidName for bad arguments).
func CheckSegmentHeader(first []byte, name FileName, segSize int64) (PageHeader, error) {
	if name.Kind != KindSegment && name.Kind != KindPartial {
		return PageHeader{}, fmt.Errorf("%s is a %s, not a WAL segment: it has no page header", name, name.Kind)
	}
	if err := CheckSegmentSize(segSize); err != nil {
		return PageHeader{}, err
	}
	file := name.String()
	bad := func(format string, args ...any) (PageHeader, error) {
		return PageHeader{}, invalid(ErrInvalidHeader, fmt.Sprintf(format, args...))
	}
	if len(first) < LongPageHeaderSize {
		return bad("%s is too short to be a WAL segment: %d bytes, its first page header alone takes %d",
			file, len(first), LongPageHeaderSize)
	}
	h, err := ParsePageHeader(first)
	if err != nil {
		return PageHeader{}, err // cannot happen with 40 bytes; kept for safety
	}
	if _, ok := MagicVersion(h.Magic); !ok {
		return bad("%s is not WAL of PostgreSQL 13 to 18: page magic 0x%04X is unknown (a newer PostgreSQL, or not a WAL file)", file, h.Magic)
	}
	if h.Info&^xlpAllFlags != 0 {
		return bad("%s has invalid page header flags 0x%04X", file, h.Info)
	}
	if !h.Long {
		return bad("%s does not start with a long page header, as the first page of a WAL segment must", file)
	}
	if int64(h.SegSize) != segSize {
		return bad("%s comes from a cluster with %s WAL segments, not %s", file, formatSize(int64(h.SegSize)), formatSize(segSize))
	}
	if h.BlockSize < minBlockSize || h.BlockSize > maxBlockSize || h.BlockSize&(h.BlockSize-1) != 0 {
		return bad("%s has an invalid WAL block size %d (PostgreSQL uses a power of two from 1 kB to 64 kB)", file, h.BlockSize)
	}
	seg, err := name.SegNo(segSize)
	if err != nil {
		return PageHeader{}, err
	}
	if want := SegmentStartLSN(seg, segSize); h.PageAddr != want {
		return bad("page address %s does not match segment %s, which starts at %s", h.PageAddr, name.SegmentName(), want)
	}
	if h.TLI == 0 {
		return bad("%s has timeline 0 in its page header; timelines start at 1", file)
	}
	if h.TLI > name.TLI {
		return bad("page header timeline %d is newer than timeline %d of %s", h.TLI, name.TLI, file)
	}
	return h, nil
}
