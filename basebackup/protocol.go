package basebackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/walship/walship/wal"
)

// PostgreSQL versions (server_version_num) that change the BASE_BACKUP
// protocol.
const (
	// MinServerVersion is the oldest PostgreSQL walship takes base backups
	// from: 13 brought backup manifests.
	MinServerVersion = 130000
	// streamVersion is the first version with the parenthesized option
	// syntax and a single COPY stream of typed messages.
	streamVersion = 150000
)

// Limits of the MAX_RATE option, in kB/s (MAX_RATE_LOWER and
// MAX_RATE_UPPER in PostgreSQL's basebackup.h).
const (
	minMaxRate = 32
	maxMaxRate = 1048576
)

// closeTimeout bounds the goodbye to a server whose connection Run gives up.
const closeTimeout = 5 * time.Second

// ErrProtocol matches (with errors.Is) every error about a reply to
// BASE_BACKUP that walship does not understand: messages out of order,
// malformed values, damaged tar framing. The server is not behaving like the
// PostgreSQL 13 to 18 walship knows; the message says what was wrong.
var ErrProtocol = errors.New("unexpected base backup stream")

// Options says what base backup to ask the server for.
type Options struct {
	// Label names the backup in backup_label and the server's logs
	// (PostgreSQL uses "base backup" when it is empty). One line.
	Label string
	// Fast asks for an immediate checkpoint (CHECKPOINT 'fast' / FAST)
	// instead of a spread one, so the backup starts at once at the cost of
	// an I/O burst.
	Fast bool
	// Progress makes the server estimate each tablespace's size before it
	// starts (PROGRESS), which takes a directory walk.
	Progress bool
	// Manifest asks for a backup_manifest (MANIFEST 'yes').
	Manifest bool
	// ManifestChecksums is the manifest's file checksum algorithm: NONE,
	// CRC32C, SHA224, SHA256, SHA384 or SHA512; "" means the server's
	// default (CRC32C). Only with Manifest.
	ManifestChecksums string
	// Wait makes the server wait, at the end, until the WAL the backup
	// needs has been archived (PostgreSQL's default). False sends NOWAIT
	// (13-14) or WAIT false (15+), for callers that check the archive
	// themselves.
	Wait bool
	// MaxRate limits the transfer rate in kB/s (32 to 1048576); 0 means
	// unlimited.
	MaxRate int
}

// Tablespace is one archive of a base backup.
type Tablespace struct {
	OID      uint32 // 0 for the main data directory
	Location string // where the tablespace lives on the server; "" for the main data directory
	Size     int64  // estimated size in bytes (kB precision); -1 if unknown (no Options.Progress)
}

// Start is what the server reports when the backup has started.
type Start struct {
	LSN      wal.LSN        // the backup's start (redo) position
	Timeline wal.TimeLineID // the timeline at the start
	// Tablespaces lists the archives in the order the server sends them,
	// the main data directory (OID 0) included (PostgreSQL sends it last).
	Tablespaces []Tablespace
}

// End is what the server reports when the backup is complete: the backup
// is consistent once WAL up to LSN has been replayed.
type End struct {
	LSN      wal.LSN
	Timeline wal.TimeLineID
}

// Handler receives a base backup as Run decodes it. Nil fields are skipped
// (an archive or manifest without a handler is read and discarded). A
// handler that returns an error aborts the backup.
type Handler struct {
	// Started is called once the server has sent the start position and
	// the tablespace list, before any data.
	Started func(Start) error
	// Archive is called once per tablespace with the tar archive as the
	// server sends it, followed by the two zero blocks that end a tar
	// archive if the server left them out (PostgreSQL 13 and 14 do), so
	// that archive/tar and other tar readers see a complete archive. It
	// should read tar to EOF; if it returns early, the rest is read and
	// discarded. tar is only valid until Archive returns. Its WriteTo
	// hands each chunk of the stream to the writer without copying, so
	// io.Copy(w, tar) is the cheapest way to store it.
	Archive func(ts Tablespace, tar io.Reader) error
	// Manifest is called with the backup_manifest (only with
	// Options.Manifest), after the archives, under the same rules.
	Manifest func(manifest io.Reader) error
	// Progress is called with the number of archive bytes received so
	// far (tar data as the server sent it: no manifest, no added zero
	// blocks), after every message that carries some. It is called often
	// and must be cheap.
	Progress func(done int64)
}

