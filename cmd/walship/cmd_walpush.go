package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/progress"
)

func (a *app) walPushCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-push",
		Usage:     "archive one WAL, .partial, .history or .backup file (archive_command)",
		ArgsUsage: "PATH",
		Description: `Archives the file at PATH. In postgresql.conf:

   archive_mode = on
   archive_command = 'walship --config /etc/walship.conf wal-push %p'

Exits 0 only once the file is durably stored. A segment is checked
before upload: its name, size, page address and system identifier must
match, and WAL of another cluster is refused. A file already archived
with identical content succeeds (PostgreSQL retries after crashes); with
different content it fails — that means two servers write the same
timeline (split brain) — and nothing is overwritten.

Look-ahead: with --parallel K (default 4), it also pushes up to K-1 of
the next files waiting in pg_wal/archive_status, in parallel, and records
each one stored in pgsql_tmp_walship_push/ in the data directory, so that
PostgreSQL's calls for them return at once (the file is checked to be the
one pushed; markers older than an hour are not trusted).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pgdata", EnvVars: []string{"PGDATA"}, Usage: "the cluster's data `DIR` (default: the working directory, where PostgreSQL runs archive_command)"},
			&cli.IntFlag{Name: "parallel", Value: 4, EnvVars: []string{"WALSHIP_PUSH_PARALLEL"}, Usage: "push up to `K` files at once: this one and the next ones waiting in archive_status (1: this one only)"},
		},
		Action: a.walPush,
	}
}

func (a *app) walPush(c *cli.Context) error {
	argv, err := args(c, 1)
	if err != nil {
		return err
	}
	s, cd, err := a.openRepoCodec(c)
	if err != nil {
		return err
	}
	o := archive.PushOptions{
		Codec:    cd,
		Repo:     c.String(flagRepo),
		CacheDir: cacheDir(c),
		DataDir:  dataDir(c.String("pgdata")),
		Logger:   a.log,
	}
	path := argv[0]
	if o.DataDir != "" && archive.TakeMarker(o.DataDir, o.Repo, path) {
		a.log.Info(fmt.Sprintf("archived %s (pushed ahead)", filepath.Base(path)), "file", filepath.Base(path), "ahead", true)
		return nil
	}
	// The next files waiting go up beside this one — once the archive's
	// identity is known (cached), so that parallel pushes do not all
	// fetch or create it.
	var ahead []archive.AheadResult
	aheadDone := make(chan struct{})
	lookAhead := c.Int("parallel") - 1
	if o.DataDir == "" {
		lookAhead = 0 // no archive_status to look into
	} else if lookAhead > 0 {
		if _, err := archive.LoadIdentity(c.Context, s, o.Repo, o.CacheDir); err != nil {
			lookAhead = 0
		}
	}
	go func() {
		defer close(aheadDone)
		ahead = archive.PushAhead(c.Context, s, path, lookAhead, o)
	}()
	res, err := archive.Push(c.Context, s, path, o)
	<-aheadDone
	for _, r := range ahead {
		if r.Err != nil {
			a.log.Debug("look-ahead push failed; PostgreSQL's own call will push it", "file", r.Name, "err", r.Err)
		} else {
			a.log.Debug("pushed ahead", "file", r.Name, "size", r.Size, "stored", r.Stored)
		}
	}
	if errors.Is(err, archive.ErrBadName) {
		return withCode(exitUsage, fmt.Errorf("wal-push %s: %w", argv[0], err))
	}
	if err != nil {
		return fmt.Errorf("wal-push %s: %w", argv[0], err)
	}
	msg := fmt.Sprintf("archived %s: %s → %s %s (%.1f%%) in %s", res.Name, progress.Bytes(res.Size), progress.Bytes(res.Stored),
		res.Codec, ratio(res.Stored, res.Size), res.Duration.Round(1e6))
	if res.AlreadyArchived {
		msg = fmt.Sprintf("%s was already archived with identical content; nothing to do", res.Name)
	}
	a.log.Info(msg, "file", res.Name, "size", res.Size, "stored", res.Stored, "codec", res.Codec, "ms", res.Duration.Milliseconds())
	return nil
}

func ratio(part, whole int64) float64 {
	if whole == 0 {
		return 100
	}
	return 100 * float64(part) / float64(whole)
}
