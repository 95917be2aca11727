package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/progress"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

func (a *app) backupFetchCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup-fetch",
		Usage:     "restore a base backup into a directory and set up recovery (DR restore, PITR, new standby)",
		ArgsUsage: "NAME|LATEST DIR",
		Description: `Restores base backup NAME (or LATEST) into DIR, which must be empty or
absent, verifying every byte against the checksums taken at backup time,
and writes the recovery settings into DIR/postgresql.auto.conf, so that
starting PostgreSQL on DIR is all that is left to do:

   (no options)        disaster recovery: replay all archived WAL, then
                       promote (recovery.signal)
   --target-time T     point-in-time recovery (recovery.signal), also
   --target-lsn L      --target-name N (a pg_create_restore_point name)
                       and --target-xid X; --target-action says what
                       happens there: pause (PostgreSQL's default:
                       inspect, then SELECT pg_promote()), promote or
                       shutdown. With LATEST, the newest backup that ends
                       before the target is used.
   --standby           a standby fed from the archive (standby.signal,
                       recovery_target_timeline = 'latest'); with
                       --primary-conninfo it also streams from the
                       primary (hot standby) and falls back to the archive

restore_command calls this walship binary with the same repository
settings and key file paths (never credentials or keys: keep those in the
server's environment or in files its OS user can read).

Until a restore completes, DIR holds a file ` + basebackup.IncompleteMarker + `
and no global/pg_control, so PostgreSQL will not start on it. Tablespaces
are restored to their original locations unless mapped with
--tablespace-map OLD=NEW. Run as root, files get the owner of DIR (or of
its parent when DIR is created).`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "standby", Usage: "set up a standby (standby.signal) instead of a one-time recovery"},
			&cli.StringFlag{Name: "primary-conninfo", Usage: "stream from this primary (`CONNINFO`, no password: use ~/.pgpass); implies --standby"},
			&cli.StringFlag{Name: "primary-slot", Usage: "replication `SLOT` on the primary"},
			&cli.BoolFlag{Name: "archive-cleanup", Usage: "with --standby: archive_cleanup_command = 'walship wal-cleanup %r' (prunes WAL no standby restartpoint or base backup needs)"},
			&cli.StringFlag{Name: "target-time", Usage: "recover to this `TIME`, with its zone offset, e.g. '2026-11-22 03:00:00+00'"},
			&cli.StringFlag{Name: "target-lsn", Usage: "recover to this `LSN`"},
			&cli.StringFlag{Name: "target-name", Usage: "recover to this restore point `NAME`"},
			&cli.StringFlag{Name: "target-xid", Usage: "recover to this transaction `ID`"},
			&cli.StringFlag{Name: "target-action", Usage: "at the target: pause, promote or shutdown (PostgreSQL's default: pause)"},
			&cli.StringFlag{Name: "target-timeline", Value: "latest", Usage: "timeline to recover along: latest, current or a number"},
			&cli.StringSliceFlag{Name: "tablespace-map", Usage: "restore the tablespace at `OLD=NEW` location NEW (repeatable)"},
			&cli.BoolFlag{Name: "use-partial", Usage: "restore_command may use wal-stream's snapshots of segments never completed (wal-fetch --partial): recovery reaches the newest streamed WAL of a lost primary"},
			&cli.BoolFlag{Name: "verify", Usage: "also check every restored file against the server's backup manifest (as pg_verifybackup does)"},
			&cli.IntFlag{Name: "parallel", Value: 4, Usage: "archives downloaded and extracted at once"},
		},
		Action: a.backupFetch,
	}
}