// Command builds the BASE_BACKUP command for a server version
// (server_version_num): the legacy syntax for PostgreSQL 13 and 14, the
// parenthesized one from 15. It never asks for TABLESPACE_MAP (tablespace
// symlinks come as pg_tblspc entries of the main archive) nor for WAL
// (walship restores WAL from its archive). It does not validate o; Run does.
func Command(version int, o Options) string {
	var opts []string
	legacy := version < streamVersion
	if o.Label != "" {
		opts = append(opts, "LABEL "+quoteLiteral(o.Label))
	}
	if o.Progress {
		opts = append(opts, "PROGRESS")
	}
	if o.Fast {
		if legacy {
			opts = append(opts, "FAST")
		} else {
			opts = append(opts, "CHECKPOINT 'fast'")
		}
	}
	if !o.Wait {
		if legacy {
			opts = append(opts, "NOWAIT")
		} else {
			opts = append(opts, "WAIT false")
		}
	}
	if o.MaxRate > 0 {
		opts = append(opts, "MAX_RATE "+strconv.Itoa(o.MaxRate))
	}
	if o.Manifest {
		opts = append(opts, "MANIFEST 'yes'")
		if o.ManifestChecksums != "" {
			opts = append(opts, "MANIFEST_CHECKSUMS "+quoteLiteral(o.ManifestChecksums))
		}
	}
	switch {
	case len(opts) == 0:
		return "BASE_BACKUP"
	case legacy:
		return "BASE_BACKUP " + strings.Join(opts, " ")
	default:
		return "BASE_BACKUP (" + strings.Join(opts, ", ") + ")"
	}
}

// quoteLiteral makes s a string literal of the replication command
// language, which has no escapes other than a doubled single quote.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// check rejects options the server would refuse, with walship's words.
func (o Options) check(version int) error {
	if version < MinServerVersion {
		return fmt.Errorf("base backup: PostgreSQL %s is too old: walship takes base backups from PostgreSQL 13 and newer",
			formatVersion(version))
	}
	if strings.ContainsAny(o.Label, "\x00\r\n") {
		return fmt.Errorf("base backup: label %s must be a single line without NUL bytes", quoteServerText(o.Label))
	}
	if o.MaxRate != 0 && (o.MaxRate < minMaxRate || o.MaxRate > maxMaxRate) {
		return fmt.Errorf("base backup: maximum rate %d kB/s is out of range: use 0 (unlimited) or %d to %d",
			o.MaxRate, minMaxRate, maxMaxRate)
	}
	if o.ManifestChecksums != "" {
		if !o.Manifest {
			return errors.New("base backup: manifest checksums were chosen but no manifest was requested")
		}
		switch strings.ToUpper(o.ManifestChecksums) {
		case "NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512":
		default:
			return fmt.Errorf("base backup: unknown manifest checksum algorithm %s: use NONE, CRC32C, SHA224, SHA256, SHA384 or SHA512",
				quoteServerText(o.ManifestChecksums))
		}
	}
	return nil
}

// formatVersion writes a server_version_num as a version ("15.18").
func formatVersion(v int) string {
	if v >= 100000 {
		return fmt.Sprintf("%d.%d", v/10000, v%10000)
	}
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

// Run takes a base backup over conn, a replication connection (see
// pgrepl.Connect) to a server of the given version (see
// pgrepl.ServerVersion). It sends the command Command builds and decodes
// the reply with Decode, calling h as it goes, and returns the backup's
// start and end. Memory use does not depend on the size of the backup:
// archives stream from the connection to the handler.
//
// An error the server reports (an ErrorResponse) is returned wrapping a
// *pgconn.PgError that carries the server's message; the connection then
// stays usable. After any other error — a handler's, a broken stream, a
// cancelled ctx — Run closes the connection, which makes the server abort
// the backup.
func Run(ctx context.Context, conn *pgconn.PgConn, version int, o Options, h Handler) (Start, End, error) {
	if err := o.check(version); err != nil {
		return Start{}, End{}, err
	}
	if err := ctx.Err(); err != nil {
		return Start{}, End{}, fmt.Errorf("base backup: %w", err)
	}
	conn.Frontend().Send(&pgproto3.Query{String: Command(version, o)})
	if err := conn.Frontend().Flush(); err != nil {
		closeConn(ctx, conn)
		return Start{}, End{}, fmt.Errorf("base backup: sending BASE_BACKUP: %w", err)
	}
	d := newStreamDecoder(func() (pgproto3.BackendMessage, error) {
		return conn.ReceiveMessage(ctx)
	}, version, o, h)
	start, end, err := d.run()
	if err != nil && !d.idle {
		closeConn(ctx, conn)
	}
	return start, end, err
}

// closeConn closes conn without waiting long for a server that may be
// stuck, even when ctx is already cancelled.
func closeConn(ctx context.Context, conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	_ = conn.Close(ctx) // the error that made us give up is the one to report
}
