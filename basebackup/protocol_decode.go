package basebackup

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/walship/walship/internal/pgrepl"
	"github.com/walship/walship/wal"
)

// maxTablespaces bounds the tablespace list a server may announce, so that
// a broken one cannot make walship allocate without limit. Real clusters
// have a handful.
const maxTablespaces = 1 << 16

// Type bytes of the CopyData messages of PostgreSQL 15 and later
// (src/backend/backup/basebackup_copy.c).
const (
	msgNewArchive = 'n' // archive name and tablespace location, two C strings
	msgData       = 'd' // archive or manifest bytes
	msgProgress   = 'p' // bytes done so far, int64
	msgManifest   = 'm' // the manifest follows
)

// MessageSource returns the server's messages one at a time, like
// pgconn.PgConn.ReceiveMessage. A message and the bytes it refers to need
// only stay valid until the next call.
type MessageSource func() (pgproto3.BackendMessage, error)

// Decode reads the reply to the BASE_BACKUP command that Command(version, o)
// builds from next, calling h as it goes, and returns the backup's start
// and end. It reads through the ReadyForQuery that ends the reply, and after
// an ErrorResponse up to the ReadyForQuery that follows it; it reads nothing
// after that. Run is Decode fed by a connection; Decode on its own serves
// tests and recorded streams.
//
// Anything out of the protocol — messages out of order, malformed values,
// archives that do not match the tablespace list, damaged tar framing —
// is an error matching ErrProtocol; Decode never panics on its input, and
// what it keeps in memory does not grow with the size of the archives.
func Decode(next MessageSource, version int, o Options, h Handler) (Start, End, error) {
	return newStreamDecoder(next, version, o, h).run()
}

// streamDecoder is the state of one Decode.
type streamDecoder struct {
	next     MessageSource
	stream   bool // PostgreSQL 15+: one COPY of typed messages
	manifest bool // a manifest was requested
	h        Handler

	pending pgproto3.BackendMessage // a message read ahead, returned by the next recv
	idle    bool                    // ReadyForQuery seen: nothing more to read
	done    int64                   // archive bytes so far, for Handler.Progress
}

func newStreamDecoder(next MessageSource, version int, o Options, h Handler) *streamDecoder {
	return &streamDecoder{next: next, stream: version >= streamVersion, manifest: o.Manifest, h: h}
}

// protocolError is an ErrProtocol with a message of its own.
type protocolError struct{ msg string }

func (e *protocolError) Error() string        { return "base backup: " + e.msg }
func (e *protocolError) Is(target error) bool { return target == ErrProtocol }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// unexpected reports a message that has no place where it came.
func unexpected(m pgproto3.BackendMessage, where string) error {
	return protocolErrorf("unexpected %s %s", messageName(m), where)
}

// messageName names a message as the protocol documentation does.
func messageName(m pgproto3.BackendMessage) string {
	if cd, ok := m.(*pgproto3.CopyData); ok && len(cd.Data) > 0 {
		return fmt.Sprintf("CopyData of type %q", cd.Data[0])
	}
	name := fmt.Sprintf("%T", m)
	return name[strings.LastIndexByte(name, '.')+1:]
}

// run decodes the whole reply.
func (d *streamDecoder) run() (Start, End, error) {
	startPos, err := d.position("start")
	if err != nil {
		return Start{}, End{}, err
	}
	tablespaces, err := d.tablespaces()
	if err != nil {
		return Start{}, End{}, err
	}
	start := Start{LSN: startPos.LSN, Timeline: startPos.Timeline, Tablespaces: tablespaces}
	if d.h.Started != nil {
		if err := d.h.Started(start); err != nil {
			return Start{}, End{}, fmt.Errorf("base backup: %w", err)
		}
	}
	if d.stream {
		err = d.copyStream(tablespaces)
	} else {
		err = d.copyPerTablespace(tablespaces)
	}
	if err != nil {
		return Start{}, End{}, err
	}
	end, err := d.position("end")
	if err != nil {
		return Start{}, End{}, err
	}
	if end.LSN < start.LSN {
		return Start{}, End{}, protocolErrorf("the server reported end position %s before start position %s", end.LSN, start.LSN)
	}
	if err := d.finish(); err != nil {
		return Start{}, End{}, err
	}
	return start, End(end), nil
}

