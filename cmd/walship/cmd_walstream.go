package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/stream"
)

func (a *app) walStreamCommand() *cli.Command {
	return &cli.Command{
		Name:  "wal-stream",
		Usage: "receive WAL over a replication connection into the archive, like pg_receivewal (a service)",
		Description: `Streams WAL from a primary or standby over a physical replication
connection, writes it to a local spool directory (the segment being
received as NAME.partial, fsynced before the server is told), and archives
each completed segment like wal-push does: compressed, checksummed, never
overwriting (a segment archive_command stored already is fine). With it,
a disaster loses at most what the spool holds, not up to a whole segment.

   walship --config /etc/walship.conf wal-stream --pg "host=primary user=replicator" \
       --slot walship --create-slot --spool /var/lib/walship/spool

It starts after the newest WAL in the spool or the archive (on an empty
archive at the slot's position, else at the server's current segment),
reconnects with backoff after errors and follows timeline switches of the
server (promotions): the old timeline's last segment is archived as
.partial and the new timeline's history file is archived. Use a
replication slot so the server keeps WAL while wal-stream is down.

--synchronous fsyncs and reports after every message, so the server can
wait for it: synchronous_standby_names = 'walship' (the application_name
it connects with, unless --pg sets another).

SIGTERM or SIGINT: the data received is made durable, the server is told,
and wal-stream exits 0. --status prints the status of the wal-stream using
--spool (JSON) and exits; --metrics-listen serves Prometheus metrics at
/metrics.

--partial-interval D stores, every D, a snapshot of the segment being
received (partial/ in the archive; older snapshots are removed, and all
once the segment is complete). A disaster restore can then reach WAL that
never completed a segment, on request only: backup-fetch --use-partial
(wal-fetch --partial).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pg", EnvVars: []string{"WALSHIP_PG"}, Usage: "libpq `CONNINFO` of the server to stream from (default: PGHOST, PGPORT, … environment)"},
			&cli.StringFlag{Name: "slot", Usage: "physical replication slot `NAME`"},
			&cli.BoolFlag{Name: "create-slot", Usage: "create the slot if it does not exist, then stream"},
			&cli.StringFlag{Name: "spool", Value: "/var/lib/walship/spool", EnvVars: []string{"WALSHIP_SPOOL"}, Usage: "local `DIR` for WAL received and not archived yet"},
			&cli.BoolFlag{Name: "synchronous", Usage: "fsync and report after every message (for synchronous_standby_names)"},
			&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, Usage: "how often to report positions to the server"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics at `ADDR` (e.g. 127.0.0.1:9187) under /metrics"},
			&cli.DurationFlag{Name: "partial-interval", Usage: "also store a snapshot of the segment being received in the archive at this interval (0: never), for wal-fetch --partial"},
			&cli.BoolFlag{Name: "status", Usage: "print the status of the wal-stream using --spool and exit"},
		},
		Action: a.walStream,
	}
}

func (a *app) walStream(c *cli.Context) error {
	if _, err := args(c, 0); err != nil {
		return err
	}
	if c.Bool("status") {
		st, err := stream.ReadStatus(c.String("spool"))
		if err != nil {
			return fmt.Errorf("wal-stream --status: %w", err)
		}
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	if c.Duration("status-interval") < 100*time.Millisecond {
		return withCode(exitUsage, errors.New("wal-stream: --status-interval must be at least 100ms"))
	}
	s, cd, err := a.openRepoCodec(c)
	if err != nil {
		return err
	}
	err = stream.Run(c.Context, s, stream.Options{
		ConnInfo:        c.String("pg"),
		Slot:            c.String("slot"),
		CreateSlot:      c.Bool("create-slot"),
		Spool:           c.String("spool"),
		Synchronous:     c.Bool("synchronous"),
		StatusInterval:  c.Duration("status-interval"),
		MetricsListen:   c.String("metrics-listen"),
		PartialInterval: c.Duration("partial-interval"),
		Codec:           cd,
		Repo:            c.String(flagRepo),
		CacheDir:        cacheDir(c),
		Logger:          a.log,
	})
	if err != nil {
		return fmt.Errorf("wal-stream: %w", err)
	}
	return nil
}
