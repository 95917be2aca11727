package pgrepl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/wal"
)

// The stream's clock at a few moments: microseconds since 2000-01-01 UTC.
var clockCases = []struct {
	us int64
	t  time.Time
}{
	{0, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)},
	{1, time.Date(2000, 1, 1, 0, 0, 0, 1000, time.UTC)},
	{-1, time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC)},
	{817_689_600_123_456, time.Date(2025, 11, 29, 0, 0, 0, 123456000, time.UTC)},
}

func xlogData(start, end wal.LSN, us int64, data []byte) []byte {
	b := []byte{'w'}
	b = binary.BigEndian.AppendUint64(b, uint64(start))
	b = binary.BigEndian.AppendUint64(b, uint64(end))
	b = binary.BigEndian.AppendUint64(b, uint64(us))
	return append(b, data...)
}

func keepalive(end wal.LSN, us int64, reply byte) []byte {
	b := []byte{'k'}
	b = binary.BigEndian.AppendUint64(b, uint64(end))
	b = binary.BigEndian.AppendUint64(b, uint64(us))
	return append(b, reply)
}

func TestPGTime(t *testing.T) {
	for _, tc := range clockCases {
		if got := pgTime(tc.us); !got.Equal(tc.t) {
			t.Errorf("pgTime(%d) = %v, want %v", tc.us, got, tc.t)
		}
	}
}

func TestParseCopyData(t *testing.T) {
	data := []byte("WAL bytes")
	m, err := ParseCopyData(xlogData(0x1_0300_0000, 0x1_0400_0000, clockCases[3].us, data))
	x, ok := m.(*XLogData)
	if err != nil || !ok {
		t.Fatalf("ParseCopyData(XLogData) = %#v, %v", m, err)
	}
	if x.Start != 0x1_0300_0000 || x.End != 0x1_0400_0000 || !x.ServerTime.Equal(clockCases[3].t) || !bytes.Equal(x.Data, data) {
		t.Errorf("XLogData = %+v", x)
	}
	if m, err := ParseCopyData(xlogData(5, 5, 0, nil)); err != nil || len(m.(*XLogData).Data) != 0 {
		t.Errorf("XLogData without data = %#v, %v", m, err)
	}

	for _, reply := range []byte{0, 1} {
		m, err := ParseCopyData(keepalive(0x2_0000_0028, clockCases[1].us, reply))
		k, ok := m.(*Keepalive)
		if err != nil || !ok {
			t.Fatalf("ParseCopyData(keepalive) = %#v, %v", m, err)
		}
		want := Keepalive{End: 0x2_0000_0028, ServerTime: clockCases[1].t, ReplyRequested: reply == 1}
		if k.End != want.End || !k.ServerTime.Equal(want.ServerTime) || k.ReplyRequested != want.ReplyRequested {
			t.Errorf("Keepalive = %+v, want %+v", k, want)
		}
	}
	// A longer keepalive, from some future server: read what is known.
	if m, err := ParseCopyData(append(keepalive(7, 0, 1), 0, 0)); err != nil || m.(*Keepalive).End != 7 {
		t.Errorf("longer keepalive: %#v, %v", m, err)
	}

	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"empty":           {nil, "empty CopyData"},
		"unknown type":    {[]byte("r0123456789"), `unknown message type 'r'`},
		"short XLogData":  {xlogData(1, 1, 0, nil)[:24], "XLogData message of 24 bytes"},
		"type byte only":  {[]byte{'w'}, "XLogData message of 1 bytes"},
		"short keepalive": {keepalive(1, 1, 0)[:17], "keepalive message of 17 bytes"},
		"past LSN space":  {xlogData(^wal.LSN(0)-2, 0, 0, []byte("abcd")), "past the end of the LSN space"},
	} {
		m, err := ParseCopyData(tc.b)
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) || m != nil {
			t.Errorf("%s: ParseCopyData = %#v, %v; want an ErrProtocol containing %q", name, m, err, tc.want)
		}
	}
}

func TestEncodeStandbyStatus(t *testing.T) {
	now := clockCases[3].t
	got := EncodeStandbyStatus(StandbyStatus{Write: 0x1_0000_0010, Flush: 0x20, Apply: 0, ReplyRequested: true}, now)
	want := []byte{'r',
		0, 0, 0, 1, 0, 0, 0, 0x10,
		0, 0, 0, 0, 0, 0, 0, 0x20,
		0, 0, 0, 0, 0, 0, 0, 0,
		0, 0x02, 0xE7, 0xAF, 0x32, 0x26, 0xE2, 0x40, // 817689600123456
		1}
	if !bytes.Equal(got, want) {
		t.Errorf("EncodeStandbyStatus = % x\nwant                  % x", got, want)
	}
	if got := EncodeStandbyStatus(StandbyStatus{}, clockCases[0].t); !bytes.Equal(got, append([]byte{'r'}, make([]byte, 33)...)) {
		t.Errorf("EncodeStandbyStatus of zeros at the epoch = % x", got)
	}
	// The clock in another time zone is the same instant.
	local := now.In(time.FixedZone("UTC+5", 5*3600))
	if !bytes.Equal(EncodeStandbyStatus(StandbyStatus{}, local), EncodeStandbyStatus(StandbyStatus{}, now)) {
		t.Error("EncodeStandbyStatus depends on the time zone")
	}
}

func FuzzParseCopyData(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{'w'})
	f.Add([]byte{'k'})
	f.Add([]byte("r\x00"))
	f.Add(xlogData(0x3000000, 0x3000100, 0, []byte("data")))
	f.Add(xlogData(^wal.LSN(0), 0, -1, []byte{1}))
	f.Add(xlogData(1, 2, 817_689_600_123_456, nil))
	f.Add(keepalive(0x3000000, 1, 0))
	f.Add(keepalive(0x3000000, 1<<62, 1))
	f.Add(append(keepalive(1, 1, 1), 9))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseCopyData(b)
		if err != nil {
			if m != nil || !errors.Is(err, ErrProtocol) {
				t.Fatalf("ParseCopyData(%x) = %#v, %v: want nil and an ErrProtocol", b, m, err)
			}
			return
		}
		us := int64(binary.BigEndian.Uint64(b[9:]))
		switch m := m.(type) {
		case *XLogData:
			us = int64(binary.BigEndian.Uint64(b[17:]))
			if !bytes.Equal(xlogData(m.Start, m.End, us, m.Data), b) {
				t.Fatalf("XLogData %+v does not encode back to %x", m, b)
			}
			if m.Start+wal.LSN(len(m.Data)) < m.Start {
				t.Fatalf("XLogData %+v overflows", m)
			}
			checkClock(t, m.ServerTime, us)
		case *Keepalive:
			if !bytes.Equal(keepalive(m.End, us, b[17]), b[:keepaliveSize]) || m.ReplyRequested != (b[17] != 0) {
				t.Fatalf("Keepalive %+v does not encode back to %x", m, b)
			}
			checkClock(t, m.ServerTime, us)
		default:
			t.Fatalf("ParseCopyData(%x) = %#v", b, m)
		}
	})
}

// checkClock checks a decoded clock against its encoding, where time.Time
// can count the microseconds.
func checkClock(t *testing.T, got time.Time, us int64) {
	t.Helper()
	const limit = 1 << 62
	if us > -limit && us < limit && got.UnixMicro()-pgEpochMicros != us {
		t.Fatalf("clock %d decoded as %v", us, got)
	}
}