// recv returns the next message that matters, skipping notices and
// parameter changes, and turns an ErrorResponse into an error.
func (d *streamDecoder) recv() (pgproto3.BackendMessage, error) {
	if m := d.pending; m != nil {
		d.pending = nil
		return m, nil
	}
	if d.idle {
		return nil, protocolErrorf("the server ended its reply early")
	}
	for {
		m, err := d.next()
		if err != nil {
			return nil, fmt.Errorf("base backup: receiving from the server: %w", err)
		}
		switch m := m.(type) {
		case nil:
			return nil, protocolErrorf("no message from the server")
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus, *pgproto3.NotificationResponse:
			continue
		case *pgproto3.ErrorResponse:
			return nil, d.serverError(m)
		case *pgproto3.ReadyForQuery:
			d.idle = true
		}
		return m, nil
	}
}

// serverError turns an ErrorResponse into an error and reads up to the
// ReadyForQuery that follows it, so that the connection can be used again.
func (d *streamDecoder) serverError(m *pgproto3.ErrorResponse) error {
	err := fmt.Errorf("base backup failed on the server: %w", pgconn.ErrorResponseToPgError(m))
	for {
		m, rerr := d.next()
		if rerr != nil {
			return err
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			d.idle = true
			return err
		}
	}
}

// resultSet reads one result set of ncol text columns: RowDescription,
// DataRow messages, CommandComplete. row sees each row's values, which are
// valid only during the call.
func (d *streamDecoder) resultSet(what string, ncol, maxRows int, row func([][]byte) error) (int, error) {
	m, err := d.recv()
	if err != nil {
		return 0, err
	}
	rd, ok := m.(*pgproto3.RowDescription)
	if !ok {
		return 0, unexpected(m, "instead of the "+what)
	}
	if len(rd.Fields) != ncol {
		return 0, protocolErrorf("the %s has %d columns, want %d", what, len(rd.Fields), ncol)
	}
	for i, f := range rd.Fields {
		if f.Format != 0 {
			return 0, protocolErrorf("column %d of the %s is in binary format, want text", i+1, what)
		}
	}
	for rows := 0; ; {
		m, err := d.recv()
		if err != nil {
			return rows, err
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			if rows++; rows > maxRows {
				return rows, protocolErrorf("the %s has more than %d rows", what, maxRows)
			}
			if len(m.Values) != ncol {
				return rows, protocolErrorf("row %d of the %s has %d values, want %d", rows, what, len(m.Values), ncol)
			}
			if err := row(m.Values); err != nil {
				return rows, err
			}
		case *pgproto3.CommandComplete:
			return rows, nil
		default:
			return rows, unexpected(m, "in the "+what)
		}
	}
}

// position reads the one-row result set of an LSN and a timeline that
// starts and ends the reply.
func (d *streamDecoder) position(which string) (End, error) {
	what := which + " position"
	var pos End
	n, err := d.resultSet(what, 2, 1, func(v [][]byte) error {
		if v[0] == nil || v[1] == nil {
			return protocolErrorf("the %s has NULL values", what)
		}
		lsn, err := wal.ParseLSN(string(v[0]))
		if err != nil {
			return protocolErrorf("the %s: %v", what, err)
		}
		tli, err := parseTimeline(v[1])
		if err != nil {
			return protocolErrorf("the %s: %v", what, err)
		}
		pos = End{LSN: lsn, Timeline: tli}
		return nil
	})
	if err != nil {
		return End{}, err
	}
	if n != 1 {
		return End{}, protocolErrorf("the %s has no row", what)
	}
	return pos, nil
}

