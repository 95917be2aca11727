// Package stream owns wal-stream: a physical replication client, like
// pg_receivewal, that writes the WAL it receives into a local spool and
// archives each completed segment through the same path as wal-push
// (compression, checksum, no overwrite), so that wal-fetch, backup-fetch
// and standbys use it like any archived WAL.
//
// Where it starts (the first connection): after the newest segment in the
// spool (or at the start of a .partial one there) or after the newest
// segment in the archive, whichever is later; on an empty archive at the
// replication slot's restart position (PostgreSQL 15+), else at the
// server's current position, rounded down to a segment start. After a
// reconnect it goes on where it stopped, at the start of the segment it
// was receiving. A timeline switch upstream (a promotion) ends the old
// timeline's stream: its last segment is archived as .partial, the new
// timeline's history file is archived, and streaming goes on on the new
// timeline, as pg_receivewal does.
//
// The server is told a position is flushed only once it is durable in the
// spool; with Synchronous, after every message, so wal-stream can be a
// synchronous standby (synchronous_standby_names = 'walship').
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/pgrepl"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Options configures Run.
type Options struct {
	ConnInfo       string        // libpq conninfo of the server to stream from; "" = libpq environment
	Slot           string        // physical replication slot; "" streams without one
	CreateSlot     bool          // create Slot if it is missing
	Spool          string        // local directory for the segment being received
	Synchronous    bool          // fsync and report after every message
	StatusInterval time.Duration // how often to report positions to the server; 0: 10s
	MetricsListen  string        // serve Prometheus metrics at this address; "": no
	// PartialInterval, when not 0, stores a snapshot of the segment being
	// received in the archive at this interval (see archive.PartialPrefix).
	PartialInterval time.Duration
	Codec           codec.Codec
	Repo            string // repository URL, for the identity cache and messages
	CacheDir        string
	Logger          *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts; 0: 1s and 30s.
	MinBackoff, MaxBackoff time.Duration
}

// ErrFatal matches errors that retrying cannot fix: wal-stream stops with
// them instead of reconnecting.
var ErrFatal = errors.New("giving up")

func fatal(err error) error { return fmt.Errorf("%w: %w", ErrFatal, err) }

// position is a place in the WAL of one timeline.
type position struct {
	tli wal.TimeLineID
	lsn wal.LSN
}

// streamer is one Run.
type streamer struct {
	s       storage.Storage
	o       Options
	log     *slog.Logger
	sp      *spool
	board   *statusBoard
	up      *uploader
	snap    *snapshotter // nil without PartialInterval
	segSize int64
	pos     position // where the next session starts; zero before the first
	slotOK  bool     // the slot was created or found
}

