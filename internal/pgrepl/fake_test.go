package pgrepl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/walship/walship/wal"
)

// These tests drive the client's side of the protocol against a scripted
// server: the cases a real PostgreSQL produces only rarely (notices in the
// stream, a message split across a deadline, a shutdown, malformed
// replies). The integration tests run the same code against PostgreSQL.

// fakeServer is the server's side of a connection: script talks to it
// with the message helpers.
type fakeServer struct {
	*pgproto3.Backend
	conn net.Conn
}

// fakeConn connects to a server running script and returns the client's
// side, a *pgconn.PgConn of a server that announced server_version. The
// test fails if script returns an error.
func fakeConn(t *testing.T, serverVersion string, script func(s *fakeServer) error) *pgconn.PgConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		l.Close()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- script(&fakeServer{Backend: pgproto3.NewBackend(c, c), conn: c})
	}()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig("host=127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgconn.Construct(&pgconn.HijackedConn{
		Conn:              nc,
		ParameterStatuses: map[string]string{"server_version": serverVersion},
		TxStatus:          'I',
		Config:            cfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		nc.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fake server: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("fake server: script did not finish")
		}
	})
	return conn
}

// send sends messages and flushes them.
func (s *fakeServer) send(msgs ...pgproto3.BackendMessage) error {
	for _, m := range msgs {
		s.Send(m)
	}
	return s.Flush()
}

// expect receives the next message, which must be of want's type, and
// returns it.
func (s *fakeServer) expect(want pgproto3.FrontendMessage) (pgproto3.FrontendMessage, error) {
	m, err := s.Receive()
	if err != nil {
		return nil, err
	}
	if fmt.Sprintf("%T", m) != fmt.Sprintf("%T", want) {
		return nil, fmt.Errorf("got %T, want %T", m, want)
	}
	return m, nil
}

// expectQuery receives a Query, which must be sql.
func (s *fakeServer) expectQuery(sql string) error {
	m, err := s.expect(&pgproto3.Query{})
	if err != nil {
		return err
	}
	if q := m.(*pgproto3.Query).String; q != sql {
		return fmt.Errorf("query %q, want %q", q, sql)
	}
	return nil
}

// answerPing answers a query "SELECT 1" with an empty command, which
// proves the client's connection is ready for commands.
func (s *fakeServer) answerPing() error {
	if err := s.expectQuery("SELECT 1"); err != nil {
		return err
	}
	return s.send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
}

// ping checks that conn can run a command.
func ping(t *testing.T, ctx context.Context, conn *pgconn.PgConn) {
	t.Helper()
	if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Errorf("the connection cannot run a command: %v", err)
	}
}

func copyData(b []byte) *pgproto3.CopyData { return &pgproto3.CopyData{Data: b} }

var (
	copyBoth = &pgproto3.CopyBothResponse{}
	ready    = &pgproto3.ReadyForQuery{TxStatus: 'I'}
	notice   = &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: "hello"}
)

