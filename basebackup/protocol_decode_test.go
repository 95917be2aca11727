package basebackup

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Message builders for replies made up in tests.

func rowDescription(names ...string) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{}
	for _, n := range names {
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(n), DataTypeOID: 25, DataTypeSize: -1})
	}
	return rd
}

// dataRow makes a row of text values; "NULL" is NULL.
func dataRow(values ...string) *pgproto3.DataRow {
	r := &pgproto3.DataRow{}
	for _, v := range values {
		if v == "NULL" {
			r.Values = append(r.Values, nil)
		} else {
			r.Values = append(r.Values, []byte(v))
		}
	}
	return r
}

func commandComplete(tag string) *pgproto3.CommandComplete {
	return &pgproto3.CommandComplete{CommandTag: []byte(tag)}
}

func copyData(typ byte, data ...[]byte) *pgproto3.CopyData {
	b := []byte{typ}
	for _, d := range data {
		b = append(b, d...)
	}
	return &pgproto3.CopyData{Data: b}
}

func newArchiveMsg(name, location string) *pgproto3.CopyData {
	return copyData(msgNewArchive, []byte(name+"\x00"+location+"\x00"))
}

func progressMsg(n int64) *pgproto3.CopyData {
	return copyData(msgProgress, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

func positionResult(lsn string, tli string) []pgproto3.BackendMessage {
	return []pgproto3.BackendMessage{rowDescription("recptr", "tli"), dataRow(lsn, tli), commandComplete("SELECT")}
}

// makeTar builds a small archive of regular files name=content, with or
// without the two zero blocks at the end.
func makeTar(t testing.TB, terminated bool, files ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		name, content, _ := strings.Cut(f, "=")
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(content)), Format: tar.FormatUSTAR}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if terminated {
		err = tw.Close()
	} else {
		err = tw.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// reply is a made-up server reply: a tablespace 16385 at /ts and the main
// data directory, each with a small archive, and a manifest.
type reply struct {
	stream     bool
	tablespace []byte // archive of tablespace 16385
	base       []byte // archive of the main data directory
	manifest   []byte // nil: none
}

func newReply(t testing.TB, stream bool) reply {
	return reply{
		stream:     stream,
		tablespace: makeTar(t, stream, "PG_15_1/5/16386="+strings.Repeat("t", 700)),
		base:       makeTar(t, stream, "backup_label=START WAL LOCATION: 0/2000028\n", "PG_VERSION=15\n", "global/pg_control="+strings.Repeat("\x00", 8192)),
		manifest:   []byte(`{ "PostgreSQL-Backup-Manifest-Version": 1, "Files": [] }`),
	}
}

func (r reply) version() int {
	if r.stream {
		return 150000
	}
	return 130000
}

func (r reply) options() Options { return Options{Manifest: r.manifest != nil} }

// chunks splits data into CopyData messages of up to 300 bytes.
func (r reply) chunks(data []byte) []pgproto3.BackendMessage {
	var msgs []pgproto3.BackendMessage
	for len(data) > 0 {
		n := min(len(data), 300)
		if r.stream {
			msgs = append(msgs, copyData(msgData, data[:n]))
		} else {
			msgs = append(msgs, &pgproto3.CopyData{Data: data[:n]})
		}
		data = data[n:]
	}
	return msgs
}

func (r reply) messages() []pgproto3.BackendMessage {
	m := positionResult("0/2000028", "1")
	m = append(m, rowDescription("spcoid", "spclocation", "size"),
		dataRow("16385", "/ts", "1"), dataRow("NULL", "NULL", "20"), commandComplete("SELECT"))
	if r.stream {
		m = append(m, &pgproto3.CopyOutResponse{}, newArchiveMsg("16385.tar", "/ts"))
		m = append(m, r.chunks(r.tablespace)...)
		m = append(m, progressMsg(int64(len(r.tablespace))), newArchiveMsg("base.tar", ""))
		m = append(m, r.chunks(r.base)...)
		m = append(m, progressMsg(int64(len(r.tablespace)+len(r.base))))
		if r.manifest != nil {
			m = append(m, copyData(msgManifest))
			m = append(m, r.chunks(r.manifest)...)
		}
		m = append(m, &pgproto3.CopyDone{})
	} else {
		m = append(m, &pgproto3.CopyOutResponse{})
		m = append(m, r.chunks(r.tablespace)...)
		m = append(m, &pgproto3.CopyDone{}, &pgproto3.CopyOutResponse{})
		m = append(m, r.chunks(r.base)...)
		m = append(m, &pgproto3.CopyDone{})
		if r.manifest != nil {
			m = append(m, &pgproto3.CopyOutResponse{})
			m = append(m, r.chunks(r.manifest)...)
			m = append(m, &pgproto3.CopyDone{})
		}
	}
	m = append(m, positionResult("0/2000100", "1")...)
	return append(m, commandComplete("BASE_BACKUP"), &pgproto3.ReadyForQuery{TxStatus: 'I'})
}

// collected is what a collecting handler saw.
type collected struct {
	start    Start
	archives map[uint32][]byte
	order    []uint32
	manifest []byte
	progress []int64
}

func collectingHandler(c *collected) Handler {
	c.archives = make(map[uint32][]byte)
	return Handler{
		Started: func(s Start) error { c.start = s; return nil },
		Archive: func(ts Tablespace, r io.Reader) error {
			b, err := io.ReadAll(r)
			c.archives[ts.OID] = b
			c.order = append(c.order, ts.OID)
			return err
		},
		Manifest: func(r io.Reader) error {
			var err error
			c.manifest, err = io.ReadAll(r)
			return err
		},
		Progress: func(n int64) { c.progress = append(c.progress, n) },
	}
}

func TestDecodeMadeUpReplies(t *testing.T) {
	for _, stream := range []bool{false, true} {
		for _, terminated := range []bool{false, true} {
			t.Run(fmt.Sprintf("stream=%v,terminated=%v", stream, terminated), func(t *testing.T) {
				r := newReply(t, stream)
				r.tablespace = makeTar(t, terminated, "PG_15_1/5/16386="+strings.Repeat("t", 700))
				r.base = makeTar(t, terminated, "backup_label=x\n", "global/pg_control="+strings.Repeat("\x00", 8192))
				var c collected
				start, end, err := Decode(sliceSource(r.messages()), r.version(), r.options(), collectingHandler(&c))
				if err != nil {
					t.Fatal(err)
				}
				want := Start{LSN: 0x2000028, Timeline: 1, Tablespaces: []Tablespace{
					{OID: 16385, Location: "/ts", Size: 1024}, {OID: 0, Location: "", Size: 20 * 1024}}}
				if start.LSN != want.LSN || start.Timeline != want.Timeline || !slices.Equal(start.Tablespaces, want.Tablespaces) {
					t.Errorf("start %+v, want %+v", start, want)
				}
				if end != (End{LSN: 0x2000100, Timeline: 1}) {
					t.Errorf("end %+v", end)
				}
				if !slices.Equal(c.order, []uint32{16385, 0}) {
					t.Errorf("archives in order %v", c.order)
				}
				for oid, sent := range map[uint32][]byte{16385: r.tablespace, 0: r.base} {
					got := c.archives[oid]
					wantBytes := sent
					if !terminated {
						wantBytes = append(slices.Clone(sent), make([]byte, 1024)...)
					}
					if !bytes.Equal(got, wantBytes) {
						t.Errorf("archive %d: got %d bytes, want the %d sent plus the terminator if missing", oid, len(got), len(sent))
					}
					tr := tar.NewReader(bytes.NewReader(got))
					for {
						if _, err := tr.Next(); err == io.EOF {
							break
						} else if err != nil {
							t.Fatalf("archive %d: archive/tar: %v", oid, err)
						}
					}
				}
				if !bytes.Equal(c.manifest, r.manifest) {
					t.Errorf("manifest %q", c.manifest)
				}
				total := int64(len(r.tablespace) + len(r.base))
				if len(c.progress) == 0 || c.progress[len(c.progress)-1] != total || !slices.IsSorted(c.progress) {
					t.Errorf("progress %v, want rising to %d", c.progress, total)
				}
			})
		}
	}
}

func TestDecodeNilHandlersDrain(t *testing.T) {
	for _, stream := range []bool{false, true} {
		r := newReply(t, stream)
		if _, _, err := Decode(sliceSource(r.messages()), r.version(), r.options(), Handler{}); err != nil {
			t.Errorf("stream=%v: %v", stream, err)
		}
	}
}

func TestDecodeHandlerReturningEarly(t *testing.T) {
	for _, stream := range []bool{false, true} {
		r := newReply(t, stream)
		var seen []uint32
		h := Handler{
			Archive: func(ts Tablespace, tr io.Reader) error {
				seen = append(seen, ts.OID)
				_, err := tr.Read(make([]byte, 10))
				return err
			},
			Manifest: func(io.Reader) error { return nil },
		}
		if _, _, err := Decode(sliceSource(r.messages()), r.version(), r.options(), h); err != nil || len(seen) != 2 {
			t.Errorf("stream=%v: %v, archives %v", stream, err, seen)
		}
	}
}

func TestDecodeWriteTo(t *testing.T) {
	for _, stream := range []bool{false, true} {
		r := newReply(t, stream)
		var viaRead, viaWriteTo collected
		if _, _, err := Decode(sliceSource(r.messages()), r.version(), r.options(), collectingHandler(&viaRead)); err != nil {
			t.Fatal(err)
		}
		h := collectingHandler(&viaWriteTo)
		h.Archive = func(ts Tablespace, tr io.Reader) error {
			var buf bytes.Buffer
			// bytes.Buffer.ReadFrom would hide WriteTo; call it directly.
			n, err := tr.(io.WriterTo).WriteTo(&buf)
			if n != int64(buf.Len()) {
				t.Errorf("WriteTo returned %d for %d bytes", n, buf.Len())
			}
			viaWriteTo.archives[ts.OID] = buf.Bytes()
			return err
		}
		if _, _, err := Decode(sliceSource(r.messages()), r.version(), r.options(), h); err != nil {
			t.Fatal(err)
		}
		for oid, b := range viaRead.archives {
			if !bytes.Equal(viaWriteTo.archives[oid], b) {
				t.Errorf("stream=%v: archive %d differs between Read and WriteTo", stream, oid)
			}
		}
	}
}

func TestDecodeReaderAfterHandlerReturns(t *testing.T) {
	r := newReply(t, true)
	var kept io.Reader
	h := Handler{Archive: func(_ Tablespace, tr io.Reader) error { kept = tr; return nil }}
	if _, _, err := Decode(sliceSource(r.messages()), r.version(), r.options(), h); err != nil {
		t.Fatal(err)
	}
	if _, err := kept.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "after its handler returned") {
		t.Errorf("Read after the handler returned: %v", err)
	}
}

func TestDecodeHandlerErrors(t *testing.T) {
	boom := errors.New("boom")
	for name, h := range map[string]Handler{
		"Started":  {Started: func(Start) error { return boom }},
		"Archive":  {Archive: func(Tablespace, io.Reader) error { return boom }},
		"Manifest": {Manifest: func(io.Reader) error { return boom }},
	} {
		for _, stream := range []bool{false, true} {
			r := newReply(t, stream)
			_, _, err := Decode(sliceSource(r.messages()), r.version(), r.options(), h)
			if !errors.Is(err, boom) || errors.Is(err, ErrProtocol) {
				t.Errorf("%s handler failing, stream=%v: %v", name, stream, err)
			}
		}
	}
}

func TestDecodeServerError(t *testing.T) {
	for _, stream := range []bool{false, true} {
		r := newReply(t, stream)
		msgs := r.messages()
		// In the middle of the first archive.
		i := slices.IndexFunc(msgs, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.CopyOutResponse); return ok }) + 3
		msgs = slices.Insert(msgs, i, []pgproto3.BackendMessage{
			&pgproto3.ErrorResponse{Severity: "ERROR", Code: "58P01", Message: `could not stat file "base/1/1234": No such file or directory`},
			&pgproto3.ReadyForQuery{TxStatus: 'I'}}...)
		var readErr error
		h := Handler{Archive: func(_ Tablespace, tr io.Reader) error {
			_, readErr = io.ReadAll(tr)
			return readErr
		}}
		d := newStreamDecoder(sliceSource(msgs), r.version(), r.options(), h)
		_, _, err := d.run()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "58P01" || !strings.Contains(err.Error(), `could not stat file "base/1/1234"`) {
			t.Errorf("stream=%v: %v, want the server's error", stream, err)
		}
		if !errors.As(readErr, &pgErr) {
			t.Errorf("stream=%v: the handler read %v, want the server's error", stream, readErr)
		}
		if !d.idle {
			t.Errorf("stream=%v: the ReadyForQuery after the error was not read", stream)
		}
	}
}

