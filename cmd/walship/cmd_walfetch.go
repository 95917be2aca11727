package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/progress"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/wal"
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
			&cli.IntFlag{Name: "prefetch", Value: 8, EnvVars: []string{"WALSHIP_PREFETCH"}, Usage: "keep the next `N` segments downloaded and verified ahead of recovery, by a helper process (0: off)"},
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
	name, dest := argv[0], argv[1]
	dd := dataDir(a.fetchDir)
	standby := dd != "" && fileExists(filepath.Join(dd, "standby.signal"))
	if standby && a.fetchHeld(dd, name) {
		return exitError{exitFailure, errQuiet}
	}
	// A prefetched segment needs no storage client at all.
	pf := a.prefetchFor(c, dd, name)
	if pf != nil {
		if pf.take(c.Context, dest) {
			a.log.Info(fmt.Sprintf("restored %s (prefetched)", name), "file", name, "prefetched", true)
			pf.want()
			return nil
		}
		if standby && restore.RecentlyAbsent(pf.spool, name) {
			// A standby polls for the next segment: the archive said
			// "not yet" a moment ago.
			return exitError{exitFailure, errQuiet}
		}
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	o := restore.FetchOptions{
		Codec:    cd,
		DataDir:  dd,
		Repo:     c.String(flagRepo),
		CacheDir: cacheDir(c),
		Retry:    retryOptions(c, a.log),
		Partial:  c.Bool("partial"),
	}
	res, err := restore.Fetch(c.Context, s, name, dest, o)
	switch {
	case errors.Is(err, restore.ErrBadName):
		return withCode(exitUsage, fmt.Errorf("wal-fetch: %w", err))
	case errors.Is(err, restore.ErrNotFound):
		// Routine: PostgreSQL asks for the next segment until one is missing.
		a.log.Info(fmt.Sprintf("%s is not in the archive", name), "file", name)
		if pf != nil && standby {
			restore.MarkAbsent(pf.spool, name)
		}
		return exitError{exitFailure, errQuiet}
	case err != nil:
		return fmt.Errorf("wal-fetch %s: %w", name, err)
	}
	if pf != nil {
		pf.want()
	}
	if res.PartialBytes > 0 {
		a.log.Warn(fmt.Sprintf("restored %s from the streamed snapshot %s: only its first %s were received; recovery ends there",
			res.Name, res.Key, progress.Bytes(res.PartialBytes)), "file", res.Name, "partial_bytes", res.PartialBytes)
		return nil
	}
	a.log.Info(fmt.Sprintf("restored %s from %s (%s) in %s", res.Name, res.Key, progress.Bytes(res.Size), res.Duration.Round(1e6)),
		"file", res.Name, "size", res.Size, "stored", res.Stored, "ms", res.Duration.Milliseconds())
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// prefetch is wal-fetch's side of prefetching for one segment.
type prefetch struct {
	a       *app
	c       *cli.Context
	spool   string
	name    string
	window  int
	dataDir string
}

// prefetchFor returns the prefetch state for a request of name, or nil
// when prefetching does not apply (off, not a segment, no data
// directory, a --partial fetch).
func (a *app) prefetchFor(c *cli.Context, dataDir, name string) *prefetch {
	k := c.Int("prefetch")
	fn, err := wal.ParseFileName(name)
	if k <= 0 || dataDir == "" || err != nil || fn.Kind != wal.KindSegment || c.Bool("partial") {
		return nil
	}
	return &prefetch{a: a, c: c, spool: restore.Spool(dataDir), name: name, window: min(k, 64), dataDir: dataDir}
}

// take hands over a prefetched copy, waiting for a download in progress.
func (p *prefetch) take(ctx context.Context, dest string) bool {
	return restore.AwaitPrefetch(ctx, p.spool, p.name, dest, p.c.Duration(flagStorageTimeout))
}

// want moves the prefetch window past name and starts the prefetcher
// when none runs.
func (p *prefetch) want() {
	if err := restore.Want(p.spool, p.name); err != nil {
		p.a.log.Debug("prefetch: cannot record the request", "err", err)
		return
	}
	if restore.PrefetcherRunning(p.spool) {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	// The global flags this process got come before its command name.
	var global []string
	if i := slices.Index(os.Args, "wal-fetch"); i > 0 {
		global = os.Args[1:i]
	}
	cmd := exec.Command(exe, append(slices.Clone(global), "wal-prefetch", "--pgdata", p.dataDir, "--window", fmt.Sprint(p.window))...)
	// The helper outlives this call, so it must not hold this process's
	// stderr: a restore_command whose output goes through a pipe
	// ("2>&1 | logger") would wait for the helper to exit. Its warnings
	// go to a log in the spool; failures that matter show up again in
	// wal-fetch's own log when it fetches without the helper.
	logFile, err := pgperm.Of(p.dataDir).OpenFile(filepath.Join(p.spool, restore.PrefetchLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND)
	if err != nil {
		p.a.log.Debug("prefetch: cannot open the helper's log", "err", err)
		return
	}
	defer logFile.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		p.a.log.Debug("prefetch: cannot start the helper", "err", err)
		return
	}
	cmd.Process.Release()
}

// walPrefetchCommand is the helper wal-fetch starts; not for people.
func (a *app) walPrefetchCommand() *cli.Command {
	return &cli.Command{
		Name:   "wal-prefetch",
		Hidden: true,
		Usage:  "keep the segments after the last one wal-fetch was asked for downloaded (started by wal-fetch)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pgdata", Required: true},
			&cli.IntFlag{Name: "window", Value: 8},
			&cli.IntFlag{Name: "parallel", Value: 4},
		},
		Action: func(c *cli.Context) error {
			if _, err := args(c, 0); err != nil {
				return err
			}
			s, cd, err := a.openRepoCodec(c)
			if err != nil {
				return err
			}
			dd := dataDir(c.String("pgdata"))
			if dd == "" {
				return usageError("wal-prefetch: %s is not a data directory", c.String("pgdata"))
			}
			id, err := archive.LoadIdentity(c.Context, s, c.String(flagRepo), cacheDir(c))
			if err != nil {
				return err
			}
			return restore.Prefetch(c.Context, s, restore.PrefetchOptions{
				FetchOptions: restore.FetchOptions{Codec: cd, DataDir: dd, Repo: c.String(flagRepo), CacheDir: cacheDir(c), Retry: retryOptions(c, a.log)},
				Spool:        restore.Spool(dd),
				Window:       c.Int("window"),
				Parallel:     c.Int("parallel"),
				SegSize:      id.SegmentSize,
				Logger:       a.log,
			})
		},
	}
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
