// Package pgrepl is walship's client of PostgreSQL's physical streaming
// replication protocol, spoken through pgconn: it opens replication
// connections, runs the replication commands walship uses (IDENTIFY_SYSTEM,
// SHOW, TIMELINE_HISTORY, READ_REPLICATION_SLOT, CREATE_REPLICATION_SLOT,
// START_REPLICATION) and decodes and encodes the messages of a WAL stream.
//
// Guarantees:
//   - An error the server reports (an ErrorResponse) comes back wrapping a
//     *pgconn.PgError (use errors.As), and the connection is read up to the
//     ReadyForQuery that follows, so it can run the next command.
//   - Replies walship does not understand — unknown message types, short or
//     malformed messages, result sets of the wrong shape — are errors
//     matching ErrProtocol; the parsers never panic, whatever the input.
//   - Nothing here runs in the background, and a connection must be used by
//     one goroutine at a time (pgconn is not safe for concurrent use):
//     receive with a deadline, and send status updates between receives.
//   - Functions close the connection only where their doc comment says so:
//     after an error that leaves the protocol in an unknown state.
package pgrepl

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walship/walship/wal"
)

// maxMessageBody bounds the messages walship accepts from a server. No
// reply walship reads comes near it: WAL data messages hold at most 128 kB,
// base backup data 32 kB, history files a few kB.
const maxMessageBody = 64 << 20

// Connect opens a physical replication connection (replication=true) from a
// libpq-style conninfo: "host=... port=... user=..." or a postgres:// URL.
// An empty conninfo means the libpq environment variables only (PGHOST,
// PGPORT, PGUSER, PGPASSWORD, ~/.pgpass, ...). A replication setting in
// conninfo is overridden; application_name defaults to "walship", so the
// session is easy to find in pg_stat_replication.
//
// The role needs the REPLICATION attribute (or superuser), and pg_hba.conf
// must allow it to connect to the pseudo-database "replication".
func Connect(ctx context.Context, conninfo string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		// pgconn redacts passwords from this error.
		return nil, fmt.Errorf("invalid PostgreSQL connection settings: %w", err)
	}
	cfg.RuntimeParams["replication"] = "true"
	if cfg.ConnectTimeout == 0 {
		// A server that does not answer must not hang a cron job; libpq's
		// connect_timeout (or PGCONNECT_TIMEOUT) overrides this.
		cfg.ConnectTimeout = 30 * time.Second
	}
	// A length field beyond it is refused instead of allocated.
	cfg.MaxProtocolMessageBodyLen = maxMessageBody
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "walship"
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening a replication connection to PostgreSQL "+
			"(the role needs REPLICATION and a pg_hba.conf entry for database \"replication\"): %w", err)
	}
	return conn, nil
}

// ServerVersion returns the server's version as server_version_num would
// give it (150018 for 15.18), read from the server_version parameter the
// server reported when the connection started.
func ServerVersion(conn *pgconn.PgConn) (int, error) {
	return ParseServerVersion(conn.ParameterStatus("server_version"))
}

// ParseServerVersion turns a server_version string ("15.18 (Debian
// 15.18-0+deb12u1)", "17.2", "18beta1", "9.6.24") into the
// server_version_num form (150018, 170002, 180000, 90624), the way libpq
// does for PQserverVersion.
func ParseServerVersion(s string) (int, error) {
	var parts []int
	rest := s
	for len(parts) < 3 {
		i := 0
		for i < len(rest) && '0' <= rest[i] && rest[i] <= '9' {
			i++
		}
		if i == 0 || i > 6 {
			break
		}
		n, _ := strconv.Atoi(rest[:i]) // at most 6 digits: cannot fail
		parts = append(parts, n)
		rest = rest[i:]
		if !strings.HasPrefix(rest, ".") {
			break
		}
		rest = rest[1:]
	}
	switch {
	case len(parts) == 0 || parts[0] == 0:
		return 0, fmt.Errorf("cannot read the PostgreSQL version from server_version %s", QuoteServerText(s))
	case parts[0] >= 10 && len(parts) == 1: // "17devel", "18beta1"
		return parts[0] * 10000, nil
	case parts[0] >= 10:
		return parts[0]*10000 + parts[1], nil
	case len(parts) == 3: // "9.6.24"
		return (parts[0]*100+parts[1])*100 + parts[2], nil
	case len(parts) == 2: // "9.6devel"
		return (parts[0]*100 + parts[1]) * 100, nil
	default:
		return parts[0] * 10000, nil
	}
}