// Run streams until ctx ends (then it returns nil once the data received
// is durable in the spool) or a fatal error.
func Run(ctx context.Context, s storage.Storage, o Options) error {
	if o.StatusInterval <= 0 {
		o.StatusInterval = 10 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.Slot != "" {
		if _, err := pgrepl.StartReplicationCommand(o.Slot, 0, 0); err != nil {
			return fatal(err)
		}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sp, err := openSpool(o.Spool)
	if err != nil {
		return fatal(err)
	}
	defer sp.close()
	st := &streamer{s: s, o: o, log: log, sp: sp, board: &statusBoard{}}
	st.board.update(func(s *Status) { s.PID = os.Getpid(); s.State = "connecting" })

	if o.MetricsListen != "" {
		ln, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			return fatal(fmt.Errorf("--metrics-listen: %w", err))
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", st.board)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}

	// Uploads run beside the stream and outlive its reconnections; at
	// the end they get a moment to finish the file in hand.
	upCtx, stopUploads := context.WithCancel(context.WithoutCancel(ctx))
	st.up = newUploader(s, sp, o, log, st.board)
	upDone := make(chan struct{})
	go func() { defer close(upDone); st.up.run(upCtx) }()
	defer func() {
		st.up.finish()
		select {
		case <-upDone:
		case <-time.After(30 * time.Second):
			log.Warn("stopping with segments not archived yet; the next start archives them")
		}
		stopUploads()
		<-upDone
		st.board.update(func(s *Status) { s.State = "stopped" })
		st.board.write(sp.path(statusName), sp.modes)
	}()

	if o.PartialInterval > 0 {
		st.snap = newSnapshotter(s, o, log)
		snapCtx, stopSnaps := context.WithCancel(context.WithoutCancel(ctx))
		snapDone := make(chan struct{})
		go func() { defer close(snapDone); st.snap.run(snapCtx) }()
		defer func() { stopSnaps(); <-snapDone }()
	}

	backoff := o.MinBackoff
	for {
		began := time.Now()
		err := st.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrFatal) {
			return err
		}
		st.board.update(func(s *Status) { s.State = "connecting"; s.LastError = err.Error(); s.Reconnects++ })
		st.board.write(sp.path(statusName), sp.modes)
		if time.Since(began) > time.Minute {
			backoff = o.MinBackoff
		}
		log.Warn(fmt.Sprintf("streaming interrupted, reconnecting in %v: %v", backoff, err), "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, o.MaxBackoff)
	}
}

// session is one replication connection, from connecting to the error
// that ends it.
func (st *streamer) session(ctx context.Context) error {
	conn, err := pgrepl.Connect(ctx, st.o.ConnInfo)
	if err != nil {
		return classify(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	server := conn.Conn().RemoteAddr().String()
	version, err := pgrepl.ServerVersion(conn)
	if err != nil {
		return fatal(err)
	}
	sys, err := pgrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return classify(err)
	}
	segSize, err := pgrepl.SegmentSize(ctx, conn)
	if err != nil {
		return classify(err)
	}
	id, err := archive.EnsureIdentity(ctx, st.s, st.o.Repo, st.o.CacheDir, archive.Identity{
		SystemID: sys.SystemID, SegmentSize: segSize, PGVersion: version / 10000, Created: time.Now().UTC(),
	})
	if err != nil {
		return err
	}
	if id.SystemID != sys.SystemID || id.SegmentSize != segSize {
		return fatal(fmt.Errorf("%w: the server is database system %d with %d-byte WAL segments, but %s holds WAL of system %d with %d-byte segments: give each cluster its own repository",
			archive.ErrForeign, sys.SystemID, segSize, st.s, id.SystemID, id.SegmentSize))
	}
	st.segSize = segSize

	if st.o.Slot != "" && !st.slotOK {
		if err := st.ensureSlot(ctx, conn, version); err != nil {
			return err
		}
		st.slotOK = true
	}
	// The server's history: which timeline wrote which part of the WAL
	// it serves.
	var history []wal.HistoryEntry
	if sys.Timeline > 1 {
		_, content, err := pgrepl.TimelineHistory(ctx, conn, sys.Timeline)
		if err != nil {
			return classify(err)
		}
		if history, err = wal.ParseHistory(content); err != nil {
			return fatal(fmt.Errorf("timeline history from %s: %w", server, err))
		}
	}
	if st.pos.lsn == 0 {
		pos, err := st.startPosition(ctx, conn, sys, version, history)
		if err != nil {
			return err
		}
		if err := st.sp.recover(pos.lsn, segSize); err != nil {
			return fatal(err)
		}
		st.up.kick()
		st.pos = pos
	}
	if st.pos.tli > sys.Timeline {
		return fatal(fmt.Errorf("the server %s is on timeline %d, but WAL of timeline %d was already received: it is not the newest primary (was it superseded by a promotion?)", server, sys.Timeline, st.pos.tli))
	}
	if st.pos.tli < sys.Timeline {
		// Follow the server's history from where the last timeline
		// received ends: the server streams the old timeline up to its
		// switch point, then ends it.
		st.pos.tli = wal.TimelineAt(history, sys.Timeline, st.pos.lsn)
	}
	st.log.Info(fmt.Sprintf("streaming from %s at %s on timeline %d into %s", server, st.pos.lsn, st.pos.tli, st.s),
		"server", server, "start_lsn", st.pos.lsn.String(), "timeline", st.pos.tli)
	st.board.update(func(s *Status) { s.Server = server })

	for {
		err := pgrepl.StartReplication(ctx, conn, st.o.Slot, st.pos.lsn, st.pos.tli)
		var ended *pgrepl.TimelineEndedError
		if errors.As(err, &ended) {
			// Nothing left on this timeline: on to the next one.
			if err := st.switchTimeline(ctx, conn, ended.TimelineEnd); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return classify(err)
		}
		st.board.update(func(s *Status) { s.State = "streaming"; s.Timeline = st.pos.tli; s.LastError = "" })
		end, err := st.receive(ctx, conn)
		if err != nil {
			return err
		}
		if err := st.switchTimeline(ctx, conn, end); err != nil {
			return err
		}
	}
}

// ensureSlot checks (or, with CreateSlot, creates) the replication slot.
func (st *streamer) ensureSlot(ctx context.Context, conn *pgconn.PgConn, version int) error {
	if st.o.CreateSlot {
		created, err := pgrepl.CreatePhysicalSlot(ctx, conn, st.o.Slot)
		if err != nil {
			return classify(err)
		}
		if created {
			st.log.Info(fmt.Sprintf("created physical replication slot %s", st.o.Slot))
		}
		return nil
	}
	if version < 150000 {
		return nil // START_REPLICATION says if it is missing
	}
	slot, err := pgrepl.ReadReplicationSlot(ctx, conn, st.o.Slot)
	if err != nil {
		return classify(err)
	}
	if !slot.Exists {
		return fatal(fmt.Errorf("replication slot %q does not exist: create it (--create-slot, or SELECT pg_create_physical_replication_slot('%s', true))", st.o.Slot, st.o.Slot))
	}
	return nil
}

// startPosition decides where the first session starts.
func (st *streamer) startPosition(ctx context.Context, conn *pgconn.PgConn, sys pgrepl.SystemInfo, version int, history []wal.HistoryEntry) (position, error) {
	var best position
	consider := func(p position, why string) {
		if p.lsn > best.lsn || p.lsn == best.lsn && p.tli > best.tli {
			best = p
			st.log.Debug("start candidate", "lsn", p.lsn.String(), "timeline", p.tli, "from", why)
		}
	}
	complete, partial, err := st.sp.contents()
	if err != nil {
		return position{}, fatal(err)
	}
	for _, fn := range complete {
		if lsn, err := fn.StartLSN(st.segSize); err == nil {
			consider(position{fn.TLI, lsn + wal.LSN(st.segSize)}, "spool")
		}
	}
	for _, fn := range partial {
		if lsn, err := fn.StartLSN(st.segSize); err == nil {
			consider(position{fn.TLI, lsn}, "spool .partial")
		}
	}
	// Only archived segments on the server's history count: a segment
	// the old primary wrote after a fork says nothing of where the
	// server's WAL is archived up to.
	newest, err := newestArchived(ctx, st.s, st.segSize, func(fn wal.FileName, lsn wal.LSN) bool {
		return wal.TimelineAt(history, sys.Timeline, lsn+wal.LSN(st.segSize)-1) == fn.TLI
	})
	if storage.IsPermanent(err) {
		// A pushing host under least privilege may not list (no
		// s3:ListBucket): the start then comes from the spool, the
		// slot or the server. Segments the archive holds already are
		// pushed again, which succeeds when they are identical.
		st.log.Warn(fmt.Sprintf("starting from the spool, the slot or the server's position, not after the newest archived segment: %v", err))
		err = nil
	}
	if err != nil {
		return position{}, err
	}
	if newest.lsn != 0 {
		consider(position{newest.tli, newest.lsn + wal.LSN(st.segSize)}, "archive")
	}
	if best.lsn != 0 {
		return best, nil
	}
	if st.o.Slot != "" && version >= 150000 {
		slot, err := pgrepl.ReadReplicationSlot(ctx, conn, st.o.Slot)
		if err != nil {
			return position{}, classify(err)
		}
		if slot.Exists && slot.RestartLSN != 0 {
			tli := slot.RestartTLI
			if tli == 0 {
				tli = sys.Timeline
			}
			return position{tli, segmentStartOf(slot.RestartLSN, st.segSize)}, nil
		}
	}
	return position{sys.Timeline, segmentStartOf(sys.XLogPos, st.segSize)}, nil
}

// newestArchived is the start of the newest complete segment in the
// archive for which onPath is true (the highest position, then the
// highest timeline).
func newestArchived(ctx context.Context, s storage.Storage, segSize int64, onPath func(wal.FileName, wal.LSN) bool) (position, error) {
	var best position
	err := s.List(ctx, archive.WALPrefix, func(o storage.ObjectInfo) error {
		base, _ := codec.Split(strings.TrimPrefix(o.Key, archive.WALPrefix))
		fn, err := wal.ParseFileName(base)
		if err != nil || fn.Kind != wal.KindSegment {
			return nil
		}
		lsn, err := fn.StartLSN(segSize)
		if err != nil || !onPath(fn, lsn) {
			return nil
		}
		if lsn > best.lsn || lsn == best.lsn && fn.TLI > best.tli {
			best = position{fn.TLI, lsn}
		}
		return nil
	})
	if err != nil {
		return position{}, fmt.Errorf("list %s: %w", s, err)
	}
	return best, nil
}

// receive writes the stream into the spool until the server ends it (a
// timeline switch: the returned TimelineEnd), an error, or ctx.
func (st *streamer) receive(ctx context.Context, conn *pgconn.PgConn) (pgrepl.TimelineEnd, error) {
	var cur *segmentFile
	written := st.pos.lsn // end of the data written
	flushed := st.pos.lsn // end of the data durable
	var serverEnd wal.LSN
	// stop ends the stream here: the segment in hand stays a .partial
	// and the next session starts at its beginning.
	stop := func(err error) (pgrepl.TimelineEnd, error) {
		if cur != nil {
			st.pos = position{cur.name.TLI, cur.start}
			if aerr := cur.abandon(); aerr != nil && err == nil {
				err = fatal(aerr)
			}
		} else {
			st.pos.lsn = written
		}
		return pgrepl.TimelineEnd{}, err
	}
	// Snapshots of the segment in hand, at most one per PartialInterval,
	// of durable bytes only.
	var snapAt time.Time
	var snapName string
	var snapBytes int64
	snapshot := func() {
		if st.snap == nil || cur == nil || time.Since(snapAt) < st.o.PartialInterval {
			return
		}
		if cur.name.String() == snapName && cur.synced <= snapBytes {
			return
		}
		st.snap.request(snapRequest{segment: cur.name.String(), path: cur.f.Name(), bytes: cur.synced})
		snapAt, snapName, snapBytes = time.Now(), cur.name.String(), cur.synced
	}
	report := func(reply bool) error {
		if cur != nil {
			if err := cur.sync(); err != nil {
				return fatal(err)
			}
		}
		flushed = written
		snapshot()
		st.board.update(func(s *Status) { s.Received, s.Flushed, s.ServerEnd = written, flushed, max(serverEnd, written) })
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		err := pgrepl.SendStandbyStatus(sctx, conn, pgrepl.StandbyStatus{Write: written, Flush: flushed, ReplyRequested: reply})
		if err != nil {
			return fmt.Errorf("send status to the server: %w", err)
		}
		return nil
	}
	nextStatus := time.Now().Add(st.o.StatusInterval)
	nextFile := time.Now()
	for {
		if time.Now().After(nextFile) {
			st.board.write(st.sp.path(statusName), st.sp.modes)
			nextFile = time.Now().Add(time.Second)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		msg, err := pgrepl.Receive(rctx, conn)
		cancel()
		switch {
		case ctx.Err() != nil:
			// Stopping: what was received becomes durable and the
			// server hears of it.
			rerr := report(false)
			if rerr != nil && errors.Is(rerr, ErrFatal) {
				return stop(rerr)
			}
			st.log.Info(fmt.Sprintf("stopping: WAL up to %s is in the spool", flushed), "flushed_lsn", flushed.String())
			return stop(nil)
		case err != nil && pgconn.Timeout(err):
			if err := report(false); err != nil {
				return stop(err)
			}
			nextStatus = time.Now().Add(st.o.StatusInterval)
			continue
		case err != nil:
			return stop(classify(err))
		}

		switch m := msg.(type) {
		case *pgrepl.Keepalive:
			serverEnd = max(serverEnd, m.End)
			if m.ReplyRequested {
				if err := report(false); err != nil {
					return stop(err)
				}
				nextStatus = time.Now().Add(st.o.StatusInterval)
			}
		case *pgrepl.XLogData:
			serverEnd = max(serverEnd, m.End)
			if m.Start != written {
				return stop(fmt.Errorf("the server sent WAL from %s, expected %s", m.Start, written))
			}
			data, at := m.Data, m.Start
			for len(data) > 0 {
				if cur == nil {
					cur, err = st.sp.openSegment(st.pos.tli, at, st.segSize)
					if err != nil {
						return stop(fatal(err))
					}
				}
				n := min(int64(len(data)), st.segSize-int64(at-cur.start))
				if err := cur.writeAt(data[:n], at); err != nil {
					return stop(fatal(err))
				}
				data, at = data[n:], at+wal.LSN(n)
				written = at
				if cur.written == st.segSize {
					if err := st.completed(cur); err != nil {
						return stop(fatal(err))
					}
					cur = nil
				}
			}
			if st.o.Synchronous {
				if err := report(false); err != nil {
					return stop(err)
				}
				nextStatus = time.Now().Add(st.o.StatusInterval)
			}
		case *pgrepl.CopyDone:
			end, err := pgrepl.EndOfStream(ctx, conn)
			if err != nil {
				return stop(classify(err))
			}
			if end.NextTLI == 0 {
				return stop(errors.New("the server ended the stream"))
			}
			if cur != nil {
				// The old timeline's last segment, complete up to the
				// switch point.
				if err := cur.abandon(); err != nil {
					return pgrepl.TimelineEnd{}, fatal(err)
				}
				if err := st.ready(cur.name.String() + partialExt); err != nil {
					return pgrepl.TimelineEnd{}, fatal(err)
				}
				cur = nil
			}
			st.board.update(func(s *Status) { s.Received, s.Flushed = written, written })
			return end, nil
		}
	}
}

// completed hands a full segment to the uploader.
func (st *streamer) completed(sf *segmentFile) error {
	if _, err := st.sp.complete(sf); err != nil {
		return err
	}
	return st.ready(sf.name.String())
}

// ready moves a file of the spool into ready/ for the uploader.
func (st *streamer) ready(name string) error {
	if err := st.sp.moveReady(name); err != nil {
		return err
	}
	st.up.kick()
	return nil
}

// switchTimeline archives the new timeline's history and moves on to it.
func (st *streamer) switchTimeline(ctx context.Context, conn *pgconn.PgConn, end pgrepl.TimelineEnd) error {
	name, content, err := pgrepl.TimelineHistory(ctx, conn, end.NextTLI)
	if err != nil {
		return classify(err)
	}
	if _, err := wal.ParseHistory(content); err != nil {
		return fatal(fmt.Errorf("%s from the server: %w", name, err))
	}
	if err := st.sp.writeReady(name, content); err != nil {
		return fatal(err)
	}
	st.up.kick()
	st.log.Info(fmt.Sprintf("timeline %d ended at %s; following timeline %d", st.pos.tli, end.NextStart, end.NextTLI),
		"timeline", end.NextTLI, "switch_lsn", end.NextStart.String())
	// Always restart at a segment's beginning, as pg_receivewal does:
	// the new timeline's file of the switch segment starts with the old
	// timeline's WAL.
	st.pos = position{end.NextTLI, segmentStartOf(end.NextStart, st.segSize)}
	return nil
}

// classify marks errors retrying cannot fix as fatal: bad settings,
// authentication, a missing slot, WAL the server no longer has.
func classify(err error) error {
	if err == nil || errors.Is(err, ErrFatal) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "58P01": // undefined_file: WAL removed
			return fatal(fmt.Errorf("%w (the server no longer has this WAL: the archive will have a gap from here; use a replication slot, --slot NAME --create-slot, and take a new base backup)", err))
		case pgErr.Code == "42704": // undefined_object: no such slot
			return fatal(fmt.Errorf("%w (create it: --create-slot)", err))
		case strings.HasPrefix(pgErr.Code, "28"), // authorization
			pgErr.Code == "42501", // insufficient_privilege
			pgErr.Code == "3D000", // invalid_catalog_name
			pgErr.Code == "42601", // syntax_error
			pgErr.Code == "0A000": // feature_not_supported
			return fatal(err)
		}
		return err
	}
	if strings.Contains(err.Error(), "invalid PostgreSQL connection settings") {
		return fatal(err)
	}
	return err
}

// readyDir is where complete files wait for the uploader.
const readyDir = "ready"

// moveReady moves name from the spool into ready/.
func (s *spool) moveReady(name string) error {
	if err := s.modes.MkdirAll(s.path(readyDir)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := os.Rename(s.path(name), filepath.Join(s.path(readyDir), name)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return s.syncDir()
}

// writeReady stores content as ready/name, durably.
func (s *spool) writeReady(name string, content []byte) error {
	dir := s.path(readyDir)
	if err := s.modes.MkdirAll(dir); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	tmp := filepath.Join(s.dir, name+".tmp")
	f, err := s.modes.OpenFile(tmp, os.O_TRUNC|os.O_WRONLY)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	_, err = f.Write(content)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("spool: %w", err)
	}
	return s.syncDir()
}

// readyFiles lists ready/ in archiving order: history files first, then
// by position in the WAL, then timeline.
func (s *spool) readyFiles() ([]string, error) {
	entries, err := os.ReadDir(s.path(readyDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var names []string
	for _, e := range entries {
		if _, err := wal.ParseFileName(e.Name()); err == nil && e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Slice(names, func(i, j int) bool { return wal.ArchiveLess(names[i], names[j]) })
	return names, nil
}
