package pgrepl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/walship/walship/wal"
)

// Sizes of the messages of the stream, type byte included
// (src/backend/replication/walsender.c, walreceiver.c).
const (
	xlogDataHeaderSize = 1 + 8 + 8 + 8         // 'w', start, walEnd, sendTime
	keepaliveSize      = 1 + 8 + 8 + 1         // 'k', walEnd, sendTime, replyRequested
	standbyStatusSize  = 1 + 8 + 8 + 8 + 8 + 1 // 'r', write, flush, apply, clock, replyRequested
)

// pgEpochMicros is PostgreSQL's epoch, 2000-01-01 00:00:00 UTC, in
// microseconds since the Unix epoch: the stream's clocks count from it.
const pgEpochMicros = 946684800 * 1_000_000

// ErrServerShutdown reports that the server ended replication because it
// is shutting down. It does so once the client has confirmed all the WAL it
// sent (Flush of a status update, or Write when Flush is 0), and asks for
// that confirmation with keepalives: a client that does not answer holds
// the shutdown up until wal_sender_timeout. The connection closes;
// streaming can resume from another session.
var ErrServerShutdown = errors.New("the server ended replication: it is shutting down")

// XLogData is a piece of WAL ('w' message).
type XLogData struct {
	Start      wal.LSN   // the position of Data's first byte
	End        wal.LSN   // the end of WAL on the server when it sent this
	ServerTime time.Time // the server's clock when it sent this
	// Data is the WAL from Start on. It points into the connection's
	// buffer: it is valid until the next read on the connection (the next
	// Receive), so copy or write it out before then.
	Data []byte
}

// Keepalive is the server's heartbeat ('k' message).
type Keepalive struct {
	End        wal.LSN   // the end of WAL on the server
	ServerTime time.Time // the server's clock when it sent this
	// ReplyRequested asks for a standby status update at once; the server
	// disconnects a client that stays silent for wal_sender_timeout.
	ReplyRequested bool
}

// CopyDone is the server ending the stream: the timeline being streamed
// ended (the server was promoted, or it follows a new timeline). Call
// EndOfStream next.
type CopyDone struct{}

// ParseCopyData decodes one CopyData payload of the replication stream
// from the server into *XLogData or *Keepalive. Anything else — an empty
// payload, an unknown type byte, a message too short for its type, WAL
// reaching beyond the end of the LSN space — is an error matching
// ErrProtocol. An XLogData's Data is a sub-slice of b.
func ParseCopyData(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, protocolErrorf("replication stream: empty CopyData message")
	}
	switch b[0] {
	case 'w':
		if len(b) < xlogDataHeaderSize {
			return nil, protocolErrorf("replication stream: XLogData message of %d bytes, want at least %d", len(b), xlogDataHeaderSize)
		}
		m := &XLogData{
			Start:      wal.LSN(binary.BigEndian.Uint64(b[1:])),
			End:        wal.LSN(binary.BigEndian.Uint64(b[9:])),
			ServerTime: pgTime(int64(binary.BigEndian.Uint64(b[17:]))),
			Data:       b[xlogDataHeaderSize:],
		}
		if end := m.Start + wal.LSN(len(m.Data)); end < m.Start {
			return nil, protocolErrorf("replication stream: %d bytes of WAL from %s run past the end of the LSN space", len(m.Data), m.Start)
		}
		return m, nil
	case 'k':
		// Only the length of PostgreSQL 13 to 18 is known; like
		// pg_receivewal, read what is known of a longer one.
		if len(b) < keepaliveSize {
			return nil, protocolErrorf("replication stream: keepalive message of %d bytes, want %d", len(b), keepaliveSize)
		}
		return &Keepalive{
			End:            wal.LSN(binary.BigEndian.Uint64(b[1:])),
			ServerTime:     pgTime(int64(binary.BigEndian.Uint64(b[9:]))),
			ReplyRequested: b[17] != 0,
		}, nil
	default:
		return nil, protocolErrorf("replication stream: unknown message type %q", b[0])
	}
}

// pgTime converts a stream clock (microseconds since 2000-01-01 UTC).
func pgTime(us int64) time.Time {
	// Seconds and microseconds apart, so that no value overflows.
	return time.Unix(pgEpochMicros/1_000_000+us/1_000_000, us%1_000_000*1000).UTC()
}

