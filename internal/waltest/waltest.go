// Package waltest makes synthetic WAL files for tests: segments with a
// valid long page header (what walship checks before archiving) and
// deterministic content, compressible like real WAL or not at all.
package waltest

import (
	"encoding/binary"
	"math/rand/v2"

	"github.com/walship/walship/wal"
)

// PG15Magic is XLOG_PAGE_MAGIC of PostgreSQL 15.
const PG15Magic = 0xD110

// Segment returns a segment of segSize bytes for timeline tli and segment
// number seg of the cluster sysID, filled by fill and then given a long
// page header.
func Segment(sysID uint64, tli wal.TimeLineID, seg wal.SegNo, segSize int64, fill func([]byte)) (name string, data []byte) {
	data = make([]byte, segSize)
	if fill != nil {
		fill(data)
	}
	copy(data, Header(PG15Magic, tli, wal.SegmentStartLSN(seg, segSize), sysID, segSize))
	return wal.SegmentFileName(tli, seg, segSize), data
}

// Header builds a WAL long page header.
func Header(magic uint16, tli wal.TimeLineID, pageAddr wal.LSN, sysID uint64, segSize int64) []byte {
	h := make([]byte, wal.LongPageHeaderSize)
	binary.LittleEndian.PutUint16(h[0:], magic)
	binary.LittleEndian.PutUint16(h[2:], wal.XLPLongHeader)
	binary.LittleEndian.PutUint32(h[4:], uint32(tli))
	binary.LittleEndian.PutUint64(h[8:], uint64(pageAddr))
	binary.LittleEndian.PutUint64(h[24:], sysID)
	binary.LittleEndian.PutUint32(h[32:], uint32(segSize))
	binary.LittleEndian.PutUint32(h[36:], 8192)
	return h
}

// Compressible fills like WAL of a busy table: repeated records with a
// little variation.
func Compressible(seed uint64) func([]byte) {
	return func(b []byte) {
		r := rand.New(rand.NewPCG(seed, 1))
		rec := []byte("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ")
		for i := 0; i < len(b); {
			i += copy(b[i:], rec)
			if i < len(b) {
				b[i] = byte(r.IntN(256))
				i++
			}
		}
	}
}

// Incompressible fills with random bytes.
func Incompressible(seed uint64) func([]byte) {
	return func(b []byte) {
		rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}).Read(b)
	}
}