// tablespaces reads the tablespace list: spcoid, spclocation and size in
// kB, both spcoid and spclocation NULL for the main data directory.
func (d *streamDecoder) tablespaces() ([]Tablespace, error) {
	var list []Tablespace
	seen := make(map[uint32]bool)
	const what = "tablespace list"
	_, err := d.resultSet(what, 3, maxTablespaces, func(v [][]byte) error {
		ts := Tablespace{Size: -1}
		row := len(list) + 1
		switch {
		case v[0] == nil && v[1] == nil: // the main data directory
		case v[0] == nil || v[1] == nil || len(v[1]) == 0:
			return protocolErrorf("row %d of the %s has OID %s and location %s: want both or neither",
				row, what, nullable(v[0]), nullable(v[1]))
		default:
			oid, err := strconv.ParseUint(string(v[0]), 10, 32)
			if err != nil || oid == 0 {
				return protocolErrorf("row %d of the %s has an invalid OID %s", row, what, quoteServerText(string(v[0])))
			}
			ts.OID = uint32(oid)
			ts.Location = string(v[1])
		}
		if seen[ts.OID] {
			if ts.OID == 0 {
				return protocolErrorf("the %s names the main data directory twice", what)
			}
			return protocolErrorf("the %s names tablespace %d twice", what, ts.OID)
		}
		seen[ts.OID] = true
		if v[2] != nil {
			kb, err := strconv.ParseInt(string(v[2]), 10, 64)
			if err != nil || kb < 0 || kb > (1<<63-1)/1024 {
				return protocolErrorf("row %d of the %s has an invalid size %s", row, what, quoteServerText(string(v[2])))
			}
			ts.Size = kb * 1024
		}
		list = append(list, ts)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !seen[0] {
		return nil, protocolErrorf("the %s does not include the main data directory", what)
	}
	return list, nil
}

func nullable(b []byte) string {
	if b == nil {
		return "NULL"
	}
	return quoteServerText(string(b))
}

// finish reads the end of the reply: the command's CommandComplete and
// ReadyForQuery.
func (d *streamDecoder) finish() error {
	for {
		m, err := d.recv()
		if err != nil {
			return err
		}
		switch m.(type) {
		case *pgproto3.CommandComplete:
		case *pgproto3.ReadyForQuery:
			return nil
		default:
			return unexpected(m, "after the end position")
		}
	}
}

// expectCopyOut reads the CopyOutResponse that starts a COPY.
func (d *streamDecoder) expectCopyOut(what string) error {
	m, err := d.recv()
	if err != nil {
		return err
	}
	if _, ok := m.(*pgproto3.CopyOutResponse); !ok {
		return unexpected(m, "instead of the start of "+what)
	}
	return nil
}

// copyPerTablespace reads the archives of PostgreSQL 13 and 14: one COPY
// per tablespace in the order of the tablespace list, then one for the
// manifest.
func (d *streamDecoder) copyPerTablespace(tablespaces []Tablespace) error {
	for i, ts := range tablespaces {
		what := fmt.Sprintf("archive %d of %d (%s)", i+1, len(tablespaces), archiveName(ts))
		if err := d.expectCopyOut(what); err != nil {
			return err
		}
		if err := d.archive(ts); err != nil {
			return err
		}
	}
	if d.manifest {
		if err := d.expectCopyOut("the backup manifest"); err != nil {
			return err
		}
		return d.manifestData()
	}
	return nil
}

// copyStream reads the single COPY of PostgreSQL 15 and later, in which
// every CopyData starts with a type byte.
func (d *streamDecoder) copyStream(tablespaces []Tablespace) error {
	if err := d.expectCopyOut("the backup stream"); err != nil {
		return err
	}
	archives, manifest := 0, false
	for {
		m, err := d.recv()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				return protocolErrorf("empty CopyData message in the backup stream")
			}
			switch m.Data[0] {
			case msgNewArchive:
				if manifest {
					return protocolErrorf("a new archive after the backup manifest")
				}
				if archives == len(tablespaces) {
					return protocolErrorf("more archives than the %d tablespaces announced", len(tablespaces))
				}
				ts := tablespaces[archives]
				if err := checkNewArchive(m.Data[1:], ts); err != nil {
					return err
				}
				archives++
				if err := d.archive(ts); err != nil {
					return err
				}
			case msgManifest:
				switch {
				case !d.manifest:
					return protocolErrorf("a backup manifest that was not requested")
				case manifest:
					return protocolErrorf("a second backup manifest")
				case archives != len(tablespaces):
					return protocolErrorf("the backup manifest after %d of %d archives", archives, len(tablespaces))
				case len(m.Data) != 1:
					return protocolErrorf("a start-of-manifest message with %d unexpected bytes", len(m.Data)-1)
				}
				manifest = true
				if err := d.manifestData(); err != nil {
					return err
				}
			case msgProgress:
				if err := checkProgress(m.Data); err != nil {
					return err
				}
			case msgData:
				return protocolErrorf("archive data before the first archive started")
			default:
				return unexpected(m, "in the backup stream")
			}
		case *pgproto3.CopyDone:
			if archives != len(tablespaces) {
				return protocolErrorf("the backup stream ended after %d of %d archives", archives, len(tablespaces))
			}
			if d.manifest && !manifest {
				return protocolErrorf("the backup stream ended without the requested backup manifest")
			}
			return nil
		default:
			return unexpected(m, "in the backup stream")
		}
	}
}

