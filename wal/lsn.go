package wal

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a log sequence number: a byte position in the write-ahead log of
// one cluster, across all of its timelines.
type LSN uint64

// String formats the LSN as PostgreSQL does: two hexadecimal halves
// separated by a slash, such as "16/B374D848".
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// ParseLSN parses an LSN written as PostgreSQL writes it ("16/B374D848").
// Each half has 1 to 8 hexadecimal digits in either case, so zero-padded
// forms ("0/03000000") are accepted too.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || !isLSNHalf(hi) || !isLSNHalf(lo) {
		return 0, invalid(ErrInvalidLSN, fmt.Sprintf(
			"invalid LSN %s: want two hexadecimal numbers of 1 to 8 digits separated by a slash, such as 16/B374D848",
			quote(s)))
	}
	h, _ := strconv.ParseUint(hi, 16, 32) // cannot fail: checked above
	l, _ := strconv.ParseUint(lo, 16, 32)
	return LSN(h<<32 | l), nil
}

func isLSNHalf(s string) bool {
	if len(s) < 1 || len(s) > 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// MarshalText formats the LSN like String, so that LSNs read naturally in
// JSON and configuration files.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses text with ParseLSN.
func (l *LSN) UnmarshalText(text []byte) error {
	v, err := ParseLSN(string(text))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// TimeLineID identifies a timeline: 1 for a new cluster, one more at every
// promotion or point-in-time recovery that ends. 0 is never a valid timeline.
type TimeLineID uint32

// SegNo numbers WAL segments from the start of the log: segment n holds the
// LSNs from n*segSize up to (n+1)*segSize. The number does not depend on the
// timeline, only on the segment size.
type SegNo uint64

// WAL segment sizes PostgreSQL accepts (initdb --wal-segsize).
const (
	MinSegmentSize     = 1 << 20
	MaxSegmentSize     = 1 << 30
	DefaultSegmentSize = 16 << 20 // when initdb was not told otherwise
)

// CheckSegmentSize reports whether size (in bytes) is a WAL segment size
// PostgreSQL can use: a power of two from 1 MB to 1 GB.
func CheckSegmentSize(size int64) error {
	if size < MinSegmentSize || size > MaxSegmentSize || size&(size-1) != 0 {
		return invalid(ErrInvalidSegmentSize, fmt.Sprintf(
			"invalid WAL segment size %d bytes: it must be a power of two from 1 MB to 1 GB (PostgreSQL's wal_segment_size, 16 MB unless initdb --wal-segsize chose another)",
			size))
	}
	return nil
}

// mustSegmentSize panics on a size CheckSegmentSize rejects; see the package
// documentation for why that is a programming error.
func mustSegmentSize(size int64) {
	if err := CheckSegmentSize(size); err != nil {
		panic("wal: " + err.Error())
	}
}

// segmentsPerLog is how many segments share one value of the middle eight
// hex digits of a segment name (PostgreSQL's XLogSegmentsPerXLogId).
func segmentsPerLog(segSize int64) uint64 {
	return 0x100000000 / uint64(segSize)
}

// checkSegNo panics if seg lies beyond the 64-bit LSN space, where it has
// neither a start LSN nor a name. No SegNo from a file name or an LSN does.
func checkSegNo(seg SegNo, segSize int64) {
	if uint64(seg) > ^uint64(0)/uint64(segSize) {
		panic(fmt.Sprintf("wal: segment number %d is beyond the end of the WAL for %s segments", seg, formatSize(segSize)))
	}
}

// SegmentStartLSN returns the LSN of the first byte of segment seg. It
// panics if segSize is invalid or seg lies beyond the LSN space.
func SegmentStartLSN(seg SegNo, segSize int64) LSN {
	mustSegmentSize(segSize)
	checkSegNo(seg, segSize)
	return LSN(uint64(seg) * uint64(segSize))
}

// LSNToSegNo returns the number of the segment that holds lsn
// (PostgreSQL's XLByteToSeg). It panics if segSize is invalid.
func LSNToSegNo(lsn LSN, segSize int64) SegNo {
	mustSegmentSize(segSize)
	return SegNo(uint64(lsn) / uint64(segSize))
}

// SegmentOffset returns the position of lsn inside its segment
// (PostgreSQL's XLogSegmentOffset). It panics if segSize is invalid.
func SegmentOffset(lsn LSN, segSize int64) int64 {
	mustSegmentSize(segSize)
	return int64(uint64(lsn) & uint64(segSize-1))
}

// formatSize writes a segment or block size the way operators state it.
func formatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d kB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