// SystemInfo is the reply to IDENTIFY_SYSTEM.
type SystemInfo struct {
	SystemID uint64         // the cluster's system identifier, as in pg_control
	Timeline wal.TimeLineID // the server's current timeline
	XLogPos  wal.LSN        // the current WAL flush position
	DBName   string         // "" on a physical replication connection
}

// IdentifySystem runs IDENTIFY_SYSTEM on a replication connection.
func IdentifySystem(ctx context.Context, conn *pgconn.PgConn) (SystemInfo, error) {
	results, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if len(results) != 1 {
		return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: got %d result sets, want 1", len(results))
	}
	return ParseIdentifySystem(results[0])
}

// ParseIdentifySystem reads the result of IDENTIFY_SYSTEM: one row of
// systemid, timeline, xlogpos and dbname, in text format.
func ParseIdentifySystem(r *pgconn.Result) (SystemInfo, error) {
	if r.Err != nil {
		return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", r.Err)
	}
	if len(r.Rows) != 1 || len(r.Rows[0]) < 4 {
		cols := 0
		if len(r.Rows) > 0 {
			cols = len(r.Rows[0])
		}
		return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: got %d rows of %d columns, want 1 row of at least 4 "+
			"(is this a replication connection to PostgreSQL?)", len(r.Rows), cols)
	}
	row := r.Rows[0]
	for i, name := range []string{"systemid", "timeline", "xlogpos"} {
		if row[i] == nil {
			return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: %s is NULL", name)
		}
	}
	sysid, err := strconv.ParseUint(string(row[0]), 10, 64)
	if err != nil {
		return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: invalid systemid %s", QuoteServerText(string(row[0])))
	}
	tli, err := ParseTimeline(row[1])
	if err != nil {
		return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	pos, err := wal.ParseLSN(string(row[2]))
	if err != nil {
		return SystemInfo{}, fmt.Errorf("IDENTIFY_SYSTEM: xlogpos: %w", err)
	}
	return SystemInfo{SystemID: sysid, Timeline: tli, XLogPos: pos, DBName: string(row[3])}, nil
}

// SegmentSize asks the server for its WAL segment size in bytes (SHOW works
// on replication connections).
func SegmentSize(ctx context.Context, conn *pgconn.PgConn) (int64, error) {
	res, err := conn.Exec(ctx, "SHOW wal_segment_size").ReadAll()
	if err != nil {
		return 0, fmt.Errorf("SHOW wal_segment_size: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return 0, fmt.Errorf("SHOW wal_segment_size: unexpected reply")
	}
	v := string(res[0].Rows[0][0])
	var n int64
	var unit string
	if _, err := fmt.Sscanf(v, "%d%s", &n, &unit); err != nil {
		return 0, fmt.Errorf("SHOW wal_segment_size: cannot read %q", v)
	}
	switch unit {
	case "MB":
		n <<= 20
	case "GB":
		n <<= 30
	case "kB":
		n <<= 10
	default:
		return 0, fmt.Errorf("SHOW wal_segment_size: unknown unit in %q", v)
	}
	return n, wal.CheckSegmentSize(n)
}

// ParseTimeline reads a timeline ID the server sent as decimal text.
func ParseTimeline(b []byte) (wal.TimeLineID, error) {
	n, err := strconv.ParseUint(string(b), 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid timeline %s: want a decimal number from 1 to 4294967295", QuoteServerText(string(b)))
	}
	return wal.TimeLineID(n), nil
}

// QuoteServerText quotes text that came from the server for an error
// message, shortened so that a huge value cannot flood a log line.
func QuoteServerText(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