func (a *app) backupFetch(c *cli.Context) error {
	argv, err := args(c, 2)
	if err != nil {
		return err
	}
	name, dir := argv[0], argv[1]
	if name != "LATEST" && !basebackup.ValidName(name) {
		return usageError("backup-fetch: %q is not a backup name: use LATEST or a name from walship backup-list", name)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return err
	}
	rs, target, err := recoverySettings(c)
	if err == nil {
		fetchArgs := []string{"%f", "%p"}
		if c.Bool("use-partial") {
			fetchArgs = append([]string{"--partial"}, fetchArgs...)
		}
		rs.RestoreCommand, err = a.hookCommand(c, "wal-fetch", fetchArgs...)
	}
	if err == nil && c.Bool("archive-cleanup") {
		if !rs.Standby {
			err = errors.New("--archive-cleanup needs --standby: only a standby runs archive_cleanup_command")
		} else {
			rs.ArchiveCleanupCommand, err = a.hookCommand(c, "wal-cleanup", "%r")
		}
	}
	if err == nil && c.Bool("use-partial") && rs.Standby {
		err = errors.New("--use-partial is for a disaster restore: a standby must wait for complete segments")
	}
	if err == nil {
		err = rs.Validate()
	}
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("backup-fetch: %w", err))
	}
	tsMap, err := tablespaceMap(c.StringSlice("tablespace-map"))
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("backup-fetch: %w", err))
	}
	s, err := a.openRepo(c)
	if err != nil {
		return err
	}
	b, err := basebackup.Choose(c.Context, s, name, target)
	if err != nil {
		return fmt.Errorf("backup-fetch: %w", err)
	}
	start := time.Now()
	if err := a.fetchBackup(c, s, b, dir, tsMap); err != nil {
		return fmt.Errorf("backup-fetch: %w", err)
	}
	if err := restore.WriteRecoverySettings(dir, rs); err != nil {
		return fmt.Errorf("backup-fetch: write recovery settings: %w", err)
	}
	took := time.Since(start)
	mode := "disaster recovery: replays all archived WAL, then promotes"
	switch {
	case rs.Standby && rs.PrimaryConnInfo != "":
		mode = "hot standby: streams from the primary, falls back to the archive"
	case rs.Standby:
		mode = "standby fed from the archive"
	case rs.TargetTime != "" || rs.TargetLSN != "" || rs.TargetName != "" || rs.TargetXID != "":
		mode = "point-in-time recovery"
	}
	a.log.Info(fmt.Sprintf("restored %s into %s: %s in %s (%s/s); %s — start PostgreSQL on %s",
		b.Name, dir, progress.Bytes(b.Size), took.Round(time.Second/10), progress.Bytes(int64(float64(b.Size)/took.Seconds())), mode, dir),
		"backup", b.Name, "size", b.Size, "ms", took.Milliseconds())
	return nil
}

// fetchBackup restores b into dir, which must be empty or absent, with
// the command's --parallel and --verify (backup-fetch, and standby-rejoin
// when it re-bootstraps).
func (a *app) fetchBackup(c *cli.Context, s storage.Storage, b basebackup.Backup, dir string, tsMap map[string]string) error {
	return basebackup.Fetch(c.Context, s, b, dir, basebackup.FetchOptions{
		TablespaceMap: tsMap,
		Parallel:      c.Int("parallel"),
		Verify:        c.Bool("verify"),
		Progress:      a.newReporter(),
	})
}

// recoverySettings turns the flags into recovery settings and the target
// the chosen backup must end before.
func recoverySettings(c *cli.Context) (restore.RecoverySettings, basebackup.Target, error) {
	rs := restore.RecoverySettings{
		Standby:         c.Bool("standby") || c.String("primary-conninfo") != "",
		PrimaryConnInfo: c.String("primary-conninfo"),
		PrimarySlotName: c.String("primary-slot"),
		TargetTime:      c.String("target-time"),
		TargetLSN:       c.String("target-lsn"),
		TargetName:      c.String("target-name"),
		TargetXID:       c.String("target-xid"),
		TargetAction:    c.String("target-action"),
		TargetTimeline:  c.String("target-timeline"),
	}
	var t basebackup.Target
	if rs.TargetTime != "" {
		tt, err := parseTargetTime(rs.TargetTime)
		if err != nil {
			return rs, t, err
		}
		t.Time = tt
	}
	if rs.TargetLSN != "" {
		lsn, err := wal.ParseLSN(rs.TargetLSN)
		if err != nil {
			return rs, t, fmt.Errorf("--target-lsn: %w", err)
		}
		t.LSN = lsn
	}
	if rs.Standby && (rs.TargetTime != "" || rs.TargetLSN != "" || rs.TargetName != "" || rs.TargetXID != "") {
		return rs, t, errors.New("--standby follows the primary forever; a --target-… option makes a one-time recovery: choose one")
	}
	return rs, t, nil
}

