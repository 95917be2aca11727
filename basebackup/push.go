package basebackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/pgrepl"
	"github.com/walship/walship/progress"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// PushOptions configures Push.
type PushOptions struct {
	ConnInfo string // libpq conninfo of the server to back up; "" = libpq environment
	Codec    codec.Codec
	Repo     string // repository URL, for the identity cache and messages
	CacheDir string
	// WALTimeout bounds the wait for the backup's last WAL segment to be
	// archived (from a standby it is archived when the primary finishes
	// it).
	WALTimeout time.Duration
	Progress   progress.Reporter
	Logger     *slog.Logger
	// Fence refuses a backup of a server whose timeline a newer one in
	// the archive superseded; nil asks the archive each time.
	Fence *archive.Fence
}

// ErrWALTimeout reports that the WAL a backup needs did not reach the
// archive in time; the backup is then not made visible.
var ErrWALTimeout = errors.New("WAL needed by the backup is not in the archive")

// Push takes a base backup of the server at o.ConnInfo into s and returns
// its metadata. It works against a primary or a standby. The backup is
// visible only when Push returns nil.
func Push(ctx context.Context, s storage.Storage, o PushOptions) (Backup, error) {
	now := time.Now
	rep := progress.Or(o.Progress)
	conn, err := pgrepl.Connect(ctx, o.ConnInfo)
	if err != nil {
		return Backup{}, err
	}
	defer conn.Close(context.Background())
	version, err := pgrepl.ServerVersion(conn)
	if err != nil {
		return Backup{}, err
	}
	if version < 130000 {
		return Backup{}, fmt.Errorf("PostgreSQL %d is not supported: walship backs up PostgreSQL 13 and later", version/10000)
	}
	sys, err := pgrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return Backup{}, err
	}
	segSize, err := pgrepl.SegmentSize(ctx, conn)
	if err != nil {
		return Backup{}, err
	}
	fence := o.Fence
	if fence == nil {
		fence = archive.NewFence(archive.FenceOptions{CacheDir: o.CacheDir, Repo: o.Repo})
	}
	// Before anything is stored: an old primary that kept running
	// after a failover has written past the fork.
	if err := checkFence(ctx, s, fence, sys.SystemID, sys.Timeline, sys.XLogPos); err != nil {
		return Backup{}, err
	}
	id, err := archive.EnsureIdentity(ctx, s, o.Repo, o.CacheDir, archive.Identity{
		SystemID: sys.SystemID, SegmentSize: segSize, PGVersion: version / 10000, Created: now().UTC(),
	})
	if err != nil {
		return Backup{}, err
	}
	if id.SystemID != sys.SystemID || id.SegmentSize != segSize {
		return Backup{}, fmt.Errorf("%w: the server is database system %d with %d-byte WAL segments, but %s holds WAL of system %d with %d-byte segments: give each cluster its own repository",
			archive.ErrForeign, sys.SystemID, segSize, s, id.SystemID, id.SegmentSize)
	}

	start := now()
	b := Backup{
		Name:        newName(start),
		StartTime:   start.UTC(),
		PGVersion:   version,
		SystemID:    strconv.FormatUint(sys.SystemID, 10),
		SegmentSize: id.SegmentSize,
		Codec:       o.Codec.Name(),
	}
	b.Label = "walship " + b.Name
	var stored []string // keys written, removed again on failure
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, key := range stored {
			s.Delete(ctx, key)
		}
	}

	put := func(name string, oid uint32, r io.Reader) (File, error) {
		key := b.prefix() + name + o.Codec.Ext()
		d, n, err := archive.PutStream(ctx, s, key, r, o.Codec)
		if err != nil {
			return File{}, fmt.Errorf("store %s: %w", key, err)
		}
		stored = append(stored, key)
		return File{Key: name + o.Codec.Ext(), TablespaceOID: oid, Digest: d, StoredSize: n}, nil
	}
	var total int64
	var done int64
	startPos, endPos, err := Run(ctx, conn, version, Options{
		// walship waits for the WAL itself, bounded by WALTimeout: the
		// server would wait forever on a failing archive_command.
		Label: b.Label, Fast: true, Progress: true, Manifest: true, Wait: false,
	}, Handler{
		Started: func(st Start) error {
			// Retention reads the start record to keep the WAL this
			// backup needs while it runs.
			started := b
			started.Timeline, started.StartLSN = st.Timeline, st.LSN
			started.StartWAL = wal.SegmentFileName(st.Timeline, wal.LSNToSegNo(st.LSN, b.SegmentSize), b.SegmentSize)
			key := b.prefix() + startedName
			if err := putRecord(ctx, s, key, started); err != nil {
				return fmt.Errorf("store %s: %w", key, err)
			}
			stored = append(stored, key)
			for _, ts := range st.Tablespaces {
				if ts.Size > 0 {
					total += ts.Size
				}
				b.Tablespaces = append(b.Tablespaces, ts)
			}
			rep.Start("backup-push "+b.Name, total)
			return nil
		},
		Archive: func(ts Tablespace, r io.Reader) error {
			name := "base.tar"
			if ts.OID != 0 {
				name = strconv.FormatUint(uint64(ts.OID), 10) + ".tar"
			}
			f, err := put(name, ts.OID, r)
			if err != nil {
				return err
			}
			b.Files = append(b.Files, f)
			return nil
		},
		Manifest: func(r io.Reader) error {
			f, err := put("backup_manifest", 0, r)
			if err != nil {
				return err
			}
			b.Manifest = &f
			return nil
		},
		Progress: func(n int64) {
			rep.Add(n - done)
			done = n
		},
	})
	rep.Done()
	if err != nil {
		cleanup()
		return Backup{}, fmt.Errorf("base backup: %w", err)
	}
	b.Timeline, b.StartLSN = startPos.Timeline, startPos.LSN
	b.StopTimeline, b.StopLSN = endPos.Timeline, endPos.LSN
	b.StartWAL = wal.SegmentFileName(b.Timeline, wal.LSNToSegNo(b.StartLSN, b.SegmentSize), b.SegmentSize)
	// The backup ends in the segment holding the byte before its end LSN,
	// as pg_backup_stop computes it.
	b.StopWAL = wal.SegmentFileName(b.StopTimeline, wal.LSNToSegNo(b.StopLSN-1, b.SegmentSize), b.SegmentSize)
	for _, f := range append(b.Files, *b.Manifest) {
		b.Size += f.Size
		b.StoredSize += f.StoredSize
	}
	// A failover while the backup ran.
	if err := checkFence(ctx, s, fence, sys.SystemID, b.StopTimeline, b.StopLSN); err != nil {
		cleanup()
		return Backup{}, err
	}
	if err := waitWAL(ctx, s, b.StopWAL, o); err != nil {
		cleanup()
		return Backup{}, err
	}
	b.FinishTime = now().UTC()
	if err := putMeta(ctx, s, b); err != nil {
		cleanup()
		return Backup{}, fmt.Errorf("record backup %s: %w", b.Name, err)
	}
	return b, nil
}