// checkNewArchive checks a new-archive message (after the type byte): the
// archive name and the tablespace location as C strings, which must be
// those of the next tablespace in the list.
func checkNewArchive(b []byte, ts Tablespace) error {
	name, rest, ok1 := bytes.Cut(b, []byte{0})
	location, rest, ok2 := bytes.Cut(rest, []byte{0})
	if !ok1 || !ok2 || len(rest) != 0 {
		return protocolErrorf("malformed new-archive message %s: want an archive name and a location, each ended by NUL",
			quoteServerText(string(b)))
	}
	if want := archiveName(ts); string(name) != want || string(location) != ts.Location {
		return protocolErrorf("the server sent archive %s of location %s where the tablespace list has %s of location %s",
			quoteServerText(string(name)), quoteServerText(string(location)), want, quoteServerText(ts.Location))
	}
	return nil
}

// archiveName is the name PostgreSQL gives a tablespace's archive.
func archiveName(ts Tablespace) string {
	if ts.OID == 0 {
		return "base.tar"
	}
	return strconv.FormatUint(uint64(ts.OID), 10) + ".tar"
}

// checkProgress checks a progress message: the type byte and an int64.
func checkProgress(b []byte) error {
	if len(b) != 9 {
		return protocolErrorf("a progress message of %d bytes, want 9", len(b))
	}
	if n := int64(binary.BigEndian.Uint64(b[1:])); n < 0 {
		return protocolErrorf("a progress message of %d bytes done", n)
	}
	return nil
}

// archive hands one tablespace's archive to the handler, then reads what
// it left.
func (d *streamDecoder) archive(ts Tablespace) error {
	r := &copyReader{d: d, name: archiveName(ts), tar: &tarFraming{}}
	var herr error
	if d.h.Archive != nil {
		herr = d.h.Archive(ts, r)
	}
	return r.finish(herr)
}

// manifestData hands the backup manifest to the handler, then reads what
// it left.
func (d *streamDecoder) manifestData() error {
	r := &copyReader{d: d, name: "backup_manifest"}
	var herr error
	if d.h.Manifest != nil {
		herr = d.h.Manifest(r)
	}
	return r.finish(herr)
}

// copyReader reads one archive or the manifest out of the COPY data. It
// stops at CopyDone (13-14) or at the next new-archive, manifest or
// CopyDone message (15+), which it leaves for the decoder.
type copyReader struct {
	d    *streamDecoder
	name string
	tar  *tarFraming // nil for the manifest

	buf    []byte // unread bytes of the current message
	ended  bool   // the server's data is over
	zeros  int    // zero bytes still to hand out to end the tar archive
	err    error  // sticky: the stream is broken
	closed bool   // the handler has returned
}