func TestDecodeSourceError(t *testing.T) {
	r := newReply(t, true)
	msgs := r.messages()[:12]
	broken := errors.New("connection reset by peer")
	next := sliceSource(msgs)
	src := func() (pgproto3.BackendMessage, error) {
		m, err := next()
		if err != nil {
			return nil, broken
		}
		return m, nil
	}
	d := newStreamDecoder(src, r.version(), r.options(), Handler{})
	if _, _, err := d.run(); !errors.Is(err, broken) || d.idle {
		t.Errorf("Decode over a broken connection: %v (idle %v)", err, d.idle)
	}
}

func TestDecodeIgnoresNoticesAndParameters(t *testing.T) {
	for _, stream := range []bool{false, true} {
		r := newReply(t, stream)
		var msgs []pgproto3.BackendMessage
		for _, m := range r.messages() {
			msgs = append(msgs, &pgproto3.NoticeResponse{Severity: "NOTICE", Message: "hello"},
				&pgproto3.ParameterStatus{Name: "x", Value: "y"}, m)
		}
		var c collected
		if _, _, err := Decode(sliceSource(msgs), r.version(), r.options(), collectingHandler(&c)); err != nil || len(c.archives) != 2 {
			t.Errorf("stream=%v: %v", stream, err)
		}
	}
}

