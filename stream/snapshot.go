package stream

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/storage"
)

// snapshotter stores snapshots of the segment being received
// (--partial-interval) beside the stream, so a slow upload never delays
// the replies the server waits for. Only the newest request counts.
type snapshotter struct {
	s    storage.Storage
	o    Options
	log  *slog.Logger
	wake chan struct{}

	mu      sync.Mutex
	pending *snapRequest
}

type snapRequest struct {
	segment string // segment name
	path    string // its .partial file in the spool
	bytes   int64  // durable bytes to store
}

func newSnapshotter(s storage.Storage, o Options, log *slog.Logger) *snapshotter {
	return &snapshotter{s: s, o: o, log: log, wake: make(chan struct{}, 1)}
}

// request asks for a snapshot, replacing any not started yet.
func (sn *snapshotter) request(r snapRequest) {
	sn.mu.Lock()
	sn.pending = &r
	sn.mu.Unlock()
	select {
	case sn.wake <- struct{}{}:
	default:
	}
}

func (sn *snapshotter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sn.wake:
		}
		sn.mu.Lock()
		r := sn.pending
		sn.pending = nil
		sn.mu.Unlock()
		if r == nil {
			continue
		}
		if err := sn.store(ctx, *r); err != nil && ctx.Err() == nil {
			sn.log.Warn(fmt.Sprintf("storing a snapshot of %s failed: %v", r.segment, err), "file", r.segment)
		}
	}
}

func (sn *snapshotter) store(ctx context.Context, r snapRequest) error {
	f, err := os.Open(r.path)
	if os.IsNotExist(err) {
		return nil // completed meanwhile: the segment itself goes to the archive
	}
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	key, err := archive.PutPartial(ctx, sn.s, r.segment, f, r.bytes, sn.o.Codec)
	if err != nil {
		return err
	}
	sn.log.Debug("stored a snapshot", "key", key, "bytes", r.bytes, "ms", time.Since(start).Milliseconds())
	return dropPartials(ctx, sn.s, r.segment, r.bytes)
}

// dropPartials removes the snapshots of segment holding fewer than keep
// bytes; allSnapshots removes every one.
const allSnapshots = int64(1) << 62

func dropPartials(ctx context.Context, s storage.Storage, segment string, keep int64) error {
	snaps, err := archive.ListPartials(ctx, s, segment)
	if err != nil {
		return err
	}
	var keys []string
	for _, p := range snaps {
		if p.Bytes < keep {
			keys = append(keys, p.Key)
		}
	}
	return storage.DeleteAll(ctx, s, keys, nil)
}
