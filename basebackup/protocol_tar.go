package basebackup

import (
	"bytes"
	"errors"
	"strconv"
)

// tarBlock is the size of a tar header and the unit of tar data.
const tarBlock = 512

// maxTarEntrySize bounds an entry's size so that offsets cannot overflow;
// far above any file PostgreSQL has.
const maxTarEntrySize = 1 << 56

// tarFraming follows the block structure of a tar archive as it streams
// by, without keeping more than one header: where each entry's header
// starts, how much data follows it, and whether the archive already ends
// with the two zero blocks that terminate a tar archive.
//
// PostgreSQL 13 and 14 end each archive without them (pg_basebackup
// appends them); 15 and later send them. Telling the two apart takes the
// framing: the main archive ends with pg_control, whose last kilobyte is
// zeros too.
//
// It reads headers the way Go's archive/tar does (checksum, octal or
// base-256 size, no data for links, directories, devices and FIFOs) and
// rejects the entry types whose framing depends on more than the header
// (pax extended headers, old GNU sparse files), which PostgreSQL never
// writes.
type tarFraming struct {
	off   int64 // bytes of the archive seen so far
	hdr   [tarBlock]byte
	nhdr  int   // bytes of the current header block collected in hdr
	skip  int64 // entry data and padding still to pass
	zeros int   // zero blocks in a row where a header belongs
	done  bool  // two zero blocks seen: the archive is complete
}

// feed passes the next bytes of the archive.
func (t *tarFraming) feed(p []byte) error {
	for len(p) > 0 && !t.done {
		if t.skip > 0 {
			n := int64(len(p))
			if n > t.skip {
				n = t.skip
			}
			t.skip -= n
			t.off += n
			p = p[n:]
			continue
		}
		n := copy(t.hdr[t.nhdr:], p)
		t.nhdr += n
		t.off += int64(n)
		p = p[n:]
		if t.nhdr < tarBlock {
			return nil
		}
		t.nhdr = 0
		at := t.off - tarBlock
		if isZeroBlock(t.hdr[:]) {
			t.zeros++
			t.done = t.zeros == 2
			continue
		}
		if t.zeros > 0 {
			return protocolErrorf("tar header at offset %d follows a single zero block", at)
		}
		size, err := tarEntryDataSize(t.hdr[:])
		if err != nil {
			return protocolErrorf("malformed tar header at offset %d: %v", at, err)
		}
		t.skip = (size + tarBlock - 1) / tarBlock * tarBlock
	}
	// Bytes after the terminator (padding to a record size) are left as
	// they are: tar readers stop at the terminator.
	return nil
}

// end reports how many zero bytes complete the archive, or an error if
// the archive stopped inside an entry.
func (t *tarFraming) end() (zeros int, err error) {
	switch {
	case t.done:
		return 0, nil
	case t.skip > 0 || t.nhdr > 0:
		return 0, protocolErrorf("the archive ends inside an entry after %d bytes", t.off)
	default:
		return (2 - t.zeros) * tarBlock, nil
	}
}

// tarEntryDataSize checks a non-zero header block and returns how many
// bytes of data follow it (before padding).
func tarEntryDataSize(h []byte) (int64, error) {
	sum, ok := parseTarOctal(h[148:156])
	if !ok {
		return 0, errors.New("unreadable checksum")
	}
	var unsigned, signed int64
	for i, c := range h {
		if 148 <= i && i < 156 {
			c = ' '
		}
		unsigned += int64(c)
		signed += int64(int8(c))
	}
	if sum != unsigned && sum != signed {
		return 0, errors.New("checksum mismatch")
	}
	switch typeflag := h[156]; typeflag {
	case '1', '2', '3', '4', '5', '6': // link, symlink, char, block, directory, FIFO
		return 0, nil
	case 'x', 'S':
		return 0, errors.New("unsupported entry type " + strconv.QuoteRune(rune(typeflag)))
	}
	size, ok := parseTarNumber(h[124:136])
	if !ok || size < 0 || size > maxTarEntrySize {
		return 0, errors.New("invalid size field " + strconv.Quote(string(h[124:136])))
	}
	return size, nil
}

// parseTarNumber reads a numeric field: octal text, or base-256 when the
// high bit of the first byte is set (GNU, for large values).
func parseTarNumber(b []byte) (int64, bool) {
	if len(b) == 0 || b[0]&0x80 == 0 {
		return parseTarOctal(b)
	}
	if b[0]&0x40 != 0 { // negative
		return 0, false
	}
	var x uint64
	for i, c := range b {
		if i == 0 {
			c &= 0x7f
		}
		if x>>55 != 0 {
			return 0, false
		}
		x = x<<8 | uint64(c)
	}
	return int64(x), true
}

// parseTarOctal reads octal text padded with spaces or NULs; an empty
// field is 0.
func parseTarOctal(b []byte) (int64, bool) {
	b = bytes.Trim(b, " \x00")
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if len(b) == 0 {
		return 0, true
	}
	x, err := strconv.ParseUint(string(b), 8, 63)
	return int64(x), err == nil
}

func isZeroBlock(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
