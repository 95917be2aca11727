package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/progress"
	"github.com/walship/walship/storage"
)

// uploader archives the files in the spool's ready/ directory, oldest
// first, through archive.Push — the path wal-push takes — and removes
// each once it is stored.
type uploader struct {
	s     storage.Storage
	sp    *spool
	o     Options
	log   *slog.Logger
	board *statusBoard
	wake  chan struct{}

	mu       sync.Mutex
	finished bool // stop once ready/ is empty
}

func newUploader(s storage.Storage, sp *spool, o Options, log *slog.Logger, board *statusBoard) *uploader {
	return &uploader{s: s, sp: sp, o: o, log: log, board: board, wake: make(chan struct{}, 1)}
}

// kick tells the uploader there is something new.
func (u *uploader) kick() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// finish makes run return once ready/ is empty (or on its next failure).
func (u *uploader) finish() {
	u.mu.Lock()
	u.finished = true
	u.mu.Unlock()
	u.kick()
}

func (u *uploader) isFinished() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.finished
}

// run archives until ctx ends, or until finish was called and nothing is
// left.
func (u *uploader) run(ctx context.Context) {
	retry := 10 * time.Second
	for {
		err := u.drain(ctx)
		if ctx.Err() != nil || u.isFinished() {
			return
		}
		wait := time.Minute
		if err != nil {
			u.log.Error(fmt.Sprintf("archiving streamed WAL failed, trying again in %v: %v", retry, err))
			wait = retry
		}
		select {
		case <-ctx.Done():
			return
		case <-u.wake:
		case <-time.After(wait):
		}
	}
}

// drain archives everything in ready/.
func (u *uploader) drain(ctx context.Context) error {
	for {
		names, err := u.sp.readyFiles()
		if err != nil {
			return err
		}
		u.board.update(func(s *Status) { s.Pending = len(names) })
		if len(names) == 0 {
			return nil
		}
		for _, name := range names {
			if err := u.push(ctx, name); err != nil {
				return err
			}
			u.board.update(func(s *Status) {
				s.Pending--
				if !isPartialName(name) {
					s.Archived = name
				}
			})
			// The status file shows progress at once, not at the
			// receiver's next report.
			u.board.write(u.sp.path(statusName), u.sp.modes)
		}
	}
}

func (u *uploader) push(ctx context.Context, name string) error {
	path := filepath.Join(u.sp.path(readyDir), name)
	res, err := archive.Push(ctx, u.s, path, archive.PushOptions{Codec: u.o.Codec, Repo: u.o.Repo, CacheDir: u.o.CacheDir, Logger: u.log})
	switch {
	case err == nil:
		verb := "archived"
		if res.AlreadyArchived {
			verb = "already archived"
		}
		u.log.Info(fmt.Sprintf("%s streamed %s: %s → %s %s in %v", verb, name, progress.Bytes(res.Size), progress.Bytes(res.Stored), res.Codec, res.Duration.Round(time.Millisecond)),
			"file", name, "size", res.Size, "stored", res.Stored)
	case errors.Is(err, archive.ErrConflict) && isPartialName(name):
		// The last segment of an ended timeline: the promoted server
		// archives its own copy, whose bytes after the switch point may
		// differ. Everything before the switch point is in the new
		// timeline's segment as well.
		u.log.Info(fmt.Sprintf("%s is archived already with other bytes after the switch point; keeping that copy", name), "file", name)
	default:
		return fmt.Errorf("archive %s: %w", name, err)
	}
	if u.o.PartialInterval > 0 && !strings.HasSuffix(name, ".history") {
		// The segment (or the .partial that ends its timeline) is
		// archived: its snapshots are no longer needed.
		if err := dropPartials(ctx, u.s, name[:24], allSnapshots); err != nil {
			u.log.Warn(fmt.Sprintf("removing the snapshots of %s: %v", name[:24], err))
		}
	}
	return u.sp.remove(filepath.Join(readyDir, name))
}
