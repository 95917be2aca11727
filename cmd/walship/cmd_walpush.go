package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/pgperm"
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
one pushed; markers older than an hour are not trusted).

Fencing: a segment of timeline T holding WAL past the point where a newer
timeline in the archive forked from T (its .history file says so) is
refused — the server is an old primary that kept running after a
failover. wal-push then logs "this server was superseded by timeline N at
LSN …", exits 1 on every retry, and runs --fence-command once. Whether a
newer timeline exists is asked at most once per --fence-check-interval.`,
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
	if c.Duration(flagFenceCheckInterval) < 0 {
		return usageError("--%s must not be negative (0 checks on every push)", flagFenceCheckInterval)
	}
	// One fence for this push and those pushed ahead: they share its
	// request.
	o.Fence = archive.NewFence(archive.FenceOptions{CacheDir: o.CacheDir, Repo: o.Repo, Interval: c.Duration(flagFenceCheckInterval)})
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
	var sup *archive.SupersededError
	if errors.As(err, &sup) {
		a.runFenceCommand(c, o.DataDir, sup)
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

// Fencing settings, global so that wal-push and backup-push share them
// (and the config file can hold them).
const (
	flagFenceCommand       = "fence-command"
	flagFenceCheckInterval = "fence-check-interval"
)

func fenceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagFenceCommand, EnvVars: []string{"WALSHIP_FENCE_COMMAND"}, Usage: "shell `COMMAND` run once (per data directory and timeline) when wal-push or backup-push finds this server superseded by a newer timeline, to fence it (stop it, cut it off); it gets WALSHIP_FENCED_TIMELINE, WALSHIP_FENCE_LSN, WALSHIP_NEW_TIMELINE and PGDATA"},
		&cli.DurationFlag{Name: flagFenceCheckInterval, EnvVars: []string{"WALSHIP_FENCE_CHECK_INTERVAL"}, Value: archive.DefaultFenceInterval, Usage: "how long wal-push trusts that no newer timeline exists before asking the archive again (0: on every push)"},
	}
}

// fenceCommandTimeout bounds --fence-command: PostgreSQL waits for
// wal-push.
const fenceCommandTimeout = time.Minute

// fenceMarkerPrefix names the marker, in the data directory, recording
// that --fence-command ran for a timeline. The pgsql_tmp prefix keeps it
// out of base backups and pg_rewind.
const fenceMarkerPrefix = "pgsql_tmp_walship_fenced_"

// runFenceCommand runs --fence-command for the superseded timeline of
// the server with data directory dataDir, once: a marker created before
// it runs records that it did. Its outcome is logged; it never changes
// the command's own result, which is the refusal.
func (a *app) runFenceCommand(c *cli.Context, dataDir string, sup *archive.SupersededError) {
	command := strings.TrimSpace(c.String(flagFenceCommand))
	if command == "" {
		return
	}
	if dataDir == "" {
		a.log.Error("--fence-command not run: the server's data directory is not known, so running it only once cannot be ensured; set --pgdata (or PGDATA)")
		return
	}
	marker := filepath.Join(dataDir, fmt.Sprintf("%s%08X", fenceMarkerPrefix, uint32(sup.Timeline)))
	f, err := pgperm.Of(dataDir).OpenFile(marker, os.O_WRONLY|os.O_EXCL)
	if errors.Is(err, os.ErrExist) {
		a.log.Info(fmt.Sprintf("--fence-command already ran for timeline %d (remove %s to run it again)", sup.Timeline, marker))
		return
	}
	if err != nil {
		a.log.Error(fmt.Sprintf("--fence-command not run: cannot record that it ran: %v", err))
		return
	}
	fmt.Fprintf(f, "%s: %s\n", time.Now().UTC().Format(time.RFC3339), sup)
	f.Close()

	ctx, cancel := context.WithTimeout(c.Context, fenceCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Dir = dataDir
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("WALSHIP_FENCED_TIMELINE=%d", sup.Timeline),
		"WALSHIP_FENCE_LSN="+sup.SwitchPoint.String(),
		fmt.Sprintf("WALSHIP_NEW_TIMELINE=%d", sup.NewTimeline),
		"PGDATA="+dataDir)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so that a timeout ends what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	output := strings.TrimSpace(out.String())
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		a.log.Error(fmt.Sprintf("--fence-command for timeline %d killed after %v", sup.Timeline, fenceCommandTimeout), "output", output)
	case err != nil:
		a.log.Error(fmt.Sprintf("--fence-command for timeline %d failed after %v: %v", sup.Timeline, took, err), "output", output)
	default:
		a.log.Info(fmt.Sprintf("--fence-command for timeline %d ran in %v", sup.Timeline, took), "output", output)
	}
}

// limitedBuffer keeps the first 64 KB written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