// Receive waits for the next message of the stream that StartReplication
// started and returns *XLogData, *Keepalive or *CopyDone. Notices and
// parameter changes the server interleaves are skipped.
//
// When ctx has a deadline that passes first, Receive returns an error for
// which pgconn.Timeout is true, and the connection stays usable: this is
// how to wake up and send a standby status update. A ctx cancelled while
// Receive waits gives an error matching context.Canceled, with the
// connection usable too; but a ctx already done when Receive is called
// gives an error for which pgconn.Timeout is true, even when it was
// cancelled — check ctx.Err() to tell why Receive returned.
//
// An error the server reports (WAL already removed, a start ahead of its
// flush position) comes back wrapping a *pgconn.PgError; Receive then reads
// up to the ReadyForQuery that follows, and conn can run another command.
// A server that shuts down ends the stream with ErrServerShutdown. Other
// errors (ErrProtocol, a broken connection) end the stream: close conn.
func Receive(ctx context.Context, conn *pgconn.PgConn) (any, error) {
	for {
		m, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("replication stream: %w", err)
		}
		switch m := m.(type) {
		case *pgproto3.CopyData:
			return ParseCopyData(m.Data)
		case *pgproto3.CopyDone:
			return &CopyDone{}, nil
		case *pgproto3.ErrorResponse:
			return nil, serverError(ctx, conn, "replication stream", m)
		case *pgproto3.CommandComplete:
			// WalSndDone: "COPY 0", then the server exits.
			return nil, ErrServerShutdown
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus, *pgproto3.NotificationResponse:
		default:
			return nil, protocolErrorf("replication stream: unexpected %s", messageName(m))
		}
	}
}

// StandbyStatus is the standby status update ('r' message): how far the
// client has WAL. The server keeps (through a slot) and reports (in
// pg_stat_replication) these positions; zero means unknown.
type StandbyStatus struct {
	Write, Flush, Apply wal.LSN
	// ReplyRequested asks the server for a keepalive at once.
	ReplyRequested bool
}

// EncodeStandbyStatus builds the CopyData payload of a standby status
// update: 'r', the three positions, now as microseconds since 2000-01-01
// UTC, and the reply byte.
func EncodeStandbyStatus(st StandbyStatus, now time.Time) []byte {
	b := make([]byte, standbyStatusSize)
	b[0] = 'r'
	binary.BigEndian.PutUint64(b[1:], uint64(st.Write))
	binary.BigEndian.PutUint64(b[9:], uint64(st.Flush))
	binary.BigEndian.PutUint64(b[17:], uint64(st.Apply))
	binary.BigEndian.PutUint64(b[25:], uint64(now.UnixMicro()-pgEpochMicros))
	if st.ReplyRequested {
		b[33] = 1
	}
	return b
}

// SendStandbyStatus sends a standby status update, stamped with the
// current time, and flushes it. It must not run while another goroutine
// uses conn (a Receive, say). If the write fails (ctx ended while writing,
// a broken connection) conn is closed: part of the message may have gone
// out. A ctx that ended before leaves conn alone.
func SendStandbyStatus(ctx context.Context, conn *pgconn.PgConn, st StandbyStatus) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sending a standby status update: %w", err)
	}
	err := send(ctx, conn, &pgproto3.CopyData{Data: EncodeStandbyStatus(st, time.Now())})
	if err != nil {
		closeConn(ctx, conn)
		return fmt.Errorf("sending a standby status update: %w", err)
	}
	return nil
}

// send writes msg to the server, giving up when ctx ends. pgconn watches
// ctx only inside its own calls, so writes through Frontend get a write
// deadline of their own, removed afterwards.
func send(ctx context.Context, conn *pgconn.PgConn, msg pgproto3.FrontendMessage) error {
	nc := conn.Conn()
	var mu sync.Mutex
	finished := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			_ = nc.SetWriteDeadline(time.Now())
		}
	})
	conn.Frontend().Send(msg)
	err := conn.Frontend().Flush()
	if !stop() {
		// The deadline may be set (or about to be): clear it.
		mu.Lock()
		finished = true
		mu.Unlock()
		_ = nc.SetWriteDeadline(time.Time{})
		if err != nil {
			return fmt.Errorf("%w: %w", ctx.Err(), err)
		}
	}
	return err
}

