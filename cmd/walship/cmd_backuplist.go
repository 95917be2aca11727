package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/progress"
)

func (a *app) backupListCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup-list",
		Usage: "list the completed base backups in the archive",
		Description: `Lists completed base backups, oldest first. --json prints a JSON array
for scripts (name, timeline, start_lsn, stop_lsn, start_time, finish_time,
size, stored_size, pg_version, system_id, permanent, …). KEPT shows
backups marked permanent with walship backup-mark.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON on stdout"},
		},
		Action: a.backupList,
	}
}

func (a *app) backupList(c *cli.Context) error {
	if _, err := args(c, 0); err != nil {
		return err
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	backups, err := basebackup.List(c.Context, s)
	if err != nil {
		return fmt.Errorf("backup-list: %w", err)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if backups == nil {
			backups = []basebackup.Backup{}
		}
		return enc.Encode(backups)
	}
	if len(backups) == 0 {
		fmt.Fprintln(a.stdout, "no backups: take one with walship backup-push")
		return nil
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tFINISHED\tTIMELINE\tSTART LSN\tSTOP LSN\tWAL NEEDED FROM … TO\tSIZE\tSTORED\tPG\tKEPT")
	for _, b := range backups {
		kept := ""
		if b.Permanent {
			kept = "permanent"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s … %s\t%s\t%s\t%d\t%s\n", b.Name, b.FinishTime.Local().Format(time.DateTime),
			b.Timeline, b.StartLSN, b.StopLSN, b.StartWAL, b.StopWAL, progress.Bytes(b.Size), progress.Bytes(b.StoredSize), b.MajorVersion(), kept)
	}
	return w.Flush()
}
