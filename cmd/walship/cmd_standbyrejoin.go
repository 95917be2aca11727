package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/failover"
	"github.com/walship/walship/internal/pgrepl"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

func (a *app) standbyRejoinCommand() *cli.Command {
	return &cli.Command{
		Name:  "standby-rejoin",
		Usage: "rebuild a primary that lost a failover as a standby of the new primary",
		Description: `Turns the old primary in DIR, stopped, into a standby of the new primary
(--source), so that it follows it by streaming and from the archive:

 1. restore_command = 'walship ... wal-fetch %f %p' goes into DIR's
    postgresql.auto.conf, and pg_rewind --restore-target-wal runs (as
    DIR's owner when walship runs as root): it copies what changed on the
    new primary since the two histories forked and fetches WAL that is no
    longer in DIR/pg_wal from the archive.
 2. When a rewind is impossible — no data checksums and wal_log_hints off
    on the old primary, no common history, WAL gone from pg_wal and the
    archive — DIR is renamed DIR.rejoin-TIME (nothing is deleted) and the
    newest backup on the new primary's timeline is restored into DIR, as
    backup-fetch does. --no-rebootstrap fails instead.
 3. The standby settings follow: standby.signal, primary_conninfo (the
    --source string), primary_slot_name (--primary-slot), restore_command
    through this walship and recovery_target_timeline = 'latest'.

The old primary's own *.conf files at the top of DIR (postgresql.conf,
postgresql.auto.conf, pg_hba.conf, pg_ident.conf, their includes) are
kept: pg_rewind and a backup would bring the new primary's. It prints
"rewound" or "rebootstrapped" on stdout; then start PostgreSQL on DIR.

The role in --source needs REPLICATION (streaming) and what pg_rewind
needs (superuser, or the pg_ls_dir, pg_stat_file, pg_read_binary_file
grants of pg_rewind's documentation); its password belongs in ~/.pgpass
of the server's OS user, never in --source. pg_rewind comes from the
PostgreSQL version of DIR/PG_VERSION (/usr/lib/postgresql/MAJOR/bin,
pg_config --bindir, PATH) unless --pg-bindir names it.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pgdata", Usage: "the old primary's data `DIR` (stopped)"},
			&cli.StringFlag{Name: "source", Usage: "the new primary, a libpq `CONNINFO` without password: pg_rewind's --source-server and the standby's primary_conninfo"},
			&cli.StringFlag{Name: "primary-slot", Usage: "replication `SLOT` on the new primary (primary_slot_name)"},
			&cli.BoolFlag{Name: "no-rebootstrap", Usage: "when pg_rewind cannot rewind, fail instead of restoring the newest backup"},
			&cli.StringFlag{Name: "pg-bindir", Usage: "`DIR` holding pg_rewind and postgres of the data directory's PostgreSQL version"},
			&cli.StringFlag{Name: "config-file", Usage: "the old primary's postgresql.conf `FILE` when it is not in DIR (Debian: /etc/postgresql/MAJOR/CLUSTER/postgresql.conf; PostgreSQL 15 and newer)"},
			&cli.IntFlag{Name: "parallel", Value: 4, Usage: "re-bootstrap: archives downloaded and extracted at once"},
		},
		Action: a.standbyRejoin,
	}
}

// rejoin is what standby-rejoin knows about the old primary and the new
// one before it changes anything.
type rejoin struct {
	dir     string
	major   int
	sysID   uint64
	rs      restore.RecoverySettings
	source  pgrepl.SystemInfo
	history []wal.HistoryEntry
	config  []failover.ConfigFile
	start   time.Time
}

func (a *app) standbyRejoin(c *cli.Context) error {
	if _, err := args(c, 0); err != nil {
		return err
	}
	if c.String("pgdata") == "" || c.String("source") == "" {
		return usageError("standby-rejoin needs --pgdata DIR (the old primary's data directory) and --source CONNINFO (the new primary)")
	}
	dir, err := filepath.Abs(c.String("pgdata"))
	if err != nil {
		return err
	}
	major, err := failover.DataDirMajor(dir)
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("standby-rejoin: --pgdata: %w", err))
	}
	restoreCommand, err := a.hookCommand(c, "wal-fetch", "%f", "%p")
	if err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	r := &rejoin{dir: dir, major: major, rs: restore.RecoverySettings{
		Standby:         true,
		RestoreCommand:  restoreCommand,
		PrimaryConnInfo: c.String("source"),
		PrimarySlotName: c.String("primary-slot"),
		TargetTimeline:  "latest",
	}}
	if err := r.rs.Validate(); err != nil {
		return withCode(exitUsage, fmt.Errorf("standby-rejoin: %w", err))
	}
	configFile := c.String("config-file")
	switch {
	case configFile != "" && major < 15:
		return usageError("standby-rejoin: --config-file needs PostgreSQL 15 or newer (pg_rewind --config-file); %s is PostgreSQL %d", dir, major)
	case configFile != "":
		if configFile, err = filepath.Abs(configFile); err != nil {
			return err
		}
	case !fileExists(filepath.Join(dir, "postgresql.conf")):
		return usageError("standby-rejoin: %s has no postgresql.conf: name the server's configuration file with --config-file (Debian: /etc/postgresql/%d/main/postgresql.conf)", dir, major)
	}
	r.start = time.Now()
	if err := failover.CheckStopped(dir); err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	binDir, err := failover.FindBinDir(c.Context, major, c.String("pg-bindir"))
	if err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	if err := r.checkClusters(c.Context, s); err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	if ran, err := failover.SettleSource(c.Context, r.rs.PrimaryConnInfo, r.source.Timeline); err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	} else if ran {
		a.log.Info(fmt.Sprintf("ran CHECKPOINT on the new primary so that its control file shows timeline %d to pg_rewind", r.source.Timeline))
	}
	if r.config, err = failover.ReadConfigFiles(dir); err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	if err := restore.SetRestoreCommand(dir, restoreCommand); err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}

	a.log.Info(fmt.Sprintf("rewinding %s onto timeline %d of the new primary with %s/pg_rewind; WAL gone from pg_wal comes from the archive", dir, r.source.Timeline, binDir))
	res, err := failover.Rewind(c.Context, failover.RewindOptions{DataDir: dir, Source: r.rs.PrimaryConnInfo, BinDir: binDir, ConfigFile: configFile, Output: a.stderr})
	var rerr *failover.RewindError
	switch {
	case err == nil:
		if err := r.becomeStandby(); err != nil {
			return err
		}
		what := "rewound"
		if res.NotNeeded {
			what = "already on the new primary's history (nothing to rewind):"
		}
		a.log.Info(fmt.Sprintf("%s %s in %s (pg_rewind %s); it is a standby of the new primary on timeline %d: start PostgreSQL on it",
			what, dir, time.Since(r.start).Round(time.Second/10), res.Took.Round(time.Second/10), r.source.Timeline),
			"result", "rewound", "ms", time.Since(r.start).Milliseconds(), "rewind_ms", res.Took.Milliseconds())
		fmt.Fprintln(a.stdout, "rewound")
		return nil
	case errors.As(err, &rerr) && rerr.Impossible && !c.Bool("no-rebootstrap"):
		a.log.Warn(fmt.Sprintf("cannot rewind %s: %s; restoring the newest backup on timeline %d instead", dir, rerr.Reason, r.source.Timeline))
		return a.rebootstrap(c, s, r)
	}
	// Put the old primary's configuration back as it was: pg_rewind may
	// have copied the new primary's over it.
	if werr := failover.WriteConfigFiles(dir, r.config); werr != nil {
		a.log.Warn(fmt.Sprintf("could not put back the configuration files of %s: %v", dir, werr))
	}
	if errors.As(err, &rerr) && rerr.Impossible {
		return fmt.Errorf("standby-rejoin: %w; or run standby-rejoin without --no-rebootstrap to restore the newest backup into %s instead (the old data directory is kept aside)", err, dir)
	}
	return fmt.Errorf("standby-rejoin: %w", err)
}

// checkClusters makes sure the data directory, the archive and the new
// primary are one cluster, and learns the new primary's timeline.
func (r *rejoin) checkClusters(ctx context.Context, s storage.Storage) error {
	sysID, ok := archive.ControlSystemID(r.dir)
	if !ok {
		return fmt.Errorf("%s has no readable global/pg_control: it is not a data directory pg_rewind can work on", r.dir)
	}
	r.sysID = sysID
	id, err := archive.ReadIdentity(ctx, s)
	if err != nil {
		return fmt.Errorf("read the archive's cluster identity: %w", err)
	}
	if id.SystemID != sysID {
		return fmt.Errorf("the archive %s holds cluster %d, but %s is cluster %d: check --repo", s, id.SystemID, r.dir, sysID)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgrepl.Connect(ctx, r.rs.PrimaryConnInfo)
	if err != nil {
		return fmt.Errorf("cannot reach the new primary (--source): %w", err)
	}
	defer conn.Close(context.Background())
	if r.source, err = pgrepl.IdentifySystem(ctx, conn); err != nil {
		return fmt.Errorf("new primary (--source): %w", err)
	}
	if r.source.SystemID != sysID {
		return fmt.Errorf("the new primary (--source) is cluster %d, but %s is cluster %d: check --source", r.source.SystemID, r.dir, sysID)
	}
	if slot := r.rs.PrimarySlotName; slot != "" {
		sl, err := pgrepl.ReadReplicationSlot(ctx, conn, slot)
		switch {
		case errors.Is(err, pgrepl.ErrUnsupported):
			// PostgreSQL 14 and older: the standby's log will say.
		case err != nil:
			return fmt.Errorf("new primary (--source): %w", err)
		case !sl.Exists:
			return fmt.Errorf("replication slot %s does not exist on the new primary: create it there (SELECT pg_create_physical_replication_slot('%s')) and run standby-rejoin again", slot, slot)
		}
	}
	if r.source.Timeline == 1 {
		return nil
	}
	_, content, err := pgrepl.TimelineHistory(ctx, conn, r.source.Timeline)
	if err != nil {
		return fmt.Errorf("new primary (--source): %w", err)
	}
	if r.history, err = wal.ParseHistory(content); err == nil {
		err = wal.CheckHistory(r.source.Timeline, r.history)
	}
	if err != nil {
		return fmt.Errorf("history of the new primary's timeline %d: %w", r.source.Timeline, err)
	}
	return nil
}

// becomeStandby writes the old primary's configuration back and then the
// standby settings.
func (r *rejoin) becomeStandby() error {
	if err := failover.WriteConfigFiles(r.dir, r.config); err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	if err := restore.WriteRecoverySettings(r.dir, r.rs); err != nil {
		return fmt.Errorf("standby-rejoin: write standby settings: %w", err)
	}
	return nil
}

// rebootstrap sets the data directory aside and restores the newest
// backup on the new primary's history in its place.
func (a *app) rebootstrap(c *cli.Context, s storage.Storage, r *rejoin) error {
	if failover.HasTablespaces(r.dir) {
		return fmt.Errorf("standby-rejoin: %s has tablespaces, which a restore would put back over the old primary's: move the old data directory and its tablespaces away yourself, then run walship backup-fetch --tablespace-map OLD=NEW --primary-conninfo SOURCE LATEST %s", r.dir, r.dir)
	}
	backups, err := basebackup.List(c.Context, s)
	if err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	b, err := failover.NewestBackupOn(backups, r.sysID, r.major, r.source.Timeline, r.history)
	if err != nil {
		return fmt.Errorf("standby-rejoin: %w (%s was not moved)", err, r.dir)
	}
	aside, err := failover.MoveAside(r.dir, time.Now())
	if err != nil {
		return fmt.Errorf("standby-rejoin: %w", err)
	}
	a.log.Info(fmt.Sprintf("moved the old data directory to %s (nothing was deleted); restoring backup %s (timeline %d) into %s", aside, b.Name, b.Timeline, r.dir),
		"aside", aside, "backup", b.Name)
	if err := a.fetchBackup(c, s, b, r.dir, nil); err != nil {
		return fmt.Errorf("standby-rejoin: %w; the old data directory is at %s", err, aside)
	}
	if err := r.becomeStandby(); err != nil {
		return err
	}
	took := time.Since(r.start)
	a.log.Info(fmt.Sprintf("re-bootstrapped %s from backup %s in %s; it is a standby of the new primary on timeline %d: start PostgreSQL on it, and remove %s once it follows",
		r.dir, b.Name, took.Round(time.Second/10), r.source.Timeline, aside),
		"result", "rebootstrapped", "backup", b.Name, "aside", aside, "ms", took.Milliseconds())
	fmt.Fprintln(a.stdout, "rebootstrapped")
	return nil
}
