package pgrepl

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/walship/walship/wal"
)

// readSlotVersion is the first PostgreSQL (server_version_num) with
// READ_REPLICATION_SLOT.
const readSlotVersion = 150000

// maxSlotName is the longest replication slot name PostgreSQL accepts:
// NAMEDATALEN - 1 bytes.
const maxSlotName = 63

// closeTimeout bounds the goodbye to a server whose connection is given up.
const closeTimeout = 5 * time.Second

// sqlstateDuplicateObject is what CREATE_REPLICATION_SLOT fails with when
// the slot exists.
const sqlstateDuplicateObject = "42710"

var (
	// ErrUnsupported reports a replication command the server is too old
	// for; the message names the version needed.
	ErrUnsupported = errors.New("the PostgreSQL server is too old for this replication command")
	// ErrProtocol matches (with errors.Is) every error about a reply
	// walship does not understand: an unknown message type, a message too
	// short for its type, a result set of the wrong shape, a malformed
	// value. The server is not behaving like the PostgreSQL 13 to 18
	// walship knows; the message says what was wrong.
	ErrProtocol = errors.New("unexpected reply in the replication protocol")
)

// protocolError is an ErrProtocol with a message of its own.
type protocolError struct{ msg string }

func (e *protocolError) Error() string        { return e.msg }
func (e *protocolError) Is(target error) bool { return target == ErrProtocol }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// TimelineHistory runs TIMELINE_HISTORY tli and returns the name the
// server gives the history file (such as "00000002.history") and its
// content, exactly as the server has it. A name that is not tli's history
// file is an error matching ErrProtocol; the content is not parsed (see
// wal.ParseHistory). A timeline without a history file (timeline 1) gives
// the server's error.
func TimelineHistory(ctx context.Context, conn *pgconn.PgConn, tli wal.TimeLineID) (name string, content []byte, err error) {
	if tli == 0 {
		return "", nil, errors.New("TIMELINE_HISTORY: timeline 0 does not exist")
	}
	cmd := fmt.Sprintf("TIMELINE_HISTORY %d", tli)
	results, err := conn.Exec(ctx, cmd).ReadAll()
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", cmd, err)
	}
	if len(results) != 1 {
		return "", nil, protocolErrorf("%s: got %d result sets, want 1", cmd, len(results))
	}
	return parseTimelineHistory(tli, results[0])
}

// parseTimelineHistory reads the result of TIMELINE_HISTORY tli: one row
// of filename and content.
func parseTimelineHistory(tli wal.TimeLineID, r *pgconn.Result) (string, []byte, error) {
	cmd := fmt.Sprintf("TIMELINE_HISTORY %d", tli)
	if r.Err != nil {
		return "", nil, fmt.Errorf("%s: %w", cmd, r.Err)
	}
	if err := checkShape(cmd, r, 2); err != nil {
		return "", nil, err
	}
	row := r.Rows[0]
	if row[0] == nil || row[1] == nil {
		return "", nil, protocolErrorf("%s: the reply has NULL values", cmd)
	}
	name := string(row[0])
	fn, err := wal.ParseFileName(name)
	if err != nil || fn.Kind != wal.KindHistory || fn.TLI != tli {
		return "", nil, protocolErrorf("%s: the server sent file name %s, want %s",
			cmd, QuoteServerText(name), wal.HistoryFileName(tli))
	}
	return name, row[1], nil
}

// checkShape checks that r has exactly one row of ncol values.
func checkShape(cmd string, r *pgconn.Result, ncol int) error {
	if len(r.Rows) != 1 || len(r.Rows[0]) != ncol {
		cols := 0
		if len(r.Rows) > 0 {
			cols = len(r.Rows[0])
		}
		return protocolErrorf("%s: got %d rows of %d columns, want 1 row of %d", cmd, len(r.Rows), cols, ncol)
	}
	return nil
}

// Slot is a physical replication slot as READ_REPLICATION_SLOT reports it.
type Slot struct {
	Exists bool
	// RestartLSN is the oldest WAL the slot keeps, 0 if it keeps none
	// (a slot created without RESERVE_WAL that was never used).
	RestartLSN wal.LSN
	// RestartTLI is the timeline of RestartLSN, 0 when RestartLSN is.
	RestartTLI wal.TimeLineID
}