func timelineResult(tli, start string) []pgproto3.BackendMessage {
	return []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte("next_tli"), DataTypeOID: 20, DataTypeSize: 8, TypeModifier: -1},
			{Name: []byte("next_tli_startpos"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
		}},
		&pgproto3.DataRow{Values: [][]byte{[]byte(tli), []byte(start)}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT")},
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestStreamWithFakeServer walks through a whole stream: START_REPLICATION
// with a notice first, data with interleaved notices and parameter
// changes, a deadline in the middle of a message, a status update, the
// end of the timeline.
func TestStreamWithFakeServer(t *testing.T) {
	ctx := testContext(t)
	wal1 := bytes.Repeat([]byte{0xAB}, 100_000)
	wal2 := []byte("more")
	second := xlogData(0x3000000+wal.LSN(len(wal1)), 0x3100000, 5, wal2)
	proceed := make(chan struct{})
	conn := fakeConn(t, "15.4", func(s *fakeServer) error {
		if err := s.expectQuery(`START_REPLICATION SLOT "s" PHYSICAL 0/3000000 TIMELINE 1`); err != nil {
			return err
		}
		if err := s.send(notice, copyBoth,
			copyData(xlogData(0x3000000, 0x3100000, 1, wal1)),
			&pgproto3.ParameterStatus{Name: "application_name", Value: "x"}, notice,
			copyData(keepalive(0x3100000, 2, 1))); err != nil {
			return err
		}
		// Half of a message, then the rest after the client's
		// deadline passed.
		wire, _ := copyData(second).Encode(nil)
		if _, err := s.conn.Write(wire[:10]); err != nil {
			return err
		}
		<-proceed
		if _, err := s.conn.Write(wire[10:]); err != nil {
			return err
		}
		m, err := s.expect(&pgproto3.CopyData{})
		if err != nil {
			return err
		}
		status := m.(*pgproto3.CopyData).Data
		if len(status) != 34 || status[0] != 'r' || !bytes.Equal(status[1:9], []byte{0, 0, 0, 0, 3, 1, 0x86, 0xA4}) || status[33] != 1 {
			return fmt.Errorf("status update % x", status)
		}
		if err := s.send(&pgproto3.CopyDone{}); err != nil {
			return err
		}
		if _, err := s.expect(&pgproto3.CopyDone{}); err != nil {
			return err
		}
		msgs := append(timelineResult("2", "0/30186A4"), &pgproto3.CommandComplete{CommandTag: []byte("START_STREAMING")}, ready)
		if err := s.send(msgs...); err != nil {
			return err
		}
		return s.answerPing()
	})

	if err := StartReplication(ctx, conn, "s", 0x3000000, 1); err != nil {
		t.Fatal(err)
	}
	m, err := Receive(ctx, conn)
	if x, ok := m.(*XLogData); err != nil || !ok || x.Start != 0x3000000 || !bytes.Equal(x.Data, wal1) {
		t.Fatalf("first Receive = %T, %v", m, err)
	}
	m, err = Receive(ctx, conn)
	if k, ok := m.(*Keepalive); err != nil || !ok || k.End != 0x3100000 || !k.ReplyRequested {
		t.Fatalf("second Receive = %#v, %v; want the keepalive", m, err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	m, err = Receive(short, conn)
	cancel()
	if !pgconn.Timeout(err) || m != nil {
		t.Fatalf("Receive with half a message before the deadline = %#v, %v; want a timeout", m, err)
	}
	close(proceed)
	m, err = Receive(ctx, conn)
	if x, ok := m.(*XLogData); err != nil || !ok || x.Start != 0x3000000+wal.LSN(len(wal1)) || string(x.Data) != "more" {
		t.Fatalf("Receive after the deadline = %#v, %v; want the rest of the message", m, err)
	}
	if err := SendStandbyStatus(ctx, conn, StandbyStatus{Write: 0x30186A4, ReplyRequested: true}); err != nil {
		t.Fatal(err)
	}
	if m, err := Receive(ctx, conn); err != nil || m == nil || fmt.Sprintf("%T", m) != "*pgrepl.CopyDone" {
		t.Fatalf("Receive at the end of the timeline = %#v, %v", m, err)
	}
	end, err := EndOfStream(ctx, conn)
	if want := (TimelineEnd{NextTLI: 2, NextStart: 0x30186A4}); err != nil || end != want {
		t.Fatalf("EndOfStream = %+v, %v; want %+v", end, err, want)
	}
	ping(t, ctx, conn)
}

func TestReceiveServerError(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "15.4", func(s *fakeServer) error {
		if err := s.expectQuery("START_REPLICATION PHYSICAL 0/0"); err != nil {
			return err
		}
		err := s.send(copyBoth, &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "58P01",
			Message: "requested WAL segment 000000010000000000000000 has already been removed"}, ready)
		if err != nil {
			return err
		}
		return s.answerPing()
	})
	if err := StartReplication(ctx, conn, "", 0, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Receive(ctx, conn)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "58P01" {
		t.Fatalf("Receive = %v, want the server's error", err)
	}
	ping(t, ctx, conn)
}

func TestReceiveServerShutdown(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "15.4", func(s *fakeServer) error {
		if err := s.expectQuery("START_REPLICATION PHYSICAL 0/1000000"); err != nil {
			return err
		}
		return s.send(copyBoth, &pgproto3.CommandComplete{CommandTag: []byte("COPY 0")})
	})
	if err := StartReplication(ctx, conn, "", 0x1000000, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := Receive(ctx, conn); !errors.Is(err, ErrServerShutdown) {
		t.Fatalf("Receive = %v, want ErrServerShutdown", err)
	}
}

func TestReceiveProtocolErrors(t *testing.T) {
	for name, msg := range map[string]pgproto3.BackendMessage{
		"unknown CopyData": copyData([]byte("x")),
		"short XLogData":   copyData([]byte("w123")),
		"RowDescription":   &pgproto3.RowDescription{},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t)
			conn := fakeConn(t, "15.4", func(s *fakeServer) error {
				if err := s.expectQuery("START_REPLICATION PHYSICAL 0/1000000"); err != nil {
					return err
				}
				return s.send(copyBoth, msg)
			})
			if err := StartReplication(ctx, conn, "", 0x1000000, 0); err != nil {
				t.Fatal(err)
			}
			if m, err := Receive(ctx, conn); !errors.Is(err, ErrProtocol) {
				t.Fatalf("Receive = %#v, %v; want an ErrProtocol", m, err)
			}
		})
	}
}