// Read implements io.Reader.
func (r *copyReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := r.fill(); err != nil {
		return 0, err
	}
	if len(r.buf) > 0 {
		n := copy(p, r.buf)
		r.buf = r.buf[n:]
		return n, nil
	}
	n := min(len(p), r.zeros)
	clear(p[:n])
	r.zeros -= n
	return n, nil
}

// WriteTo implements io.WriterTo: it writes the stream to w a message at a
// time, without copying.
func (r *copyReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if err := r.fill(); err == io.EOF {
			return total, nil
		} else if err != nil {
			return total, err
		}
		var chunk []byte
		if len(r.buf) > 0 {
			chunk, r.buf = r.buf, nil
		} else {
			chunk = make([]byte, r.zeros)
			r.zeros = 0
		}
		n, err := w.Write(chunk)
		total += int64(n)
		if err == nil && n < len(chunk) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return total, err
		}
	}
}

// fill makes sure there is something to hand out: bytes in r.buf or, at
// the end of a tar archive, r.zeros. It returns io.EOF at the end.
func (r *copyReader) fill() error {
	if r.closed {
		return fmt.Errorf("base backup: %s read after its handler returned", r.name)
	}
	for r.err == nil && len(r.buf) == 0 {
		if r.ended {
			if r.zeros > 0 {
				return nil
			}
			return io.EOF
		}
		data, end, err := r.nextData()
		switch {
		case err != nil:
			r.err = err
		case end:
			r.ended = true
			if r.tar != nil {
				r.zeros, r.err = r.tar.end()
				if r.err != nil {
					r.err = fmt.Errorf("%w in %s", r.err, r.name)
				}
			}
		default:
			if r.tar != nil {
				if err := r.tar.feed(data); err != nil {
					r.err = fmt.Errorf("%w in %s", err, r.name)
					break
				}
				r.d.done += int64(len(data))
				if r.d.h.Progress != nil {
					r.d.h.Progress(r.d.done)
				}
			}
			r.buf = data
		}
	}
	return r.err
}

// nextData reads the next message of the COPY and returns its data, or
// end if the archive or manifest is over.
func (r *copyReader) nextData() (data []byte, end bool, err error) {
	for {
		m, err := r.d.recv()
		if err != nil {
			return nil, false, err
		}
		switch m := m.(type) {
		case *pgproto3.CopyData:
			if !r.d.stream {
				return m.Data, false, nil
			}
			if len(m.Data) == 0 {
				return nil, false, protocolErrorf("empty CopyData message in %s", r.name)
			}
			switch m.Data[0] {
			case msgData:
				return m.Data[1:], false, nil
			case msgProgress:
				if err := checkProgress(m.Data); err != nil {
					return nil, false, err
				}
				continue
			case msgNewArchive, msgManifest:
				r.d.pending = m
				return nil, true, nil
			}
		case *pgproto3.CopyDone:
			if r.d.stream {
				r.d.pending = m
			}
			return nil, true, nil
		}
		return nil, false, unexpected(m, "in "+r.name)
	}
}

// finish ends the handler's turn: a broken stream wins over the handler's
// error (which is often a consequence), then the handler's error, then
// whatever the handler did not read is read and discarded.
func (r *copyReader) finish(handlerErr error) error {
	defer func() { r.closed = true }()
	if r.err != nil {
		return r.err
	}
	if handlerErr != nil {
		return fmt.Errorf("base backup: %s: %w", r.name, handlerErr)
	}
	r.buf, r.zeros = nil, 0
	for {
		err := r.fill()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		r.buf, r.zeros = nil, 0
	}
	return nil
}

// Helpers shared with the other replication commands.
var (
	parseTimeline   = pgrepl.ParseTimeline
	quoteServerText = pgrepl.QuoteServerText
)