// ReadReplicationSlot runs READ_REPLICATION_SLOT (PostgreSQL 15 and newer;
// older servers give an error matching ErrUnsupported, decided from
// ServerVersion before anything is sent). A missing slot gives Exists
// false; a logical slot is an error (the server's).
func ReadReplicationSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (Slot, error) {
	version, err := ServerVersion(conn)
	if err != nil {
		return Slot{}, err
	}
	if version < readSlotVersion {
		return Slot{}, fmt.Errorf("READ_REPLICATION_SLOT needs PostgreSQL 15 or newer, the server is %s: %w",
			formatVersion(version), ErrUnsupported)
	}
	if err := checkSlotName(slot); err != nil {
		return Slot{}, err
	}
	results, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+quoteIdentifier(slot)).ReadAll()
	if err != nil {
		return Slot{}, fmt.Errorf("READ_REPLICATION_SLOT %s: %w", slot, err)
	}
	if len(results) != 1 {
		return Slot{}, protocolErrorf("READ_REPLICATION_SLOT %s: got %d result sets, want 1", slot, len(results))
	}
	return parseSlot(slot, results[0])
}

// parseSlot reads the result of READ_REPLICATION_SLOT: one row of
// slot_type, restart_lsn and restart_tli, all NULL for a missing slot.
func parseSlot(slot string, r *pgconn.Result) (Slot, error) {
	cmd := "READ_REPLICATION_SLOT " + slot
	if r.Err != nil {
		return Slot{}, fmt.Errorf("%s: %w", cmd, r.Err)
	}
	if err := checkShape(cmd, r, 3); err != nil {
		return Slot{}, err
	}
	row := r.Rows[0]
	switch {
	case row[0] == nil:
		if row[1] != nil || row[2] != nil {
			return Slot{}, protocolErrorf("%s: a slot without a type has a restart position", cmd)
		}
		return Slot{}, nil
	case string(row[0]) != "physical":
		return Slot{}, fmt.Errorf("%s: the slot is of type %s, not physical", cmd, QuoteServerText(string(row[0])))
	}
	s := Slot{Exists: true}
	if (row[1] == nil) != (row[2] == nil) {
		return Slot{}, protocolErrorf("%s: restart_lsn and restart_tli must both be NULL or neither", cmd)
	}
	if row[1] == nil {
		return s, nil
	}
	lsn, err := wal.ParseLSN(string(row[1]))
	if err != nil || lsn == 0 {
		return Slot{}, protocolErrorf("%s: invalid restart_lsn %s", cmd, QuoteServerText(string(row[1])))
	}
	tli, err := ParseTimeline(row[2])
	if err != nil {
		return Slot{}, protocolErrorf("%s: restart_tli: %v", cmd, err)
	}
	s.RestartLSN, s.RestartTLI = lsn, tli
	return s, nil
}

// CreatePhysicalSlot runs CREATE_REPLICATION_SLOT slot PHYSICAL
// RESERVE_WAL: the slot keeps WAL from the server's current position on,
// before anything streams from it. A slot of that name that exists already
// is not an error: created is false then, whatever the existing slot's
// type (ReadReplicationSlot tells).
func CreatePhysicalSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (created bool, err error) {
	if err := checkSlotName(slot); err != nil {
		return false, err
	}
	// The legacy option syntax, which PostgreSQL 13 understands and 15
	// and later still accept.
	cmd := "CREATE_REPLICATION_SLOT " + quoteIdentifier(slot) + " PHYSICAL RESERVE_WAL"
	_, err = conn.Exec(ctx, cmd).ReadAll()
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == sqlstateDuplicateObject:
		return false, nil
	case err != nil:
		return false, fmt.Errorf("creating replication slot %s: %w", slot, err)
	}
	return true, nil
}

// checkSlotName applies PostgreSQL's rule for replication slot names
// (ReplicationSlotValidateName), so that a bad name fails before it
// reaches the server.
func checkSlotName(slot string) error {
	ok := len(slot) > 0 && len(slot) <= maxSlotName
	for i := 0; ok && i < len(slot); i++ {
		c := slot[i]
		ok = 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_'
	}
	if !ok {
		return fmt.Errorf("invalid replication slot name %s: use 1 to %d lower-case letters, digits and underscores",
			QuoteServerText(slot), maxSlotName)
	}
	return nil
}