// TestDecodeRejects feeds broken replies: each must fail with ErrProtocol
// and a message that says what was wrong.
func TestDecodeRejects(t *testing.T) {
	type edit func(r *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage
	// find returns the index of the n-th (from 0) message that matches.
	find := func(msgs []pgproto3.BackendMessage, n int, match func(pgproto3.BackendMessage) bool) int {
		for i, m := range msgs {
			if match(m) {
				if n == 0 {
					return i
				}
				n--
			}
		}
		panic("no such message")
	}
	isType := func(typ byte) func(pgproto3.BackendMessage) bool {
		return func(m pgproto3.BackendMessage) bool {
			cd, ok := m.(*pgproto3.CopyData)
			return ok && len(cd.Data) > 0 && cd.Data[0] == typ
		}
	}
	isCopyData := func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.CopyData); return ok }
	isCopyDone := func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.CopyDone); return ok }
	isDataRow := func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.DataRow); return ok }
	replace := func(match func(pgproto3.BackendMessage) bool, n int, with ...pgproto3.BackendMessage) edit {
		return func(_ *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			i := find(msgs, n, match)
			return slices.Concat(msgs[:i], with, msgs[i+1:])
		}
	}
	insertBefore := func(match func(pgproto3.BackendMessage) bool, n int, with ...pgproto3.BackendMessage) edit {
		return func(_ *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			i := find(msgs, n, match)
			return slices.Concat(msgs[:i], with, msgs[i:])
		}
	}
	remove := func(match func(pgproto3.BackendMessage) bool, n int) edit { return replace(match, n) }
	setArchive := func(b []byte) edit {
		return func(r *reply, _ []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			r.tablespace = b
			return r.messages()
		}
	}
	header := makeTar(t, false, "f=0123456789")[:tarBlock]
	badChecksum := slices.Clone(header)
	badChecksum[0] ^= 1
	negativeSize := slices.Clone(header)
	copy(negativeSize[124:136], "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
	setTarChecksum(negativeSize)
	hugeSize := slices.Clone(header)
	copy(hugeSize[124:136], "\x80\x7f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
	setTarChecksum(hugeSize)
	pax := slices.Clone(header)
	pax[156] = 'x'
	setTarChecksum(pax)

	for _, tc := range []struct {
		name   string
		stream bool // false: 13-14; true: 15+
		edit   edit
		want   string
	}{
		// Result sets.
		{"start: no row", true, remove(isDataRow, 0), "start position has no row"},
		{"start: two rows", true, insertBefore(isDataRow, 0, dataRow("0/1", "1")), "more than 1 rows"},
		{"start: bad LSN", true, replace(isDataRow, 0, dataRow("0/G", "1")), "invalid LSN"},
		{"start: NULL", false, replace(isDataRow, 0, dataRow("NULL", "1")), "NULL values"},
		{"start: timeline 0", true, replace(isDataRow, 0, dataRow("0/1", "0")), "invalid timeline"},
		{"start: three columns", true, replace(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.RowDescription); return ok }, 0,
			rowDescription("a", "b", "c")), "3 columns, want 2"},
		{"start: binary", true, replace(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.RowDescription); return ok }, 0,
			&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("recptr")}, {Name: []byte("tli"), Format: 1}}}), "binary format"},
		{"start: missing", true, func(_ *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage { return msgs[3:] },
			"3 columns, want 2"},
		{"tablespaces: negative size", true, replace(isDataRow, 1, dataRow("16385", "/ts", "-1")), "invalid size"},
		{"tablespaces: huge size", true, replace(isDataRow, 1, dataRow("16385", "/ts", "9007199254740992")), "invalid size"},
		{"tablespaces: OID 0", true, replace(isDataRow, 1, dataRow("0", "/ts", "1")), "invalid OID"},
		{"tablespaces: OID too big", true, replace(isDataRow, 1, dataRow("4294967296", "/ts", "1")), "invalid OID"},
		{"tablespaces: OID without location", false, replace(isDataRow, 1, dataRow("16385", "NULL", "1")), "want both or neither"},
		{"tablespaces: empty location", false, replace(isDataRow, 1, dataRow("16385", "", "1")), "want both or neither"},
		{"tablespaces: no main", true, replace(isDataRow, 2, dataRow("16386", "/ts2", "1")), "does not include the main data directory"},
		{"tablespaces: main twice", true, insertBefore(isDataRow, 2, dataRow("NULL", "NULL", "1")), "main data directory twice"},
		{"tablespaces: OID twice", false, insertBefore(isDataRow, 2, dataRow("16385", "/ts2", "1")), "tablespace 16385 twice"},
		{"tablespaces: two values", true, replace(isDataRow, 1, dataRow("16385", "/ts")), "2 values, want 3"},
		{"end before start", true, replace(isDataRow, 3, dataRow("0/1000000", "1")), "before start position"},
		{"end missing", false, func(_ *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			return append(msgs[:len(msgs)-5], msgs[len(msgs)-2:]...)
		}, "unexpected CommandComplete instead of the end position"},
		{"early ReadyForQuery", true, insertBefore(isDataRow, 1, &pgproto3.ReadyForQuery{TxStatus: 'I'}), "unexpected ReadyForQuery"},
		{"ends after ReadyForQuery", true, func(_ *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			return append(slices.Clone(msgs[:3]), &pgproto3.ReadyForQuery{TxStatus: 'I'})
		}, "unexpected ReadyForQuery"},
		{"junk after the end", true, insertBefore(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok }, 0,
			&pgproto3.CopyDone{}), "unexpected CopyDone after the end position"},

		// The stream of 15+.
		{"data before the first archive", true, insertBefore(isType(msgNewArchive), 0, copyData(msgData, []byte("x"))), "before the first archive"},
		{"unknown type byte", true, insertBefore(isType(msgNewArchive), 0, copyData('z')), `CopyData of type 'z'`},
		{"unknown type byte in an archive", true, insertBefore(isType(msgNewArchive), 1, copyData('z')), `CopyData of type 'z' in 16385.tar`},
		{"empty CopyData", true, insertBefore(isType(msgNewArchive), 0, &pgproto3.CopyData{}), "empty CopyData"},
		{"empty CopyData in an archive", true, insertBefore(isType(msgNewArchive), 1, &pgproto3.CopyData{}), "empty CopyData message in 16385.tar"},
		{"new archive without NUL", true, replace(isType(msgNewArchive), 0, copyData(msgNewArchive, []byte("16385.tar"))), "malformed new-archive"},
		{"new archive with one string", true, replace(isType(msgNewArchive), 0, copyData(msgNewArchive, []byte("16385.tar\x00"))), "malformed new-archive"},
		{"new archive with junk", true, replace(isType(msgNewArchive), 0, copyData(msgNewArchive, []byte("16385.tar\x00/ts\x00x"))), "malformed new-archive"},
		{"new archive elsewhere", true, replace(isType(msgNewArchive), 0, newArchiveMsg("16385.tar", "/elsewhere")), `location "/elsewhere"`},
		{"new archive misnamed", true, replace(isType(msgNewArchive), 0, newArchiveMsg("../../x", "/ts")), `archive "../../x"`},
		{"archives out of order", true, func(r *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			i, j := find(msgs, 0, isType(msgNewArchive)), find(msgs, 1, isType(msgNewArchive))
			msgs[i], msgs[j] = msgs[j], msgs[i]
			return msgs
		}, `archive "base.tar"`},
		{"archive too many", true, insertBefore(isType(msgManifest), 0, newArchiveMsg("base.tar", "")), "more archives than the 2"},
		{"archive after manifest", true, insertBefore(isCopyDone, 0, newArchiveMsg("base.tar", "")), "a new archive after the backup manifest"},
		{"manifest twice", true, insertBefore(isCopyDone, 0, copyData(msgManifest)), "a second backup manifest"},
		{"manifest too early", true, insertBefore(isType(msgNewArchive), 1, copyData(msgManifest)), "after 1 of 2 archives"},
		{"manifest with junk", true, replace(isType(msgManifest), 0, copyData(msgManifest, []byte("x"))), "1 unexpected bytes"},
		{"manifest missing", true, func(r *reply, _ []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			m := *r
			m.manifest = nil
			return m.messages()
		}, "without the requested backup manifest"},
		{"manifest not requested", true, func(r *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			r.manifest = nil // Options.Manifest is false now; the messages still have it
			return msgs
		}, "not requested"},
		{"CopyDone too early", true, insertBefore(isType(msgNewArchive), 1, &pgproto3.CopyDone{}), "ended after 1 of 2 archives"},
		{"CopyDone before any archive", true, insertBefore(isType(msgNewArchive), 0, &pgproto3.CopyDone{}), "ended after 0 of 2 archives"},
		{"progress too short", true, insertBefore(isType(msgNewArchive), 1, copyData(msgProgress, []byte{1, 2})), "progress message of 3 bytes"},
		{"progress negative", true, insertBefore(isType(msgNewArchive), 1, progressMsg(-5)), "-5 bytes done"},
		{"progress negative between archives", true, insertBefore(isType(msgNewArchive), 0, progressMsg(-5)), "-5 bytes done"},
		{"RowDescription in the stream", true, insertBefore(isType(msgNewArchive), 1, rowDescription("x")), "unexpected RowDescription in 16385.tar"},
		{"CopyInResponse in the stream", true, insertBefore(isType(msgNewArchive), 0, &pgproto3.CopyInResponse{}), "unexpected CopyInResponse in the backup stream"},
		{"no COPY", true, remove(func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.CopyOutResponse); return ok }, 0),
			"instead of the start of the backup stream"},

		// One COPY per archive (13-14).
		{"one COPY too few", false, func(r *reply, msgs []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			i := find(msgs, 0, isCopyDone)
			return slices.Delete(msgs, i, i+2) // CopyDone and the next CopyOutResponse
		}, "ends inside an entry after 56 bytes in base.tar"},
		{"manifest COPY missing", false, func(r *reply, _ []pgproto3.BackendMessage) []pgproto3.BackendMessage {
			m := *r
			m.manifest = nil
			return m.messages()
		}, "RowDescription instead of the start of the backup manifest"},
		{"CopyDone missing", false, remove(isCopyDone, 0), "unexpected CopyOutResponse in 16385.tar"},
		{"DataRow in a COPY", false, insertBefore(isCopyData, 0, dataRow("x")), "unexpected DataRow in 16385.tar"},

		// Tar framing.
		{"archive cut in an entry", true, setArchive(makeTar(t, false, "f="+strings.Repeat("x", 1000))[:1024]), "ends inside an entry after 1024 bytes"},
		{"archive cut in a header", false, setArchive(header[:100]), "ends inside an entry after 100 bytes"},
		{"bad checksum", false, setArchive(badChecksum), "checksum mismatch"},
		{"negative size", true, setArchive(negativeSize), "invalid size field"},
		{"huge size", true, setArchive(hugeSize), "invalid size field"},
		{"pax header", true, setArchive(pax), "unsupported entry type 'x'"},
		{"lone zero block", true, setArchive(slices.Concat(make([]byte, tarBlock), makeTar(t, true, "f=x"))), "follows a single zero block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReply(t, tc.stream)
			msgs := tc.edit(&r, r.messages())
			var archiveErr error
			h := Handler{Archive: func(_ Tablespace, tr io.Reader) error {
				_, archiveErr = io.ReadAll(tr)
				return archiveErr
			}}
			_, _, err := Decode(sliceSource(msgs), r.version(), r.options(), h)
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Decode: %v\nwant ErrProtocol saying %q", err, tc.want)
			}
		})
	}
}

