package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/failover"
	"github.com/walship/walship/progress"
)

func (a *app) standbyPromoteCommand() *cli.Command {
	return &cli.Command{
		Name:  "standby-promote",
		Usage: "promote a standby: --planned (replay everything first) or --forced (now, report the loss)",
		Description: `Promotes the standby whose data directory is --pgdata, on its own host,
through a connection to it (--pg; the user needs superuser or EXECUTE on
pg_promote). Say which promotion you want:

--planned  waits until the standby has replayed everything the archive
           holds on the timeline it follows — up to the end of the last
           complete record of the newest archived segment — and, if it
           streams, everything its upstream has; then promotes. If that is
           not reached within --timeout it does not promote, says what is
           missing, and exits 1. For a switchover, stop the old primary
           first; a standby fed only by the archive needs the last WAL
           archived before that: SELECT pg_switch_wal() once writes have
           stopped, then stop the primary.
--forced   promotes now: wal-fetch hands the standby no further segment
           while it ends recovery (WAL already in its pg_wal is still
           replayed), then reports the data-loss window: the WAL the
           archive and the upstream hold beyond the fork.

Both print the new timeline and the fork LSN and make sure the new
timeline's history file is in the archive. On stdout one line, or with
--json an object: timeline, previous_timeline, fork_lsn, archive_end_lsn,
upstream, upstream_lsn, lost_bytes, history_file, waited_ms, promote_ms,
warnings. Progress goes to stderr.

   walship --config /etc/walship.conf standby-promote --planned --pgdata /var/lib/postgresql/15/main`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pgdata", EnvVars: []string{"PGDATA"}, Usage: "the standby's data `DIR`, on this host"},
			&cli.StringFlag{Name: "pg", EnvVars: []string{"WALSHIP_PG"}, Usage: "libpq `CONNINFO` of the standby (default: PGHOST, PGPORT, … environment)"},
			&cli.BoolFlag{Name: "planned", Usage: "replay everything the archive and the upstream hold, then promote; refuse after --timeout"},
			&cli.BoolFlag{Name: "forced", Usage: "promote now and report the WAL lost"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "how long a planned promotion waits for the standby, and PostgreSQL's promotion may take"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON on stdout"},
		},
		Action: a.standbyPromote,
	}
}

func (a *app) standbyPromote(c *cli.Context) error {
	if _, err := args(c, 0); err != nil {
		return err
	}
	var mode failover.Mode
	switch {
	case c.Bool("planned") && c.Bool("forced"):
		return usageError("standby-promote: --planned and --forced exclude each other: choose one")
	case c.Bool("planned"):
		mode = failover.Planned
	case c.Bool("forced"):
		mode = failover.Forced
	default:
		return usageError("standby-promote: say --planned (replay everything the archive holds, then promote) or --forced (promote now, report the loss)")
	}
	if c.Duration("timeout") <= 0 {
		return usageError("standby-promote: --timeout must be positive, such as 5m")
	}
	if c.String("pgdata") == "" {
		return usageError("standby-promote: --pgdata (or PGDATA) must name the standby's data directory")
	}
	dir := dataDir(c.String("pgdata"))
	if dir == "" {
		return usageError("standby-promote: --pgdata %s is not a PostgreSQL data directory (no PG_VERSION)", c.String("pgdata"))
	}
	s, cd, err := a.openRepoCodec(c)
	if err != nil {
		return err
	}
	res, err := failover.Promote(c.Context, s, failover.Options{
		Mode:     mode,
		ConnInfo: c.String("pg"),
		DataDir:  dir,
		Timeout:  c.Duration("timeout"),
		Push: archive.PushOptions{
			Codec:    cd,
			Repo:     c.String(flagRepo),
			CacheDir: cacheDir(c),
			DataDir:  dir,
			Logger:   a.log,
		},
		Logger: a.log,
	})
	if errors.Is(err, failover.ErrWrongServer) {
		return withCode(exitUsage, fmt.Errorf("standby-promote: %w", err))
	}
	if err != nil {
		return fmt.Errorf("standby-promote --%s: %w", mode, err)
	}
	line := promoteSummary(res)
	if c.Bool("json") {
		a.log.Info(line)
		return json.NewEncoder(a.stdout).Encode(res)
	}
	fmt.Fprintln(a.stdout, line)
	return nil
}

// promoteSummary says in one line what a promotion did and lost.
func promoteSummary(r failover.Result) string {
	head := fmt.Sprintf("promoted to timeline %d (%s) at %s, where timeline %d ends; %s archived", r.Timeline, r.Mode, r.ForkLSN, r.PreviousTimeline, r.HistoryFile)
	if r.LostBytes == 0 {
		if r.Upstream == "" {
			return fmt.Sprintf("%s; no WAL lost: the archive holds no WAL of timeline %d beyond it", head, r.PreviousTimeline)
		}
		return fmt.Sprintf("%s; no WAL lost: neither the archive nor the upstream %s holds WAL of timeline %d beyond it", head, r.Upstream, r.PreviousTimeline)
	}
	end := r.ArchiveEndLSN
	if r.UpstreamLSN != nil {
		end = max(end, *r.UpstreamLSN)
	}
	var where []string
	if r.ArchiveEndLSN > r.ForkLSN {
		where = append(where, fmt.Sprintf("the archive up to %s (%s)", r.ArchiveEndLSN, filepath.Base(r.ArchiveEndFile)))
	}
	if r.UpstreamLSN != nil && *r.UpstreamLSN > r.ForkLSN {
		known := ""
		if !r.UpstreamReachable {
			known = ", as it last reported"
		}
		where = append(where, fmt.Sprintf("the upstream %s up to %s%s", r.Upstream, *r.UpstreamLSN, known))
	}
	return fmt.Sprintf("%s; LOST %s of WAL of timeline %d (LSN %s to %s): it exists in %s but not on timeline %d",
		head, progress.Bytes(r.LostBytes), r.PreviousTimeline, r.ForkLSN, end, joinAnd(where), r.Timeline)
}

func joinAnd(parts []string) string {
	switch len(parts) {
	case 0:
		return "nothing"
	case 1:
		return parts[0]
	}
	return parts[0] + " and " + parts[1]
}

// fetchHeld is wal-fetch's side of a forced promotion: while
// standby-promote --forced runs, segments are "not in the archive", so
// that recovery ends where it stands.
func (a *app) fetchHeld(dataDir, name string) bool {
	if !failover.FetchHeld(dataDir, name) {
		return false
	}
	a.log.Info(fmt.Sprintf("%s not fetched: a forced promotion (walship standby-promote --forced) ends recovery here", name), "file", name)
	return true
}
