package failover

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand"
	"testing"

	"github.com/walship/walship/wal"
)

const (
	testSegSize = 1 << 20
	testBlock   = 8192
	testMagic   = 0xD110 // PostgreSQL 15
)

// walStream writes WAL the way PostgreSQL lays it out — page headers,
// records aligned to 8 bytes and split across pages and segments,
// continuation flags, segment switches — and remembers where each record
// ends, for checking LastRecordEnd against.
type walStream struct {
	buf  []byte
	pos  int64   // next byte to write
	prev wal.LSN // start of the last record
	ends []wal.LSN
}

func (w *walStream) grow(to int64) {
	for int64(len(w.buf)) < to {
		w.buf = append(w.buf, make([]byte, testSegSize)...)
	}
}

// header writes the page header at w.pos (a page start); rem > 0 marks
// a continued record.
func (w *walStream) header(rem int64) {
	w.grow(w.pos + testBlock)
	b := w.buf[w.pos:]
	info := uint16(0)
	size := int64(wal.ShortPageHeaderSize)
	if w.pos%testSegSize == 0 {
		info |= wal.XLPLongHeader
		size = wal.LongPageHeaderSize
		binary.LittleEndian.PutUint64(b[24:], 7)
		binary.LittleEndian.PutUint32(b[32:], testSegSize)
		binary.LittleEndian.PutUint32(b[36:], testBlock)
	}
	if rem > 0 {
		info |= xlpContRecord
		binary.LittleEndian.PutUint32(b[16:], uint32(rem))
	}
	binary.LittleEndian.PutUint16(b[0:], testMagic)
	binary.LittleEndian.PutUint16(b[2:], info)
	binary.LittleEndian.PutUint32(b[4:], 1)
	binary.LittleEndian.PutUint64(b[8:], uint64(w.pos))
	w.pos += size
}

// record appends a record of total bytes and returns the position of the
// byte after it; a switch record also fills the rest of its segment with
// empty pages.
func (w *walStream) record(rng *rand.Rand, total int64, isSwitch bool) int64 {
	w.pos = align8(w.pos)
	if w.pos%testBlock == 0 {
		w.header(0)
	}
	start := wal.LSN(w.pos)
	rec := make([]byte, total)
	rng.Read(rec)
	binary.LittleEndian.PutUint32(rec[0:], uint32(total))
	binary.LittleEndian.PutUint64(rec[8:], uint64(w.prev))
	rec[16], rec[17] = 0x10, 10 // a heap record
	if isSwitch {
		rec[16], rec[17] = xlogSwitch, rmXLOG
	}
	crc := crc32.Update(crc32.Update(0, castagnoli, rec[recordHeaderSize:]), castagnoli, rec[:crcOffset])
	binary.LittleEndian.PutUint32(rec[crcOffset:], crc)
	for len(rec) > 0 {
		if w.pos%testBlock == 0 {
			w.header(int64(len(rec)))
		}
		w.grow(w.pos + testBlock)
		n := min(int64(len(rec)), testBlock-w.pos%testBlock)
		copy(w.buf[w.pos:], rec[:n])
		rec, w.pos = rec[n:], w.pos+n
	}
	w.prev = start
	raw := w.pos
	end := wal.LSN(align8(w.pos))
	if isSwitch {
		segEnd := (w.pos + testSegSize - 1) / testSegSize * testSegSize
		for w.pos = align8(w.pos); w.pos < segEnd; {
			if w.pos%testBlock == 0 {
				w.header(0)
			} else {
				w.pos = (w.pos/testBlock + 1) * testBlock
			}
		}
		end = wal.LSN(segEnd)
	}
	w.ends = append(w.ends, end)
	return raw
}

// want is the end of the last record whose bytes end in [from, to].
func (w *walStream) want(from, to int64, ends []wal.LSN, raw []int64) (wal.LSN, bool) {
	var got wal.LSN
	ok := false
	for i, e := range ends {
		if raw[i] > from && raw[i] <= to {
			got, ok = e, true
		}
	}
	return got, ok
}

func (w *walStream) segment(i int64) []byte {
	w.grow((i + 1) * testSegSize)
	return w.buf[i*testSegSize : (i+1)*testSegSize]
}

func lastEnd(t *testing.T, data []byte, seg int64) (wal.LSN, bool) {
	t.Helper()
	end, ok, err := LastRecordEnd(bytes.NewReader(data), wal.LSN(seg*testSegSize), testSegSize)
	if err != nil {
		t.Fatal(err)
	}
	return end, ok
}

