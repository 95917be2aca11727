package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/restore"
)

func (a *app) walFetchCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-fetch",
		Usage:     "restore one archived file for PostgreSQL (restore_command)",
		ArgsUsage: "NAME DEST",
		Description: `Fetches archived file NAME into DEST. In postgresql.conf of a server
in recovery (recovery.signal or standby.signal in its data directory):

   restore_command = 'walship --config /etc/walship.conf wal-fetch %f %p'

DEST appears only complete and verified (checksum, size, page header,
system identifier). Exit codes steer PostgreSQL's recovery:
   0    the file is in DEST
   1    the file is not in the archive (recovery then tries pg_wal or
        streaming, or ends); also any failure on a standby
        (standby.signal present), which keeps retrying and stays up
   2    NAME is not a WAL file name
   255  storage, configuration or checksum failure outside a standby:
        recovery stops loudly instead of promoting on a short archive;
        fix the cause and start the server again

--partial: a segment that is not archived may come from the newest
snapshot wal-stream --partial-interval stored of it, zero-filled: for a
disaster restore after the primary is lost for good, it reaches WAL that
never made a complete segment. Only on request (backup-fetch
--use-partial writes it into restore_command): a standby should wait for
the complete segment instead.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pgdata", EnvVars: []string{"PGDATA"}, Usage: "the cluster's data `DIR` (default: the working directory, where PostgreSQL runs restore_command)"},
			&cli.BoolFlag{Name: "partial", Usage: "for a segment not archived, use the newest snapshot wal-stream --partial-interval stored (disaster recovery of a lost primary)"},
		},
		Action: a.walFetch,
	}
}

func (a *app) walFetch(c *cli.Context) error {
	a.fetchDir = c.String("pgdata")
	argv, err := args(c, 2)
	if err != nil {
		return err
	}
	cd, err := compression(c)
	if err != nil {
		return err
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	name, dest := argv[0], argv[1]
	res, err := restore.Fetch(c.Context, s, name, dest, restore.FetchOptions{
		Codec:    cd,
		DataDir:  dataDir(a.fetchDir),
		Repo:     c.String(flagRepo),
		CacheDir: cacheDir(c),
		Retry:    retryOptions(c, a.log),
		Partial:  c.Bool("partial"),
	})
	switch {
	case errors.Is(err, restore.ErrBadName):
		return withCode(exitUsage, fmt.Errorf("wal-fetch: %w", err))
	case errors.Is(err, restore.ErrNotFound):
		// Routine: PostgreSQL asks for the next segment until one is missing.
		a.log.Info(fmt.Sprintf("%s is not in the archive", name), "file", name)
		return exitError{exitFailure, errQuiet}
	case err != nil:
		return fmt.Errorf("wal-fetch %s: %w", name, err)
	}
	if res.PartialBytes > 0 {
		a.log.Warn(fmt.Sprintf("restored %s from the streamed snapshot %s: only its first %s were received; recovery ends there",
			res.Name, res.Key, humanBytes(res.PartialBytes)), "file", res.Name, "partial_bytes", res.PartialBytes)
		return nil
	}
	a.log.Info(fmt.Sprintf("restored %s from %s (%s) in %s", res.Name, res.Key, humanBytes(res.Size), res.Duration.Round(1e6)),
		"file", res.Name, "size", res.Size, "stored", res.Stored, "ms", res.Duration.Milliseconds())
	return nil
}

// errQuiet is an error that has been logged already.
var errQuiet = errors.New("")

// fetchExitCode maps a wal-fetch failure to the exit code that makes
// PostgreSQL do the safe thing. Only "definitely not archived" may look
// like "not found" outside a standby.
func fetchExitCode(err error, pgdata string) int {
	code := exitCodeOf(err)
	if code == exitOK || errors.Is(err, restore.ErrBadName) || errors.Is(err, errQuiet) {
		return code
	}
	if pgdata == "" {
		pgdata = "."
	}
	if _, serr := os.Stat(filepath.Join(pgdata, "standby.signal")); serr == nil {
		return exitFailure
	}
	return exitFatal
}
