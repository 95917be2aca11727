package failover

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/wal"
)

// connect opens an ordinary (not replication) connection to the standby.
func connect(ctx context.Context, conninfo string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return nil, fmt.Errorf("invalid PostgreSQL connection settings (--pg): %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "walship standby-promote"
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the standby (--pg, or PGHOST, PGPORT, PGUSER …): %w", err)
	}
	return conn, nil
}

// queryTimeout bounds every statement but pg_promote.
const queryTimeout = 30 * time.Second

// query runs one statement and returns its rows as text; NULL is nil.
func query(ctx context.Context, conn *pgconn.PgConn, sql string) ([][][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	return queryNoTimeout(ctx, conn, sql)
}

func queryNoTimeout(ctx context.Context, conn *pgconn.PgConn, sql string) ([][][]byte, error) {
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) != 1 {
		return nil, fmt.Errorf("got %d result sets, want 1", len(res))
	}
	return res[0].Rows, nil
}

// server is what walship checks about the server before promoting it.
type server struct {
	DataDir     string
	SystemID    uint64
	Version     int    // server_version_num
	ArchiveMode string // archive_mode
}

const serverSQL = `SELECT current_setting('data_directory'), (SELECT system_identifier FROM pg_control_system()),
	current_setting('server_version_num'), current_setting('archive_mode')`

func parseServer(rows [][][]byte) (server, error) {
	if len(rows) != 1 || len(rows[0]) != 4 || rows[0][0] == nil || rows[0][1] == nil || rows[0][2] == nil {
		return server{}, fmt.Errorf("unexpected reply to the server query")
	}
	r := rows[0]
	sysID, err := strconv.ParseUint(string(r[1]), 10, 64)
	if err != nil {
		return server{}, fmt.Errorf("system_identifier %q: %v", r[1], err)
	}
	version, err := strconv.Atoi(string(r[2]))
	if err != nil {
		return server{}, fmt.Errorf("server_version_num %q: %v", r[2], err)
	}
	return server{DataDir: string(r[0]), SystemID: sysID, Version: version, ArchiveMode: string(r[3])}, nil
}

// standbyState is where a standby's recovery stands.
type standbyState struct {
	InRecovery    bool
	Replay        wal.LSN // pg_last_wal_replay_lsn(): the end of the last record replayed
	Received      wal.LSN // pg_last_wal_receive_lsn(): streamed and flushed; 0 when it never streamed
	CheckpointTLI wal.TimeLineID
	MinRecoveryTL wal.TimeLineID
	Paused        bool
	Receiver      *receiver // nil when no WAL receiver runs
}

// receiver is the standby's WAL receiver (pg_stat_wal_receiver).
type receiver struct {
	Status    string
	Flushed   wal.LSN // received and flushed to the standby's disk
	LatestEnd wal.LSN // the upstream's end of WAL, as it last reported it
	TLI       wal.TimeLineID
	Host      string
	Port      int
	ConnInfo  string // with secrets obfuscated by the server; "" without the privilege to see it
}

// The replay state. pg_is_wal_replay_paused() (13 to 18) is true from
// the request on; only a standby may be asked.
const stateSQL = `SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn(),
	(SELECT timeline_id FROM pg_control_checkpoint()),
	(SELECT min_recovery_end_timeline FROM pg_control_recovery()),
	CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END`

const receiverSQL = `SELECT status, flushed_lsn, latest_end_lsn, received_tli, sender_host, sender_port, conninfo
	FROM pg_stat_wal_receiver`

func parseState(rows [][][]byte) (standbyState, error) {
	if len(rows) != 1 || len(rows[0]) != 6 {
		return standbyState{}, fmt.Errorf("unexpected reply to the recovery state query")
	}
	r := rows[0]
	var s standbyState
	var err error
	s.InRecovery = string(r[0]) == "t"
	if s.Replay, err = optLSN(r[1]); err != nil {
		return standbyState{}, fmt.Errorf("pg_last_wal_replay_lsn: %w", err)
	}
	if s.Received, err = optLSN(r[2]); err != nil {
		return standbyState{}, fmt.Errorf("pg_last_wal_receive_lsn: %w", err)
	}
	if s.CheckpointTLI, err = optTLI(r[3]); err != nil {
		return standbyState{}, err
	}
	if s.MinRecoveryTL, err = optTLI(r[4]); err != nil {
		return standbyState{}, err
	}
	s.Paused = string(r[5]) == "t"
	return s, nil
}