var zoneSuffix = regexp.MustCompile(`(Z|[+-]\d\d(:?\d\d)?)$`)

// parseTargetTime accepts the timestamp forms PostgreSQL does, but only
// with an explicit zone: the server would read a bare time in its own
// TimeZone, which is easy to get wrong at 3 a.m.
func parseTargetTime(s string) (time.Time, error) { return parseZonedTime("--target-time", s) }

// parseZonedTime parses a time given to flag, which must carry its zone:
// a time without one would mean different moments on different hosts.
func parseZonedTime(flag, s string) (time.Time, error) {
	v := strings.TrimSpace(s)
	if !zoneSuffix.MatchString(v) {
		return time.Time{}, fmt.Errorf("%s %q: add the zone offset, e.g. '%s+00'", flag, s, v)
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999Z0700"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%s %q: use a time like '2026-11-22 03:00:00+00'", flag, s)
}

func tablespaceMap(pairs []string) (map[string]string, error) {
	m := map[string]string{}
	for _, p := range pairs {
		old, nw, ok := strings.Cut(p, "=")
		if !ok || !filepath.IsAbs(old) || !filepath.IsAbs(nw) {
			return nil, fmt.Errorf("--tablespace-map %q: want OLD=NEW, both absolute paths", p)
		}
		m[filepath.Clean(old)] = filepath.Clean(nw)
	}
	return m, nil
}

// hookCommand is a command line for a restored server's hooks
// (restore_command, archive_cleanup_command): this binary with the
// repository settings of this run, never credentials.
func (a *app) hookCommand(c *cli.Context, command string, hookArgs ...string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the walship binary for restore_command: %w", err)
	}
	parts := []string{hookArg(exe)}
	add := func(flag, value string) {
		if value != "" {
			parts = append(parts, "--"+flag, hookArg(value))
		}
	}
	if conf := c.String(flagConfig); conf != "" {
		if conf, err = filepath.Abs(conf); err != nil {
			return "", err
		}
		add(flagConfig, conf)
	}
	add(flagRepo, c.String(flagRepo))
	add(flagS3Endpoint, c.String(flagS3Endpoint))
	add(flagS3Region, c.String(flagS3Region))
	if c.Bool(flagS3PathStyle) {
		parts = append(parts, "--"+flagS3PathStyle)
	}
	if ca := c.String(flagS3CAFile); ca != "" {
		if ca, err = filepath.Abs(ca); err != nil {
			return "", err
		}
		add(flagS3CAFile, ca)
	}
	if c.Bool(flagS3AllowHTTP) {
		parts = append(parts, "--"+flagS3AllowHTTP)
	}
	// Key files by absolute path; keys themselves never go on a command
	// line (one set in the environment must be in the server's too).
	for _, flag := range []string{flagDecryptIdentityFile, flagEncryptPassphraseFile} {
		if p := c.String(flag); p != "" {
			if p, err = filepath.Abs(p); err != nil {
				return "", err
			}
			add(flag, p)
		}
	}
	if c.IsSet(flagCacheDir) {
		add(flagCacheDir, c.String(flagCacheDir))
	}
	return strings.Join(append(append(parts, command), hookArgs...), " "), nil
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:=@+,-]+$`)

// hookArg quotes s as one argument of a command PostgreSQL runs: for the
// shell, and with % doubled, since PostgreSQL replaces %f, %p, %r and %%
// in restore_command and archive_cleanup_command (and from version 16
// refuses any other % sequence), so a % in a path or URL would otherwise
// change it or stop recovery.
func hookArg(s string) string { return strings.ReplaceAll(shellQuote(s), "%", "%%") }

// shellQuote quotes s for /bin/sh, which runs restore_command.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
