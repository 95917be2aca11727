package failover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/walship/walship/wal"
)

// WAL record layout, as in PostgreSQL's xlogrecord.h and xlog_internal.h
// (13 to 18, MAXALIGN 8, little-endian).
const (
	recordHeaderSize = 24         // SizeOfXLogRecord
	maxRecordSize    = 1020 << 20 // XLogRecordMaxSize
	xlpContRecord    = 0x0001     // XLP_FIRST_IS_CONTRECORD
	xlpOverwrite     = 0x0008     // XLP_FIRST_IS_OVERWRITE_CONTRECORD
	rmXLOG           = 0          // RM_XLOG_ID
	xlogSwitch       = 0x40       // XLOG_SWITCH
	xlrInfoMask      = 0x0F       // XLR_INFO_MASK
	crcOffset        = 20         // offsetof(XLogRecord, xl_crc)
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli) // PostgreSQL's CRC-32C

// LastRecordEnd reads one WAL segment, .partial segment or snapshot of
// the first bytes of one (r), which starts at LSN start, and returns where
// the last WAL record complete within it ends — the position PostgreSQL's
// pg_last_wal_replay_lsn() reports once it has replayed that record: the
// byte after it rounded up to 8, or the end of the segment for a segment
// switch record. ok is false when no record ends in the data.
//
// It checks records as recovery does, and stops where recovery would: at
// the first page whose header does not belong at its place, at a zero
// record length (the unwritten end of WAL), at a record that does not
// point back at the one before it or fails its CRC, and at the end of the
// data. (A record continued from the previous segment is taken on its
// length alone: its header and CRC are there.) A damaged segment can only
// make the answer earlier, never later.
func LastRecordEnd(r io.Reader, start wal.LSN, segSize int64) (end wal.LSN, ok bool, err error) {
	if err := wal.CheckSegmentSize(segSize); err != nil {
		return 0, false, err
	}
	if wal.SegmentOffset(start, segSize) != 0 {
		return 0, false, fmt.Errorf("LSN %s is not the start of a WAL segment", start)
	}
	head := make([]byte, wal.LongPageHeaderSize)
	if _, err := io.ReadFull(r, head); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, false, nil // not even a page header: no record
		}
		return 0, false, err
	}
	first, err := wal.ParsePageHeader(head)
	if err != nil || !first.Long || first.PageAddr != start {
		return 0, false, nil
	}
	blck := int64(first.BlockSize)
	if blck < 1<<10 || blck > 64<<10 || blck&(blck-1) != 0 || segSize%blck != 0 {
		return 0, false, nil
	}
	w := walker{segStart: start, segEnd: start + wal.LSN(segSize), magic: first.Magic}
	page := make([]byte, blck)
	copy(page, head)
	for off := int64(0); off < segSize; off += blck {
		n := len(head)
		if off > 0 {
			n = 0
		}
		got, err := io.ReadFull(r, page[n:])
		n += got
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, false, err
		}
		if !w.page(page[:n], start+wal.LSN(off), blck) || n < int(blck) {
			break
		}
	}
	return w.lastEnd, w.found, nil
}

// walker follows WAL records from page to page.
type walker struct {
	segStart, segEnd wal.LSN
	magic            uint16

	inRecord  bool   // inside a record that continues
	need      int64  // bytes of the current record still to come
	header    []byte // the current record's header, as far as read
	start     wal.LSN
	known     bool   // start is known (not a record continued from the previous segment)
	crc       uint32 // CRC-32C of the record's data after its header, so far
	prev      wal.LSN
	prevKnown bool

	lastEnd wal.LSN
	found   bool
}

// page walks one page (data holds its valid bytes) and reports whether
// the WAL goes on after it.
func (w *walker) page(data []byte, pageLSN wal.LSN, blck int64) bool {
	h, err := wal.ParsePageHeader(data)
	if err != nil || h.Magic != w.magic || h.PageAddr != pageLSN {
		return false
	}
	pos := int64(wal.ShortPageHeaderSize)
	if h.Long {
		pos = wal.LongPageHeaderSize
	}
	if int64(len(data)) < pos {
		return false
	}
	switch {
	case w.inRecord && h.Info&xlpContRecord != 0:
		if int64(h.RemLen) != w.need {
			return false
		}
	case w.inRecord && h.Info&xlpOverwrite != 0:
		// The record was never finished: the server that wrote it
		// crashed, and what follows on this page replaced its rest.
		w.inRecord = false
	case w.inRecord:
		return false
	case h.Info&xlpContRecord != 0:
		if pageLSN != w.segStart || h.RemLen == 0 {
			return false
		}
		// The tail of a record begun in the previous segment: it ends
		// here, but where it starts (and so what the next record's
		// back pointer must be) is unknown.
		w.inRecord, w.need, w.known = true, int64(h.RemLen), false
		w.header = w.header[:0]
		w.header = append(w.header, make([]byte, recordHeaderSize)...)
	}
	for pos < int64(len(data)) {
		if !w.inRecord {
			if int64(len(data))-pos < 4 {
				return false
			}
			total := int64(binary.LittleEndian.Uint32(data[pos:]))
			if total < recordHeaderSize || total > maxRecordSize {
				return false // zero: the end of what was written
			}
			w.inRecord, w.need = true, total
			w.start, w.known = pageLSN+wal.LSN(pos), true
			w.header, w.crc = w.header[:0], 0
		}
		take := min(w.need, int64(len(data))-pos)
		chunk := data[pos : pos+take]
		if missing := recordHeaderSize - len(w.header); missing > 0 {
			n := min(len(chunk), missing)
			w.header = append(w.header, chunk[:n]...)
			chunk = chunk[n:]
			if len(w.header) == recordHeaderSize && w.known && w.prevKnown &&
				wal.LSN(binary.LittleEndian.Uint64(w.header[8:])) != w.prev {
				return false // not the record that follows the last one
			}
		}
		w.crc = crc32.Update(w.crc, castagnoli, chunk)
		pos += take
		w.need -= take
		if w.need > 0 {
			return pos == blck // goes on on the next page, if there is one
		}
		w.inRecord = false
		if w.known && crc32.Update(w.crc, castagnoli, w.header[:crcOffset]) != binary.LittleEndian.Uint32(w.header[crcOffset:]) {
			return false // torn or damaged: recovery ends before it
		}
		w.lastEnd, w.found = pageLSN+wal.LSN(align8(pos)), true
		w.prev, w.prevKnown = w.start, w.known
		if w.header[17] == rmXLOG && w.header[16]&^xlrInfoMask == xlogSwitch && w.known {
			// A segment switch fills the rest of the segment.
			w.lastEnd = w.segEnd
			return false
		}
		pos = align8(pos)
	}
	return pos >= blck
}

func align8(n int64) int64 { return (n + 7) &^ 7 }