func TestReceiveCancel(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "15.4", func(s *fakeServer) error {
		if err := s.expectQuery("START_REPLICATION PHYSICAL 0/1000000"); err != nil {
			return err
		}
		if err := s.send(copyBoth); err != nil {
			return err
		}
		// The client's status update says it is back.
		if _, err := s.expect(&pgproto3.CopyData{}); err != nil {
			return err
		}
		return s.send(copyData(keepalive(1, 1, 0)))
	})
	if err := StartReplication(ctx, conn, "", 0x1000000, 0); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := Receive(cctx, conn); !errors.Is(err, context.Canceled) || pgconn.Timeout(err) {
		t.Fatalf("Receive cancelled while waiting = %v, want context.Canceled", err)
	}
	// An already ended context counts as a timeout for pgconn.
	if _, err := Receive(cctx, conn); !pgconn.Timeout(err) {
		t.Fatalf("Receive with a cancelled context = %v, want a pgconn timeout", err)
	}
	if conn.IsClosed() {
		t.Fatal("the connection was closed")
	}
	if err := SendStandbyStatus(ctx, conn, StandbyStatus{}); err != nil {
		t.Fatal(err)
	}
	if m, err := Receive(ctx, conn); err != nil || m.(*Keepalive).End != 1 {
		t.Fatalf("Receive after the cancellations = %#v, %v", m, err)
	}
}

func TestStartReplicationAtTimelineEnd(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "15.4", func(s *fakeServer) error {
		if err := s.expectQuery("START_REPLICATION PHYSICAL 0/5000000 TIMELINE 1"); err != nil {
			return err
		}
		msgs := append(timelineResult("2", "0/5000000"), &pgproto3.CommandComplete{CommandTag: []byte("START_STREAMING")}, ready)
		if err := s.send(msgs...); err != nil {
			return err
		}
		return s.answerPing()
	})
	err := StartReplication(ctx, conn, "", 0x5000000, 1)
	var ended *TimelineEndedError
	if !errors.As(err, &ended) || ended.NextTLI != 2 || ended.NextStart != 0x5000000 {
		t.Fatalf("StartReplication = %v, want a TimelineEndedError", err)
	}
	ping(t, ctx, conn)
}

func TestStartReplicationServerError(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "15.4", func(s *fakeServer) error {
		if err := s.expectQuery(`START_REPLICATION SLOT "nope" PHYSICAL 0/1000000`); err != nil {
			return err
		}
		err := s.send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42704",
			Message: `replication slot "nope" does not exist`}, ready)
		if err != nil {
			return err
		}
		return s.answerPing()
	})
	err := StartReplication(ctx, conn, "nope", 0x1000000, 0)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42704" || !strings.Contains(err.Error(), "START_REPLICATION") {
		t.Fatalf("StartReplication = %v, want the server's error", err)
	}
	ping(t, ctx, conn)
}