// TimelineEnd is what the server says after it ended a timeline's stream.
type TimelineEnd struct {
	// NextTLI is the timeline that follows, 0 when the server sent no
	// result set (the stream ended without a timeline switch).
	NextTLI wal.TimeLineID
	// NextStart is where NextTLI forked off: the end of the WAL of the
	// timeline streamed.
	NextStart wal.LSN
}

// EndOfStream is called after Receive returned *CopyDone: it ends the COPY
// from the client's side, then reads the server's reply — the optional
// result set of next_tli and next_tli_startpos and the CommandComplete
// messages — up to ReadyForQuery, so that conn can run the next command
// (TIMELINE_HISTORY, START_REPLICATION). A server error comes back
// wrapping a *pgconn.PgError, with conn usable; after any other error conn
// is closed.
func EndOfStream(ctx context.Context, conn *pgconn.PgConn) (TimelineEnd, error) {
	err := ctx.Err()
	if err == nil {
		err = send(ctx, conn, &pgproto3.CopyDone{})
	}
	if err != nil {
		closeConn(ctx, conn)
		return TimelineEnd{}, fmt.Errorf("ending the replication stream: %w", err)
	}
	return readTimelineEnd(ctx, conn, nil)
}

// readTimelineEnd reads the end of START_REPLICATION's reply, starting
// with first if it is not nil: at most one result set of next_tli and
// next_tli_startpos, CommandComplete messages, ReadyForQuery. It closes
// conn after any error but the server's.
func readTimelineEnd(ctx context.Context, conn *pgconn.PgConn, first pgproto3.BackendMessage) (TimelineEnd, error) {
	const what = "end of the replication stream"
	fail := func(err error) (TimelineEnd, error) {
		closeConn(ctx, conn)
		return TimelineEnd{}, err
	}
	var end TimelineEnd
	inResult, results, rows := false, 0, 0
	for m := first; ; m = nil {
		if m == nil {
			var err error
			if m, err = conn.ReceiveMessage(ctx); err != nil {
				return fail(fmt.Errorf("%s: %w", what, err))
			}
		}
		switch m := m.(type) {
		case *pgproto3.RowDescription:
			if inResult || results > 0 {
				return fail(protocolErrorf("%s: a second result set", what))
			}
			if len(m.Fields) != 2 {
				return fail(protocolErrorf("%s: a result set of %d columns, want 2 (next_tli, next_tli_startpos)", what, len(m.Fields)))
			}
			for i, f := range m.Fields {
				if f.Format != 0 {
					return fail(protocolErrorf("%s: column %d is in binary format, want text", what, i+1))
				}
			}
			inResult = true
		case *pgproto3.DataRow:
			if !inResult || rows > 0 {
				return fail(protocolErrorf("%s: unexpected DataRow", what))
			}
			rows++
			var err error
			if end, err = parseTimelineEnd(m.Values); err != nil {
				return fail(err)
			}
		case *pgproto3.CommandComplete:
			if inResult {
				if rows != 1 {
					return fail(protocolErrorf("%s: a result set without a row", what))
				}
				inResult = false
				results++
			}
		case *pgproto3.ReadyForQuery:
			if inResult {
				return fail(protocolErrorf("%s: the result set did not end", what))
			}
			return end, nil
		case *pgproto3.ErrorResponse:
			return TimelineEnd{}, serverError(ctx, conn, what, m)
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus, *pgproto3.NotificationResponse:
		default:
			return fail(protocolErrorf("%s: unexpected %s", what, messageName(m)))
		}
	}
}

// parseTimelineEnd reads the row of next_tli (int8) and next_tli_startpos
// (an LSN) in text format.
func parseTimelineEnd(values [][]byte) (TimelineEnd, error) {
	const what = "end of the replication stream"
	if len(values) != 2 || values[0] == nil || values[1] == nil {
		return TimelineEnd{}, protocolErrorf("%s: want a row of next_tli and next_tli_startpos, without NULLs", what)
	}
	tli, err := ParseTimeline(values[0])
	if err != nil {
		return TimelineEnd{}, protocolErrorf("%s: next_tli: %v", what, err)
	}
	lsn, err := wal.ParseLSN(string(values[1]))
	if err != nil {
		return TimelineEnd{}, protocolErrorf("%s: next_tli_startpos: %v", what, err)
	}
	return TimelineEnd{NextTLI: tli, NextStart: lsn}, nil
}
