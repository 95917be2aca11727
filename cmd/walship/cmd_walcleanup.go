package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/cleanup"
)

func (a *app) walCleanupCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-cleanup",
		Usage:     "remove archived WAL older than OLDEST, like pg_archivecleanup (archive_cleanup_command)",
		ArgsUsage: "OLDEST",
		Description: `Removes archived WAL segments and .partial files whose log and segment
number sort before OLDEST's (the timeline is ignored), with exactly the
rules of pg_archivecleanup. OLDEST may be a segment, SEGMENT.partial or
SEGMENT.OFFSET.backup name. Timeline history files are never removed, and
on a walship archive WAL that a completed base backup needs is kept
whatever OLDEST says. In postgresql.conf of a standby fed from the archive:

   archive_cleanup_command = 'walship --config /etc/walship.conf wal-cleanup %r'

For scripts written for pg_archivecleanup, --dir works on a plain
directory of uncompressed files and needs no --repo:

   walship wal-cleanup --dir /mnt/archive [-n] [-x .gz] 000000010000000000000010

-n (--dry-run) prints what would go, one per line on stdout (paths with
--dir, object keys otherwise), and removes nothing.

On an S3 archive written with --object-lock-days, WAL under Object Lock
retention cannot be removed yet: the older files still go, and
wal-cleanup exits 1 with one line that says how many stay and until
when (PostgreSQL logs it as a warning and runs the command again at the
next restartpoint).`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "print what would be removed; remove nothing"},
			&cli.StringFlag{Name: "dir", Usage: "prune this plain `DIR` instead of the archive (pg_archivecleanup form)"},
			&cli.StringFlag{Name: "ext", Aliases: []string{"x"}, Usage: "with --dir: strip `EXT` from file names before comparing (pg_archivecleanup -x)"},
			&cli.BoolFlag{Name: "backup-files", Aliases: []string{"b"}, Usage: "with --dir: also remove .backup files (pg_archivecleanup 17 -b)"},
		},
		Action: a.walCleanup,
	}
}

func (a *app) walCleanup(c *cli.Context) error {
	argv, err := args(c, 1)
	if err != nil {
		return err
	}
	oldest := argv[0]
	var removed []string
	if dir := c.String("dir"); dir != "" {
		removed, err = cleanup.Dir(dir, oldest, cleanup.DirOptions{
			Ext: c.String("ext"), DryRun: c.Bool("dry-run"), BackupFiles: c.Bool("backup-files"), Out: a.stdout,
		})
	} else {
		if c.String("ext") != "" || c.Bool("backup-files") {
			return usageError("wal-cleanup: -x and -b work with --dir only")
		}
		s, oerr := a.openRepo(c)
		if oerr != nil {
			return oerr
		}
		removed, err = cleanup.Archive(c.Context, s, oldest, cleanup.ArchiveOptions{DryRun: c.Bool("dry-run"), Out: a.stdout, Logger: a.log})
	}
	if errors.Is(err, cleanup.ErrBadOldest) {
		return withCode(exitUsage, fmt.Errorf("wal-cleanup: %w", err))
	}
	if err != nil {
		return fmt.Errorf("wal-cleanup: %w", err)
	}
	if !c.Bool("dry-run") {
		a.log.Info(fmt.Sprintf("removed %d WAL files older than %s", len(removed), oldest), "removed", len(removed))
	}
	return nil
}
