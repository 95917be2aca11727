package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/basebackup"
)

func (a *app) backupMarkCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup-mark",
		Usage:     "mark a base backup permanent, so retention keeps it and its WAL (--release to undo)",
		ArgsUsage: "NAME",
		Description: `Marks backup NAME permanent: backup-delete never deletes it, nor the WAL
it needs. --release removes the mark. backup-list shows the mark.

   walship backup-mark base_20261122T030000Z
   walship backup-mark --release base_20261122T030000Z`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "release", Usage: "remove the permanent mark"},
		},
		Action: a.backupMark,
	}
}

func (a *app) backupMark(c *cli.Context) error {
	argv, err := args(c, 1)
	if err != nil {
		return err
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	name, release := argv[0], c.Bool("release")
	err = basebackup.MarkPermanent(c.Context, s, name, !release)
	if errors.Is(err, basebackup.ErrNotFound) {
		return withCode(exitUsage, fmt.Errorf("backup-mark: %w", err))
	}
	if err != nil {
		return fmt.Errorf("backup-mark %s: %w", name, err)
	}
	if release {
		a.log.Info(fmt.Sprintf("backup %s is no longer permanent: retention may delete it", name))
	} else {
		a.log.Info(fmt.Sprintf("backup %s is permanent: retention keeps it and its WAL", name))
	}
	return nil
}
