package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/cleanup"
	"github.com/walship/walship/progress"
)

// datePrefix tells a time given to --before from a backup name.
var datePrefix = regexp.MustCompile(`^\d{4}-\d\d-\d\d`)

func (a *app) backupDeleteCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup-delete",
		Usage: "retention: delete old base backups and the WAL only they need (dry run unless --confirm)",
		Description: `Applies a retention policy to the archive (from cron, for example):

   walship backup-delete --retain-full 7 --confirm
   walship backup-delete --before '2026-11-01 00:00:00+00' --confirm
   walship backup-delete --before base_20261101T000000Z --confirm

--retain-full N keeps the newest N backups. --before TIME keeps what a
recovery to TIME or later needs: backups that finished after TIME and the
newest one that finished before it. --before NAME deletes the backups
older than NAME. Given several rules, a backup goes only when every rule
lets it go. The newest backup, permanent backups (walship backup-mark)
and those named with --keep are always kept.

WAL is removed per timeline, up to the start of the oldest kept backup
that can recover along that timeline (timeline history files say which);
history files are never removed, and a backup-push still running keeps
the WAL it needs. Without --confirm nothing is removed: the plan is
printed (--json for scripts).

On an S3 archive written with --object-lock-days, nothing can be
deleted before its Object Lock retention ends. A backup whose retention
has not ended stays whole — listed, restorable, with the WAL it needs —
and backup-delete exits 1 with one line that says until when; WAL under
retention stays too, while older WAL goes. Run it again after that date
(from cron, it catches up by itself). On a versioned bucket every version
of a deleted object is removed, so the space is really freed.`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "retain-full", Usage: "keep the newest `N` backups"},
			&cli.StringFlag{Name: "before", Usage: "delete what is not needed to recover to `TIME|NAME` or later (a time with its zone, or a backup name)"},
			&cli.StringSliceFlag{Name: "keep", Usage: "keep backup `NAME` whatever the rules say (repeatable)"},
			&cli.BoolFlag{Name: "confirm", Usage: "delete; without it, only print what would be deleted"},
			&cli.BoolFlag{Name: "json", Usage: "print the plan as JSON on stdout"},
		},
		Action: a.backupDelete,
	}
}

func (a *app) backupDelete(c *cli.Context) error {
	if _, err := args(c, 0); err != nil {
		return err
	}
	pol := cleanup.Policy{RetainFull: c.Int("retain-full"), Keep: c.StringSlice("keep")}
	if v := c.String("before"); v != "" {
		if basebackup.ValidName(v) && !datePrefix.MatchString(v) {
			pol.BeforeName = v
		} else {
			t, err := parseZonedTime("--before", v)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("backup-delete: %w (or give a backup name, see walship backup-list)", err))
			}
			pol.Before = t
		}
	}
	if c.IsSet("retain-full") && pol.RetainFull < 1 {
		return withCode(exitUsage, fmt.Errorf("backup-delete: --retain-full %d: keep at least 1 backup", pol.RetainFull))
	}
	if pol.RetainFull == 0 && pol.Before.IsZero() && pol.BeforeName == "" {
		return withCode(exitUsage, errors.New("backup-delete: say what to keep: --retain-full N and/or --before TIME|NAME"))
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	start := time.Now()
	plan, err := cleanup.PlanRetention(c.Context, s, pol)
	if err != nil {
		return fmt.Errorf("backup-delete: %w", err)
	}
	a.log.Debug("retention planned", "took", time.Since(start).Round(time.Millisecond), "objects", plan.Objects())
	confirm := c.Bool("confirm")
	if c.Bool("json") {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(plan); err != nil {
			return err
		}
	} else {
		printPlan(a.stdout, plan, confirm)
	}
	if !confirm {
		if plan.Objects() > 0 {
			a.log.Info(fmt.Sprintf("dry run: nothing deleted; add --confirm to delete %d backup(s) and %d WAL file(s)", plan.DeletedBackups(), plan.WALFiles()))
		}
		return nil
	}
	if err := plan.Execute(c.Context, s, a.log); err != nil {
		return fmt.Errorf("backup-delete: %w", err)
	}
	a.log.Info(fmt.Sprintf("deleted %d backup(s) and %d WAL file(s) in %v", plan.DeletedBackups(), plan.WALFiles(), time.Since(start).Round(time.Millisecond)))
	return nil
}

// printPlan writes the plan for a person: one line per backup, one per
// timeline of WAL.
func printPlan(out io.Writer, p *cleanup.Plan, confirm bool) {
	verb := "would delete"
	if confirm {
		verb = "delete"
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, d := range p.Backups {
		action := "keep"
		if d.Delete {
			action = verb
		}
		fmt.Fprintf(w, "%s\tbackup %s\tfinished %s\ttimeline %d\t%s\t%s\n", action, d.Name, d.FinishTime.Local().Format(time.DateTime), d.Timeline, progress.Bytes(d.StoredSize), d.Reason)
	}
	for _, name := range p.Leftovers {
		fmt.Fprintf(w, "%s\tbackup %s\tnever completed\t\t\tinterrupted more than %v ago\n", verb, name, cleanup.StaleAfter)
	}
	for _, name := range p.Running {
		fmt.Fprintf(w, "keep\tbackup %s\tnot completed\t\t\tmay still be running: its WAL is kept\n", name)
	}
	for _, r := range p.WAL {
		fmt.Fprintf(w, "%s\tWAL timeline %d\t%s … %s\t%d files\t%s\tkeeping from %s\n", verb, r.Timeline, r.First, r.Last, r.Files, progress.Bytes(r.Bytes), r.KeepFrom)
	}
	w.Flush()
	for _, n := range p.Notes {
		fmt.Fprintln(out, "note:", n)
	}
}