func parseReceiver(rows [][][]byte) (*receiver, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	if len(rows) != 1 || len(rows[0]) != 7 {
		return nil, fmt.Errorf("unexpected reply to the WAL receiver query")
	}
	r := rows[0]
	var rc receiver
	var err error
	rc.Status = string(r[0])
	if rc.Flushed, err = optLSN(r[1]); err != nil {
		return nil, fmt.Errorf("flushed_lsn: %w", err)
	}
	if rc.LatestEnd, err = optLSN(r[2]); err != nil {
		return nil, fmt.Errorf("latest_end_lsn: %w", err)
	}
	if rc.TLI, err = optTLI(r[3]); err != nil {
		return nil, err
	}
	rc.Host = string(r[4])
	if r[5] != nil {
		rc.Port, _ = strconv.Atoi(string(r[5]))
	}
	rc.ConnInfo = string(r[6])
	return &rc, nil
}

func optLSN(v []byte) (wal.LSN, error) {
	if v == nil {
		return 0, nil
	}
	return wal.ParseLSN(string(v))
}

func optTLI(v []byte) (wal.TimeLineID, error) {
	if v == nil {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("timeline %q: %v", v, err)
	}
	return wal.TimeLineID(n), nil
}

func readState(ctx context.Context, conn *pgconn.PgConn) (standbyState, error) {
	rows, err := query(ctx, conn, stateSQL)
	if err != nil {
		return standbyState{}, fmt.Errorf("read the standby's recovery state: %w", err)
	}
	s, err := parseState(rows)
	if err != nil {
		return standbyState{}, err
	}
	if s.InRecovery {
		rows, err := query(ctx, conn, receiverSQL)
		if err != nil {
			return standbyState{}, fmt.Errorf("read pg_stat_wal_receiver: %w", err)
		}
		if s.Receiver, err = parseReceiver(rows); err != nil {
			return standbyState{}, err
		}
	}
	return s, nil
}

// upstreamConnInfo rebuilds a connection string to the receiver's
// upstream from what pg_stat_wal_receiver shows: host, port and user, and
// the TLS mode; the password (shown obfuscated) comes from ~/.pgpass or
// PGPASSWORD like any libpq client's.
func upstreamConnInfo(r *receiver) string {
	if r == nil || r.Host == "" {
		return ""
	}
	parts := []string{"host=" + quoteConnValue(r.Host)}
	if r.Port != 0 {
		parts = append(parts, "port="+strconv.Itoa(r.Port))
	}
	for _, key := range []string{"user", "sslmode"} {
		if v, ok := connInfoValue(r.ConnInfo, key); ok {
			parts = append(parts, key+"="+quoteConnValue(v))
		}
	}
	return strings.Join(parts, " ")
}

// connInfoValue returns the value of key in a key=value connection string
// as PostgreSQL prints it (values quoted with '…' and \ escapes when they
// need it).
func connInfoValue(ci, key string) (string, bool) {
	for i := 0; i < len(ci); {
		for i < len(ci) && ci[i] == ' ' {
			i++
		}
		eq := strings.IndexByte(ci[i:], '=')
		if eq < 0 {
			return "", false
		}
		k := strings.TrimSpace(ci[i : i+eq])
		i += eq + 1
		var v strings.Builder
		if i < len(ci) && ci[i] == '\'' {
			for i++; i < len(ci) && ci[i] != '\''; i++ {
				if ci[i] == '\\' && i+1 < len(ci) {
					i++
				}
				v.WriteByte(ci[i])
			}
			i++
		} else {
			for ; i < len(ci) && ci[i] != ' '; i++ {
				v.WriteByte(ci[i])
			}
		}
		if k == key {
			return v.String(), true
		}
	}
	return "", false
}

func quoteConnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
