package pgrepl

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/wal"
)

// follower reads a stream the way a client must: it checks that the WAL
// comes contiguous from the requested start, and answers keepalives that
// ask for a reply with what it received. It reports problems as errors, so
// that it can run outside the test's goroutine.
type follower struct {
	conn *pgconn.PgConn
	next wal.LSN // where the next XLogData must start
	data int     // XLogData messages received
}

func (f *follower) receive(ctx context.Context) (any, error) {
	m, err := Receive(ctx, f.conn)
	if err != nil {
		return nil, err
	}
	switch m := m.(type) {
	case *XLogData:
		if m.Start != f.next {
			return nil, fmt.Errorf("XLogData from %s, want %s: the stream is not contiguous", m.Start, f.next)
		}
		f.next = m.Start + wal.LSN(len(m.Data))
		f.data++
	case *Keepalive:
		if m.ReplyRequested {
			if err := SendStandbyStatus(ctx, f.conn, StandbyStatus{Write: f.next, Flush: f.next}); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// until receives until the WAL up to pos has come.
func (f *follower) until(ctx context.Context, pos wal.LSN) error {
	for f.next < pos {
		m, err := f.receive(ctx)
		if err != nil {
			return fmt.Errorf("receiving up to %s, at %s: %w", pos, f.next, err)
		}
		if _, ok := m.(*CopyDone); ok {
			return fmt.Errorf("the stream ended at %s, before %s", f.next, pos)
		}
	}
	return nil
}

func lsnOf(t *testing.T, c *pgtest.Cluster, sql string) wal.LSN {
	t.Helper()
	lsn, err := wal.ParseLSN(c.Psql(t, sql))
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func segmentStart(lsn wal.LSN, segSize int64) wal.LSN {
	return wal.SegmentStartLSN(wal.LSNToSegNo(lsn, segSize), segSize)
}

func connect(t *testing.T, ctx context.Context, c *pgtest.Cluster) *pgconn.PgConn {
	t.Helper()
	conn, err := Connect(ctx, c.ConnString(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestStreamFromPrimary: identification, slots, a stream through a
// slot with status updates and a timeout, server errors before and after
// the stream starts, and the end of the stream at a server shutdown.
func TestStreamFromPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := connect(t, ctx, c)

	version, err := ServerVersion(conn)
	if err != nil || version/10000 != c.Major() {
		t.Fatalf("ServerVersion = %d, %v on PostgreSQL %d", version, err, c.Major())
	}
	sys, err := IdentifySystem(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Psql(t, "SELECT system_identifier FROM pg_control_system()"); strconv.FormatUint(sys.SystemID, 10) != want {
		t.Errorf("IdentifySystem: system identifier %d, want %s", sys.SystemID, want)
	}
	if sys.Timeline != 1 || sys.XLogPos == 0 || sys.DBName != "" {
		t.Errorf("IdentifySystem = %+v", sys)
	}
	segSize, err := SegmentSize(ctx, conn)
	if err != nil || segSize != wal.DefaultSegmentSize {
		t.Fatalf("SegmentSize = %d, %v; want %d", segSize, err, wal.DefaultSegmentSize)
	}

	// Slots.
	const slotName = "walship_test"
	for i, want := range []bool{true, false} {
		if created, err := CreatePhysicalSlot(ctx, conn, slotName); err != nil || created != want {
			t.Fatalf("CreatePhysicalSlot #%d = %v, %v; want %v", i+1, created, err, want)
		}
	}
	if _, err := CreatePhysicalSlot(ctx, conn, "Bad-Name"); err == nil {
		t.Error("CreatePhysicalSlot accepted an invalid name")
	}
	slot, err := ReadReplicationSlot(ctx, conn, slotName)
	if err != nil {
		t.Fatal(err)
	}
	now := lsnOf(t, c, "SELECT pg_current_wal_flush_lsn()")
	if !slot.Exists || slot.RestartLSN == 0 || slot.RestartLSN > now || slot.RestartTLI != 1 {
		t.Fatalf("ReadReplicationSlot = %+v (server at %s)", slot, now)
	}
	if want := c.Psql(t, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '"+slotName+"'"); slot.RestartLSN.String() != want {
		t.Errorf("ReadReplicationSlot: restart LSN %s, pg_replication_slots says %s", slot.RestartLSN, want)
	}
	if missing, err := ReadReplicationSlot(ctx, conn, "missing"); err != nil || missing != (Slot{}) {
		t.Errorf("ReadReplicationSlot of a missing slot = %+v, %v", missing, err)
	}

	// Stream through the slot from the start of the segment holding its
	// restart position.
	start := segmentStart(slot.RestartLSN, segSize)
	if err := StartReplication(ctx, conn, slotName, start, 1); err != nil {
		t.Fatal(err)
	}
	f := &follower{conn: conn, next: start}
	c.Psql(t, "CREATE TABLE t (i int)")
	c.Psql(t, "INSERT INTO t VALUES (1)")
	target := lsnOf(t, c, "SELECT pg_current_wal_flush_lsn()")
	if err := f.until(ctx, target); err != nil {
		t.Fatal(err)
	}
	if got := c.Psql(t, "SELECT active FROM pg_replication_slots WHERE slot_name = '"+slotName+"'"); got != "t" {
		t.Errorf("the slot is not active while streaming (%s)", got)
	}

	// A status update moves the slot on, and asks for a keepalive.
	if err := SendStandbyStatus(ctx, conn, StandbyStatus{Write: f.next, Flush: f.next, ReplyRequested: true}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := f.receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(*Keepalive); ok {
			break
		}
	}
	c.WaitFor(t, fmt.Sprintf("SELECT restart_lsn >= '%s' FROM pg_replication_slots WHERE slot_name = '%s'", target, slotName), "t", 10*time.Second)
	c.WaitFor(t, fmt.Sprintf("SELECT flush_lsn >= '%s' FROM pg_stat_replication", target), "t", 10*time.Second)

	// Nothing more to send: a short deadline passes, and the connection
	// goes on.
	timedOut := false
	for i := 0; i < 50 && !timedOut; i++ {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := f.receive(short)
		cancel()
		switch {
		case pgconn.Timeout(err):
			timedOut = true
		case err != nil:
			t.Fatal(err)
		}
	}
	t.Logf("streamed %d XLogData messages from %s to %s before the quiet time", f.data, start, f.next)
	if !timedOut || conn.IsClosed() {
		t.Fatalf("no timeout on a quiet stream (connection closed: %v)", conn.IsClosed())
	}
	c.Psql(t, "INSERT INTO t VALUES (2)")
	before := f.data
	if err := f.until(ctx, lsnOf(t, c, "SELECT pg_current_wal_flush_lsn()")); err != nil {
		t.Fatalf("after a timeout: %v", err)
	}
	if f.data == before {
		t.Fatal("no WAL after the timeout")
	}

	// Errors before and after the server enters COPY mode leave another
	// connection usable.
	conn2 := connect(t, ctx, c)
	var pgErr *pgconn.PgError
	if err := StartReplication(ctx, conn2, "missing", start, 0); !errors.As(err, &pgErr) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("StartReplication with a missing slot = %v, want the server's error", err)
	}
	if err := StartReplication(ctx, conn2, "", 0, 1); err != nil {
		t.Fatalf("StartReplication at 0/0 = %v; the server should complain only in COPY mode", err)
	}
	if m, err := Receive(ctx, conn2); !errors.As(err, &pgErr) {
		t.Errorf("Receive of segment 0 = %#v, %v; want the server's error", m, err)
	}
	if err := StartReplication(ctx, conn2, "", 0x1000000, 9); !errors.As(err, &pgErr) {
		t.Errorf("StartReplication on timeline 9 = %v, want the server's error", err)
	}
	if _, _, err := TimelineHistory(ctx, conn2, 1); !errors.As(err, &pgErr) {
		t.Errorf("TimelineHistory(1) = %v, want the server's error (timeline 1 has no history file)", err)
	}
	if _, err := IdentifySystem(ctx, conn2); err != nil {
		t.Errorf("IDENTIFY_SYSTEM after the server's errors: %v", err)
	}
	conn2.Close(ctx)

	// A fast shutdown sends what is left, waits for the client to
	// confirm it, and ends the stream.
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := f.receive(ctx); err != nil {
				done <- err
				return
			}
		}
	}()
	c.Stop(t)
	if err := <-done; !errors.Is(err, ErrServerShutdown) {
		t.Errorf("Receive while the server stops = %v, want ErrServerShutdown", err)
	}
}

// TestOtherVersions runs the commands against the other PostgreSQL
// majors walship supports: the oldest (no READ_REPLICATION_SLOT) and the
// newest.
func TestOtherVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	for _, major := range []int{13, 17, 18} {
		t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) {
			t.Parallel()
			c := pgtest.Start(t, pgtest.Options{Major: major})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn := connect(t, ctx, c)
			version, err := ServerVersion(conn)
			if err != nil || version/10000 != major {
				t.Fatalf("ServerVersion = %d, %v", version, err)
			}
			sys, err := IdentifySystem(ctx, conn)
			if err != nil || sys.Timeline != 1 {
				t.Fatalf("IdentifySystem = %+v, %v", sys, err)
			}
			segSize, err := SegmentSize(ctx, conn)
			if err != nil || segSize != wal.DefaultSegmentSize {
				t.Fatalf("SegmentSize = %d, %v", segSize, err)
			}
			for i, want := range []bool{true, false} {
				if created, err := CreatePhysicalSlot(ctx, conn, "s"); err != nil || created != want {
					t.Fatalf("CreatePhysicalSlot #%d = %v, %v; want %v", i+1, created, err, want)
				}
			}
			restart := lsnOf(t, c, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 's'")
			slot, err := ReadReplicationSlot(ctx, conn, "s")
			switch {
			case major < 15:
				if !errors.Is(err, ErrUnsupported) {
					t.Errorf("ReadReplicationSlot on PostgreSQL %d = %+v, %v; want ErrUnsupported", major, slot, err)
				}
			case err != nil || slot != (Slot{Exists: true, RestartLSN: restart, RestartTLI: 1}):
				t.Errorf("ReadReplicationSlot = %+v, %v; want restart LSN %s", slot, err, restart)
			}
			start := segmentStart(restart, segSize)
			if err := StartReplication(ctx, conn, "s", start, 1); err != nil {
				t.Fatal(err)
			}
			f := &follower{conn: conn, next: start}
			c.Psql(t, "CREATE TABLE t AS SELECT 1 AS i")
			target := lsnOf(t, c, "SELECT pg_current_wal_flush_lsn()")
			if err := f.until(ctx, target); err != nil {
				t.Fatal(err)
			}
			if err := SendStandbyStatus(ctx, conn, StandbyStatus{Write: f.next, Flush: f.next}); err != nil {
				t.Fatal(err)
			}
			c.WaitFor(t, fmt.Sprintf("SELECT restart_lsn >= '%s' FROM pg_replication_slots WHERE slot_name = 's'", target), "t", 10*time.Second)
		})
	}
}

// TestTimelineSwitch streams timeline 1 from a standby, promotes it, and
// follows the stream onto timeline 2.
func TestTimelineSwitch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	t.Parallel()
	primary := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}})
	dir := filepath.Join(pgtest.NewDir(t, "standby"), "data")
	bb := exec.Command(pgtest.ClientBin("pg_basebackup"), "-d", primary.ConnString(""), "-D", dir,
		"-R", "-X", "stream", "-c", "fast", "--no-sync")
	primary.RunAsServerUser(bb)
	if out, err := bb.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v: %s", err, out)
	}
	standby := pgtest.Start(t, pgtest.Options{DataDir: dir})
	standby.WaitFor(t, "SELECT status FROM pg_stat_wal_receiver", "streaming", 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := connect(t, ctx, standby)
	sys, err := IdentifySystem(ctx, conn)
	if err != nil || sys.Timeline != 1 {
		t.Fatalf("IdentifySystem on the standby = %+v, %v", sys, err)
	}
	segSize, err := SegmentSize(ctx, conn)
	if err != nil || segSize != 1<<20 {
		t.Fatalf("SegmentSize = %d, %v; want 1 MB", segSize, err)
	}
	start := segmentStart(sys.XLogPos, segSize)
	if err := StartReplication(ctx, conn, "", start, 1); err != nil {
		t.Fatal(err)
	}
	f := &follower{conn: conn, next: start}
	primary.Psql(t, "CREATE TABLE t AS SELECT 1 AS i")
	if err := f.until(ctx, lsnOf(t, primary, "SELECT pg_current_wal_flush_lsn()")); err != nil {
		t.Fatal(err)
	}

	if got := standby.Psql(t, "SELECT pg_promote()"); got != "t" {
		t.Fatalf("pg_promote() = %s", got)
	}
	for {
		m, err := f.receive(ctx)
		if err != nil {
			t.Fatalf("waiting for the end of timeline 1 at %s: %v", f.next, err)
		}
		if _, ok := m.(*CopyDone); ok {
			break
		}
	}
	end, err := EndOfStream(ctx, conn)
	if err != nil || end.NextTLI != 2 || end.NextStart == 0 {
		t.Fatalf("EndOfStream = %+v, %v; want timeline 2", end, err)
	}
	t.Logf("timeline 1: %d XLogData messages from %s to %s; timeline 2 from %s", f.data, start, f.next, end.NextStart)
	if f.next != end.NextStart {
		t.Errorf("timeline 1 streamed up to %s, but timeline 2 starts at %s", f.next, end.NextStart)
	}

	// At the very end of timeline 1 there is nothing to stream.
	var ended *TimelineEndedError
	if err := StartReplication(ctx, conn, "", end.NextStart, 1); !errors.As(err, &ended) || ended.TimelineEnd != end {
		t.Errorf("StartReplication at the end of timeline 1 = %v, want a TimelineEndedError of %+v", err, end)
	}

	name, content, err := TimelineHistory(ctx, conn, 2)
	if err != nil || name != "00000002.history" {
		t.Fatalf("TimelineHistory(2) = %q, %v", name, err)
	}
	history, err := wal.ParseHistory(content)
	if err != nil || len(history) != 1 || history[0].TLI != 1 || history[0].SwitchPoint != end.NextStart {
		t.Fatalf("00000002.history %q: %+v, %v; want timeline 1 ending at %s", content, history, err, end.NextStart)
	}

	// Timeline 2 from the start of the segment where it begins.
	start2 := segmentStart(end.NextStart, segSize)
	if err := StartReplication(ctx, conn, "", start2, 2); err != nil {
		t.Fatal(err)
	}
	f2 := &follower{conn: conn, next: start2}
	standby.Psql(t, "INSERT INTO t VALUES (2)")
	if err := f2.until(ctx, lsnOf(t, standby, "SELECT pg_current_wal_flush_lsn()")); err != nil {
		t.Fatal(err)
	}
	if sys, err := IdentifySystem(ctx, connect(t, ctx, standby)); err != nil || sys.Timeline != 2 {
		t.Errorf("IdentifySystem after the promotion = %+v, %v", sys, err)
	}
}