// quoteIdentifier quotes a name for the replication command language,
// which reads "..." as an identifier with "" for a double quote.
func quoteIdentifier(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// StartReplicationCommand builds START_REPLICATION [SLOT slot] PHYSICAL
// start [TIMELINE tli]: SLOT only when slot is not empty, TIMELINE only
// when tli is not 0 (the server then streams its current timeline). The
// slot name must follow PostgreSQL's rule — 1 to 63 lower-case letters,
// digits and underscores — and is quoted as an identifier.
func StartReplicationCommand(slot string, start wal.LSN, tli wal.TimeLineID) (string, error) {
	var b strings.Builder
	b.WriteString("START_REPLICATION ")
	if slot != "" {
		if err := checkSlotName(slot); err != nil {
			return "", err
		}
		b.WriteString("SLOT " + quoteIdentifier(slot) + " ")
	}
	b.WriteString("PHYSICAL " + start.String())
	if tli != 0 {
		b.WriteString(" TIMELINE " + strconv.FormatUint(uint64(tli), 10))
	}
	return b.String(), nil
}

// TimelineEndedError is StartReplication's error when start is exactly
// where the requested timeline ended on the server: there is nothing to
// stream, so the server does not enter COPY mode and answers at once with
// what EndOfStream would return. The connection is ready for the next
// command; continue on TimelineEnd.NextTLI.
type TimelineEndedError struct {
	TimelineEnd
}

func (e *TimelineEndedError) Error() string {
	return fmt.Sprintf("START_REPLICATION: the timeline ends at the requested start; timeline %d follows from %s",
		e.NextTLI, e.NextStart)
}

// StartReplication sends START_REPLICATION (see StartReplicationCommand)
// and waits for the server to enter COPY mode; then call Receive. A server
// error comes back wrapping a *pgconn.PgError (the connection stays
// usable), and a start at the very end of a historic timeline as a
// *TimelineEndedError. Some errors only come after the server entered COPY
// mode — a start ahead of the server's flush position, WAL already removed
// — and so come from Receive.
//
// After any other error once the command went out (ctx ended while
// waiting, a broken connection, a reply walship does not understand)
// StartReplication closes conn: the server may be streaming already.
func StartReplication(ctx context.Context, conn *pgconn.PgConn, slot string, start wal.LSN, tli wal.TimeLineID) error {
	cmd, err := StartReplicationCommand(slot, start, tli)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("START_REPLICATION: %w", err)
	}
	if err := send(ctx, conn, &pgproto3.Query{String: cmd}); err != nil {
		closeConn(ctx, conn)
		return fmt.Errorf("sending %s: %w", cmd, err)
	}
	for {
		m, err := conn.ReceiveMessage(ctx)
		if err != nil {
			closeConn(ctx, conn)
			return fmt.Errorf("%s: %w", cmd, err)
		}
		switch m := m.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus, *pgproto3.NotificationResponse:
		case *pgproto3.ErrorResponse:
			return serverError(ctx, conn, cmd, m)
		case *pgproto3.RowDescription:
			end, err := readTimelineEnd(ctx, conn, m)
			if err != nil {
				return fmt.Errorf("%s: %w", cmd, err)
			}
			return &TimelineEndedError{end}
		default:
			closeConn(ctx, conn)
			return protocolErrorf("%s: unexpected %s instead of the start of the stream", cmd, messageName(m))
		}
	}
}

// serverError turns an ErrorResponse into an error and reads up to the
// ReadyForQuery that follows it, so that conn can run the next command. A
// FATAL error ends the session: the server closes the connection.
func serverError(ctx context.Context, conn *pgconn.PgConn, what string, m *pgproto3.ErrorResponse) error {
	err := fmt.Errorf("%s: %w", what, pgconn.ErrorResponseToPgError(m))
	severity := m.SeverityUnlocalized
	if severity == "" {
		severity = m.Severity
	}
	if severity == "FATAL" || severity == "PANIC" {
		return err
	}
	for {
		m, rerr := conn.ReceiveMessage(ctx)
		if rerr != nil {
			return err
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return err
		}
	}
}

// closeConn closes conn without waiting long for a server that may be
// stuck, even when ctx has ended.
func closeConn(ctx context.Context, conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	_ = conn.Close(ctx) // the error that made us give up is the one to report
}

// messageName names a message as the protocol documentation does.
func messageName(m pgproto3.BackendMessage) string {
	if cd, ok := m.(*pgproto3.CopyData); ok && len(cd.Data) > 0 {
		return fmt.Sprintf("CopyData of type %q", cd.Data[0])
	}
	name := fmt.Sprintf("%T", m)
	return name[strings.LastIndexByte(name, '.')+1:]
}

// formatVersion writes a server_version_num as a version ("15.18").
func formatVersion(v int) string {
	if v >= 100000 {
		return fmt.Sprintf("%d.%d", v/10000, v%10000)
	}
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}
