package main

import (
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/cleanup"
)

func (a *app) walVerifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "wal-verify",
		Usage: "check the archive has no WAL gap from the oldest backup to the newest WAL (cron, monitoring)",
		Description: `Checks, from object listings (plus the small timeline history files),
that the archive holds every WAL segment from the oldest base backup's
start (or the oldest archived segment) to the newest archived segment of
each timeline, along that timeline's history (its ancestors' segments up
to each switch point), and every backup's last segment. Exits 0 when
complete, 1 when something is missing, naming each gap with its segments
and LSN range. --json prints the report for monitoring (timeline, from,
to, segments, paths, gaps with timeline, first_missing, last_missing,
start_lsn, end_lsn, stops_lost).`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON on stdout"},
		},
		Action: a.walVerify,
	}
}

func (a *app) walVerify(c *cli.Context) error {
	if _, err := args(c, 0); err != nil {
		return err
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	r, err := cleanup.Verify(c.Context, s)
	if err != nil {
		return fmt.Errorf("wal-verify: %w", err)
	}
	if c.Bool("json") {
		if r.Gaps == nil {
			r.Gaps = []cleanup.Gap{}
		}
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		for _, p := range r.Paths {
			fmt.Fprintf(a.stdout, "timeline %d: %d segments on its history, %s … %s\n", p.Timeline, p.Segments, p.From, p.To)
		}
		for _, g := range r.Gaps {
			fmt.Fprintf(a.stdout, "GAP on timeline %d: %s … %s missing (LSN %s to %s)\n", g.Timeline, g.FirstMissing, g.LastMissing, g.StartLSN, g.EndLSN)
		}
		for _, b := range r.StopsLost {
			fmt.Fprintf(a.stdout, "MISSING last segment of backup %s\n", b)
		}
	}
	if !r.OK() {
		return fmt.Errorf("wal-verify: the archive has %d gap(s) and %d backup(s) without their last segment: restores across them will stop early", len(r.Gaps), len(r.StopsLost))
	}
	return nil
}