func TestStartReplicationTimeout(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "15.4", func(s *fakeServer) error {
		if err := s.expectQuery("START_REPLICATION PHYSICAL 0/1000000"); err != nil {
			return err
		}
		// The client gives up and closes.
		m, err := s.Receive()
		if _, ok := m.(*pgproto3.Terminate); err == nil && !ok {
			return fmt.Errorf("got %T, want the connection closed", m)
		}
		return nil
	})
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := StartReplication(short, conn, "", 0x1000000, 0); !pgconn.Timeout(err) || !conn.IsClosed() {
		t.Fatalf("StartReplication without an answer = %v (closed: %v), want a timeout and a closed connection", err, conn.IsClosed())
	}
}

func TestEndOfStreamReplies(t *testing.T) {
	complete := &pgproto3.CommandComplete{CommandTag: []byte("START_STREAMING")}
	for name, tc := range map[string]struct {
		reply    []pgproto3.BackendMessage
		want     TimelineEnd
		err      string // "" for success
		protocol bool
		usable   bool
	}{
		"no result set": {reply: []pgproto3.BackendMessage{complete, ready}, usable: true},
		"with notices": {
			reply:  append(append([]pgproto3.BackendMessage{notice}, timelineResult("7", "1/2")...), notice, complete, ready),
			want:   TimelineEnd{NextTLI: 7, NextStart: 0x1_00000002},
			usable: true,
		},
		"server error": {
			reply:  []pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "XX000", Message: "oops"}, ready},
			err:    "oops",
			usable: true,
		},
		"bad row": {
			reply: append(timelineResult("0", "1/2"), complete, ready), err: "next_tli", protocol: true,
		},
		"two result sets": {
			reply: append(append(timelineResult("2", "1/2"), timelineResult("3", "1/2")...), complete, ready), err: "second result set", protocol: true,
		},
		"no row": {
			reply:    []pgproto3.BackendMessage{timelineResult("2", "0/1")[0], complete, complete, ready},
			err:      "without a row",
			protocol: true,
		},
		"one column": {
			reply:    []pgproto3.BackendMessage{&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x")}}}},
			err:      "1 columns",
			protocol: true,
		},
		"data after CopyDone": {
			reply: []pgproto3.BackendMessage{copyData(keepalive(1, 1, 0))}, err: "unexpected CopyData", protocol: true,
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t)
			conn := fakeConn(t, "15.4", func(s *fakeServer) error {
				if err := s.expectQuery("START_REPLICATION PHYSICAL 0/1000000"); err != nil {
					return err
				}
				if err := s.send(copyBoth, &pgproto3.CopyDone{}); err != nil {
					return err
				}
				if _, err := s.expect(&pgproto3.CopyDone{}); err != nil {
					return err
				}
				if err := s.send(tc.reply...); err != nil {
					return err
				}
				if tc.usable {
					return s.answerPing()
				}
				return nil
			})
			if err := StartReplication(ctx, conn, "", 0x1000000, 0); err != nil {
				t.Fatal(err)
			}
			if m, err := Receive(ctx, conn); err != nil {
				t.Fatalf("Receive = %#v, %v", m, err)
			}
			end, err := EndOfStream(ctx, conn)
			switch {
			case tc.err == "" && (err != nil || end != tc.want):
				t.Fatalf("EndOfStream = %+v, %v; want %+v", end, err, tc.want)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || errors.Is(err, ErrProtocol) != tc.protocol):
				t.Fatalf("EndOfStream = %+v, %v; want an error containing %q (ErrProtocol: %v)", end, err, tc.err, tc.protocol)
			}
			if tc.usable {
				ping(t, ctx, conn)
			} else if !conn.IsClosed() {
				t.Error("the connection is still open after a reply EndOfStream does not understand")
			}
		})
	}
}

func TestReadReplicationSlotOldServer(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "14.9", func(s *fakeServer) error { return nil })
	if _, err := ReadReplicationSlot(ctx, conn, "s"); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "14.9") {
		t.Fatalf("ReadReplicationSlot on PostgreSQL 14 = %v, want ErrUnsupported", err)
	}
}

func TestSendStandbyStatusContextDone(t *testing.T) {
	ctx := testContext(t)
	conn := fakeConn(t, "15.4", func(s *fakeServer) error { return nil })
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := SendStandbyStatus(cctx, conn, StandbyStatus{}); !errors.Is(err, context.Canceled) || conn.IsClosed() {
		t.Fatalf("SendStandbyStatus with a cancelled context = %v (closed: %v)", err, conn.IsClosed())
	}
}