func TestDecodeTooManyTablespaces(t *testing.T) {
	msgs := positionResult("0/1", "1")
	msgs = append(msgs, rowDescription("spcoid", "spclocation", "size"))
	for i := range maxTablespaces + 1 {
		msgs = append(msgs, dataRow(fmt.Sprint(i+1), "/ts", "1"))
	}
	_, _, err := Decode(sliceSource(msgs), 150000, Options{}, Handler{})
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "more than 65536 rows") {
		t.Errorf("Decode: %v", err)
	}
}

// An empty COPY for a tablespace (13-14, when it was dropped during the
// backup) is an empty archive.
func TestDecodeEmptyArchive(t *testing.T) {
	r := newReply(t, false)
	r.tablespace = nil
	var c collected
	if _, _, err := Decode(sliceSource(r.messages()), r.version(), r.options(), collectingHandler(&c)); err != nil {
		t.Fatal(err)
	}
	if got := c.archives[16385]; !bytes.Equal(got, make([]byte, 1024)) {
		t.Errorf("empty archive handed as %d bytes", len(got))
	}
}

func TestDecodeFixturesRejectTruncation(t *testing.T) {
	for _, f := range fixtures {
		wire := readFixture(t, f.major)
		msgs, err := readWire(wire)
		if err != nil {
			t.Fatal(err)
		}
		// Every prefix of the reply is an error (the source then fails
		// like a closed connection), and never a panic.
		for n := range len(msgs) {
			_, _, err := Decode(sliceSource(msgs[:n]), f.version, fixtureOptions, Handler{})
			if err == nil {
				t.Errorf("PG%d: Decode of the first %d of %d messages succeeded", f.major, n, len(msgs))
			}
		}
		if _, _, err := Decode(sliceSource(msgs), f.version, fixtureOptions, Handler{}); err != nil {
			t.Errorf("PG%d: %v", f.major, err)
		}
		// The legacy decoder on a 15+ reply and the other way round.
		other := 150000
		if f.version >= streamVersion {
			other = 130000
		}
		if _, _, err := Decode(sliceSource(msgs), other, fixtureOptions, Handler{}); !errors.Is(err, ErrProtocol) {
			t.Errorf("PG%d reply decoded as version %d: %v", f.major, other, err)
		}
	}
}
