package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/progress"
)

func (a *app) backupPushCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup-push",
		Usage: "take a base backup over a replication connection into the archive (cron)",
		Description: `Takes a base backup of a running primary or standby over a replication
connection and stores it, compressed and checksummed, with the server's
backup manifest. WAL is not copied: it comes from the archive, which
archive_command (walship wal-push) must already fill.

The backup appears in backup-list only once all of it and the WAL segment
it ends in are in the archive; an interrupted backup leaves nothing that
backup-list shows. On a terminal it shows progress; from cron it logs one
line when done.

   # crontab of the postgres user
   0 3 * * *  walship --config /etc/walship.conf backup-push --pg "host=/var/run/postgresql"

The connection follows libpq conventions: --pg "host=… port=… user=…",
or PGHOST, PGPORT, PGUSER, PGPASSWORD and ~/.pgpass. The user needs the
REPLICATION attribute and a "replication" line in pg_hba.conf.

A server whose timeline a newer one in the archive superseded past its
position (an old primary still running after a failover) is refused
before anything is stored, and again if that happens while the backup
runs; with --pgdata, --fence-command runs as for wal-push.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pg", EnvVars: []string{"WALSHIP_PG"}, Usage: "libpq `CONNINFO` of the server to back up (default: PGHOST, PGPORT, … environment)"},
			&cli.DurationFlag{Name: "wal-timeout", Value: 10 * time.Minute, Usage: "how long to wait for the backup's last WAL segment to reach the archive"},
			&cli.StringFlag{Name: "pgdata", EnvVars: []string{"PGDATA"}, Usage: "the server's data `DIR`, when it is on this host: where --fence-command records that it ran"},
		},
		Action: a.backupPush,
	}
}

func (a *app) backupPush(c *cli.Context) error {
	if _, err := args(c, 0); err != nil {
		return err
	}
	s, cd, err := a.openRepoCodec(c)
	if err != nil {
		return err
	}
	start := time.Now()
	b, err := basebackup.Push(c.Context, s, basebackup.PushOptions{
		ConnInfo:   c.String("pg"),
		Codec:      cd,
		Repo:       c.String(flagRepo),
		CacheDir:   cacheDir(c),
		WALTimeout: c.Duration("wal-timeout"),
		Progress:   a.newReporter(),
		Logger:     a.log,
	})
	var sup *archive.SupersededError
	if errors.As(err, &sup) && c.IsSet("pgdata") {
		a.runFenceCommand(c, dataDir(c.String("pgdata")), sup)
	}
	if err != nil {
		return fmt.Errorf("backup-push: %w", err)
	}
	took := time.Since(start)
	a.log.Info(fmt.Sprintf("backup %s complete: %s → %s %s in %s (%s/s), WAL %s … %s",
		b.Name, progress.Bytes(b.Size), progress.Bytes(b.StoredSize), b.Codec, took.Round(time.Second/10),
		progress.Bytes(int64(float64(b.Size)/took.Seconds())), b.StartWAL, b.StopWAL),
		"backup", b.Name, "size", b.Size, "stored", b.StoredSize, "ms", took.Milliseconds())
	fmt.Fprintln(a.stdout, b.Name)
	return nil
}