// TestLastRecordEnd: random records, small and page-spanning, one that
// spans a whole segment, and a segment switch; each segment, and every
// prefix of one (a wal-stream snapshot), ends where its last complete
// record ends.
func TestLastRecordEnd(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	w := &walStream{}
	var raw []int64 // byte after each record, before alignment
	add := func(total int64, isSwitch bool) {
		raw = append(raw, w.record(rng, total, isSwitch))
	}
	for w.pos < testSegSize+300_000 {
		sizes := []int64{24, 51, 100, 300, 8200, 20_000}
		add(sizes[rng.Intn(len(sizes))], false)
	}
	add(2*testSegSize, false) // from segment 1 over all of segment 2 into 3
	for w.pos < 4*testSegSize-4000 {
		add(int64(24+rng.Intn(3000)), false)
	}
	add(40, false) // probably crosses into segment 3
	add(24, true)  // switch: segment 3 ends here
	add(64, false) // the first record of segment 4
	add(30_000, false)

	for seg := int64(0); seg < 5; seg++ {
		data := w.segment(seg)
		got, ok := lastEnd(t, data, seg)
		want, wantOK := w.want(seg*testSegSize, (seg+1)*testSegSize, w.ends, raw)
		if got != want || ok != wantOK {
			t.Errorf("segment %d: got %s %v, want %s %v", seg, got, ok, want, wantOK)
		}
		for _, n := range []int64{0, 39, 40, 41, 100, testBlock - 1, testBlock, testBlock + 30, 3*testBlock + 1001, testSegSize / 2, testSegSize - 1} {
			got, ok := lastEnd(t, data[:n], seg)
			want, wantOK := w.want(seg*testSegSize, seg*testSegSize+n, w.ends, raw)
			if got != want || ok != wantOK {
				t.Errorf("segment %d, first %d bytes: got %s %v, want %s %v", seg, n, got, ok, want, wantOK)
			}
		}
	}
	if _, ok := lastEnd(t, w.segment(2), 2); ok {
		t.Error("segment 2 holds only the middle of a record, but a record ends in it")
	}
	if got, _ := lastEnd(t, w.segment(3), 3); got != wal.LSN(4*testSegSize) {
		t.Errorf("segment 3 ends with a switch: got %s, want %s", got, wal.LSN(4*testSegSize))
	}
}

// TestLastRecordEndStopsAtGarbage: a record that does not point back at
// the one before, one that fails its CRC, a page that is not where it
// claims to be, and zeros end the valid WAL.
func TestLastRecordEndStopsAtGarbage(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	w := &walStream{}
	for i := 0; i < 40; i++ {
		w.record(rng, 500, false)
	}
	before := w.ends[len(w.ends)-1]
	at := w.pos
	for i := 0; i < 40; i++ {
		w.record(rng, 500, false)
	}
	seg := append([]byte(nil), w.segment(0)...)

	bad := append([]byte(nil), seg...)
	binary.LittleEndian.PutUint64(bad[align8(at)+8:], 12345) // xl_prev of the next record
	if got, _ := lastEnd(t, bad, 0); got != before {
		t.Errorf("wrong back pointer: got %s, want %s", got, before)
	}

	torn := append([]byte(nil), seg...)
	torn[align8(at)+100] ^= 0xFF // in the next record's data: its CRC fails
	if got, _ := lastEnd(t, torn, 0); got != before {
		t.Errorf("a record failing its CRC: got %s, want %s", got, before)
	}

	zeros := append([]byte(nil), seg...)
	clear(zeros[align8(at):])
	if got, _ := lastEnd(t, zeros, 0); got != before {
		t.Errorf("zeros after the record: got %s, want %s", got, before)
	}

	moved := append([]byte(nil), seg...)
	binary.LittleEndian.PutUint64(moved[testBlock+8:], 99*testBlock) // page 1 claims another address
	want, _ := w.want(0, testBlock, w.ends, rawEnds(w.ends))
	if got, _ := lastEnd(t, moved, 0); got != want {
		t.Errorf("misplaced page: got %s, want %s (the last end on page 0)", got, want)
	}

	if _, ok := lastEnd(t, make([]byte, testSegSize), 0); ok {
		t.Error("an all-zero segment has a record")
	}
	if _, ok, err := LastRecordEnd(bytes.NewReader(seg), wal.LSN(testSegSize), testSegSize); ok || err != nil {
		t.Errorf("a segment read at the wrong LSN: ok %v, err %v", ok, err)
	}
}

// rawEnds approximates the unaligned ends by the aligned ones (enough for
// records that do not end on page boundaries).
func rawEnds(ends []wal.LSN) []int64 {
	out := make([]int64, len(ends))
	for i, e := range ends {
		out[i] = int64(e)
	}
	return out
}

func FuzzLastRecordEnd(f *testing.F) {
	rng := rand.New(rand.NewSource(3))
	w := &walStream{}
	for w.pos < testSegSize/4 {
		w.record(rng, int64(24+rng.Intn(9000)), false)
	}
	f.Add(append([]byte(nil), w.segment(0)[:testSegSize/4]...))
	f.Add([]byte{})
	f.Add(make([]byte, 100))
	f.Fuzz(func(t *testing.T, data []byte) {
		end, ok, err := LastRecordEnd(bytes.NewReader(data), 0, testSegSize)
		if err != nil {
			t.Fatal(err)
		}
		if ok && (end == 0 || end > testSegSize) {
			t.Fatalf("end %s outside the segment", end)
		}
	})
}