// TestConnectFromEnvironment: Connect with the libpq environment, with a
// URL, and to a closed port. Not parallel: it sets the environment.
func TestConnectFromEnvironment(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	c := pgtest.Start(t, pgtest.Options{})
	t.Setenv("PGHOST", "127.0.0.1")
	t.Setenv("PGPORT", strconv.Itoa(c.Port()))
	t.Setenv("PGUSER", "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := Connect(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// Only a replication connection answers IDENTIFY_SYSTEM.
	if _, err := IdentifySystem(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if got := c.Psql(t, "SELECT application_name FROM pg_stat_replication"); got != "walship" {
		t.Errorf("application_name %q, want walship", got)
	}
	// A URL, with replication=database overridden.
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?replication=database&application_name=nightly", c.Port())
	conn2, err := Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(context.Background())
	sys, err := IdentifySystem(ctx, conn2)
	if err != nil || sys.DBName != "" {
		t.Errorf("IDENTIFY_SYSTEM on a URL connection: %+v, %v (want a physical connection)", sys, err)
	}
	if _, err := Connect(ctx, "host=127.0.0.1 port=1 user=postgres connect_timeout=5"); err == nil ||
		!strings.Contains(err.Error(), "replication connection") {
		t.Errorf("Connect to a closed port: %v", err)
	}
}