// checkFence refuses a backup needing WAL of timeline tli up to end when
// a newer timeline in the archive left tli before end.
func checkFence(ctx context.Context, s storage.Storage, fence *archive.Fence, sysID uint64, tli wal.TimeLineID, end wal.LSN) error {
	err := fence.Check(ctx, s, sysID, tli, end)
	if errors.Is(err, archive.ErrSuperseded) {
		return fmt.Errorf("refusing to back up timeline %d at %s: %w", tli, end, err)
	}
	if err != nil {
		return fmt.Errorf("check whether a newer timeline superseded timeline %d: %w", tli, err)
	}
	return nil
}

// waitWAL waits until WAL file name is in the archive.
func waitWAL(ctx context.Context, s storage.Storage, name string, o PushOptions) error {
	timeout := o.WALTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	deadline := time.Now().Add(timeout)
	logged := false
	for delay := 50 * time.Millisecond; ; delay = min(delay*3/2, time.Second) {
		// Without s3:ListBucket (a pushing host under least privilege)
		// this asks for the segment's key under each codec instead.
		ok, err := archive.WALArchived(ctx, s, name, o.Codec)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s did not arrive within %v; check archive_command on the primary (pg_stat_archiver) and that this host may read wal/ in the archive (s3:GetObject), or raise --wal-timeout", ErrWALTimeout, name, timeout)
		}
		if !logged && o.Logger != nil {
			o.Logger.Info(fmt.Sprintf("waiting for %s, the last WAL segment of the backup, to be archived", name))
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}
