package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/pgrepl"
	"github.com/walship/walship/progress"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Mode is how a standby is promoted.
type Mode int

const (
	// Planned replays everything the archive and the upstream hold
	// first, and refuses to promote when that is not reached in time.
	Planned Mode = iota + 1
	// Forced promotes now and reports what is lost.
	Forced
)

func (m Mode) String() string {
	switch m {
	case Planned:
		return "planned"
	case Forced:
		return "forced"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// Options configures Promote.
type Options struct {
	Mode     Mode
	ConnInfo string // libpq connection string of the standby ("": the libpq environment)
	DataDir  string // the standby's data directory, on this host
	// Timeout bounds the wait of a planned promotion, and PostgreSQL's
	// promotion itself.
	Timeout time.Duration
	// Poll is the time between checks while waiting; 0 means 500 ms.
	Poll time.Duration
	// Push configures the push of the new timeline's history file; its
	// Codec is also the one tried first when reading the archive.
	Push   archive.PushOptions
	Logger *slog.Logger
}

// Result describes a completed promotion.
type Result struct {
	Mode             string         `json:"mode"`
	Timeline         wal.TimeLineID `json:"timeline"`
	PreviousTimeline wal.TimeLineID `json:"previous_timeline"`
	// ForkLSN is where the new timeline branched off: the end of the WAL
	// the standby replayed, as its new history file records it.
	ForkLSN wal.LSN `json:"fork_lsn"`
	// ArchiveEndLSN is the end of the last complete WAL record the
	// archive holds on the previous timeline; ForkLSN when it holds
	// nothing beyond the fork.
	ArchiveEndLSN  wal.LSN `json:"archive_end_lsn"`
	ArchiveEndFile string  `json:"archive_end_file,omitempty"` // the file it is in, when beyond the fork
	// Upstream is the server the standby streamed from (host:port), if it
	// did; UpstreamLSN its end of WAL on the previous timeline: asked
	// after the promotion when UpstreamReachable, else the last position
	// it reported to the standby.
	Upstream          string   `json:"upstream,omitempty"`
	UpstreamLSN       *wal.LSN `json:"upstream_lsn,omitempty"`
	UpstreamReachable bool     `json:"upstream_reachable,omitempty"`
	// LostBytes is the WAL beyond the fork that the archive or the
	// upstream hold: what the new timeline does not have.
	LostBytes   int64    `json:"lost_bytes"`
	HistoryFile string   `json:"history_file"` // archived
	WaitedMS    int64    `json:"waited_ms"`    // planned: waiting for the standby
	PromoteMS   int64    `json:"promote_ms"`   // pg_promote until out of recovery
	Warnings    []string `json:"warnings,omitempty"`
}

// Errors Promote can end with, for callers that map them to exit codes.
var (
	// ErrWrongServer: --pg, --pgdata and the archive do not belong
	// together.
	ErrWrongServer = errors.New("wrong server")
	// ErrNotStandby: the server is not in recovery.
	ErrNotStandby = errors.New("not a standby")
)

// NotReachedError is a planned promotion that did not happen: the standby
// did not replay everything within the timeout.
type NotReachedError struct {
	Waited time.Duration
	Gap    string // what the standby still lacks, in one clause
}

func (e *NotReachedError) Error() string {
	return fmt.Sprintf("not promoted: after %s %s; find out why in the standby's log (its restore_command, its connection to the upstream), or promote with --forced and accept the loss",
		e.Waited.Round(time.Second), e.Gap)
}

// Promote promotes the standby as o says and returns what happened.
func Promote(ctx context.Context, s storage.Storage, o Options) (Result, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Mode != Planned && o.Mode != Forced {
		return Result{}, fmt.Errorf("promotion mode %v: want planned or forced", o.Mode)
	}
	if o.Timeout <= 0 {
		return Result{}, fmt.Errorf("promotion timeout %v: want a positive duration", o.Timeout)
	}
	conn, err := connect(ctx, o.ConnInfo)
	if err != nil {
		return Result{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()

	srv, st, segSize, err := check(ctx, conn, s, o)
	if err != nil {
		return Result{}, err
	}
	view := newArchiveView(s, segSize, o.Push.Codec, o.DataDir)
	res := Result{Mode: o.Mode.String()}
	if o.Mode == Planned {
		start := time.Now()
		st, err = waitReplayed(ctx, conn, view, st, o, log)
		res.WaitedMS = time.Since(start).Milliseconds()
		if err != nil {
			return res, err
		}
		if r := st.Receiver; r != nil && r.Status == "streaming" {
			res.warn(log, fmt.Sprintf("the standby still streams from %s, which therefore still runs: stop it now, or whatever it accepts from here on is lost", hostPort(r)))
		}
		log.Info(fmt.Sprintf("the standby has replayed all WAL the archive holds%s (it is at %s); promoting", receivedClause(st), st.Replay))
	} else {
		release, err := holdFetch(o.DataDir, time.Now().Add(o.Timeout+time.Minute))
		if err != nil {
			return res, fmt.Errorf("forced promotion: cannot write %s into the data directory (run standby-promote as the server's OS user): %w", HoldFile, err)
		}
		defer release()
		log.Info(fmt.Sprintf("promoting now at replay position %s: wal-fetch hands the standby no further segment", st.Replay))
	}

	start := time.Now()
	if err := promote(ctx, conn, o.Timeout); err != nil {
		return res, err
	}
	res.PromoteMS = time.Since(start).Milliseconds()
	tli, err := currentTimeline(ctx, conn)
	if err != nil {
		return res, err
	}
	res.Timeline = tli
	res.HistoryFile = wal.HistoryFileName(tli)
	hist, err := readLocalHistory(o.DataDir, tli)
	if err != nil {
		return res, err
	}
	last := hist[len(hist)-1]
	res.PreviousTimeline, res.ForkLSN = last.TLI, last.SwitchPoint
	view.histories[tli] = hist
	log.Info(fmt.Sprintf("promoted to timeline %d in %s: timeline %d ends at %s", tli, time.Since(start).Round(time.Millisecond), last.TLI, last.SwitchPoint))

	pushed, err := archive.Push(ctx, s, filepath.Join(o.DataDir, "pg_wal", res.HistoryFile), o.Push)
	if err != nil {
		return res, fmt.Errorf("promoted to timeline %d, but archiving %s failed: %w", tli, res.HistoryFile, err)
	}
	if pushed.AlreadyArchived {
		log.Info(fmt.Sprintf("%s is in the archive (the server archived it first)", res.HistoryFile))
	} else {
		log.Info(fmt.Sprintf("archived %s", res.HistoryFile))
	}

	if err := res.measureLoss(ctx, view, st.Receiver, log); err != nil {
		return res, err
	}
	if o.Mode == Planned && res.LostBytes > 0 {
		res.warn(log, fmt.Sprintf("WAL of timeline %d beyond the fork reached the archive or the upstream during the promotion: the old primary was still writing", res.PreviousTimeline))
	}
	if srv.ArchiveMode == "off" {
		res.warn(log, fmt.Sprintf("archive_mode is off on the promoted server: WAL of timeline %d will not reach the archive; set archive_mode = on and archive_command = 'walship … wal-push %%p', then restart it", tli))
	}
	for t := res.PreviousTimeline + 1; t < tli; t++ {
		if h, found, err := view.history(ctx, t); err == nil && found && len(h) > 0 {
			e := h[len(h)-1]
			res.warn(log, fmt.Sprintf("the archive also holds timeline %d, which forked from timeline %d at %s and which this server did not follow: two servers of this cluster were promoted; only one may stay primary", t, e.TLI, e.SwitchPoint))
		}
	}
	return res, nil
}

func (r *Result) warn(log *slog.Logger, msg string) {
	r.Warnings = append(r.Warnings, msg)
	log.Warn(msg)
}

// check makes sure --pg, --pgdata and the archive belong together and the
// server is a standby; it returns the archive's segment size.
func check(ctx context.Context, conn *pgconn.PgConn, s storage.Storage, o Options) (server, standbyState, int64, error) {
	rows, err := query(ctx, conn, serverSQL)
	if err != nil {
		return server{}, standbyState{}, 0, fmt.Errorf("ask the standby about itself (connect as a superuser): %w", err)
	}
	srv, err := parseServer(rows)
	if err != nil {
		return server{}, standbyState{}, 0, err
	}
	if !sameDir(srv.DataDir, o.DataDir) {
		return server{}, standbyState{}, 0, fmt.Errorf("%w: --pg reaches the server of data directory %s, not of --pgdata %s: run standby-promote on the standby's host, with its data directory and a connection to it",
			ErrWrongServer, srv.DataDir, o.DataDir)
	}
	id, err := archive.LoadIdentity(ctx, s, o.Push.Repo, o.Push.CacheDir)
	if err != nil {
		return server{}, standbyState{}, 0, fmt.Errorf("read the archive's identity: %w", err)
	}
	if id.SystemID != srv.SystemID {
		return server{}, standbyState{}, 0, fmt.Errorf("%w: the archive holds WAL of cluster %d, the standby belongs to cluster %d: check --repo",
			ErrWrongServer, id.SystemID, srv.SystemID)
	}
	st, err := readState(ctx, conn)
	if err != nil {
		return server{}, standbyState{}, 0, err
	}
	if !st.InRecovery {
		return server{}, standbyState{}, 0, fmt.Errorf("%w: the server of %s is not in recovery: it is a primary already, there is nothing to promote", ErrNotStandby, o.DataDir)
	}
	return srv, st, id.SegmentSize, nil
}

func sameDir(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return ra == rb
}

// plannedTarget is what a planned promotion waited for.
type plannedTarget struct {
	Lineage lineage
	Archive lineageEnd
}

// waitReplayed polls the standby and the archive until the standby has
// replayed everything, or the timeout.
func waitReplayed(ctx context.Context, conn *pgconn.PgConn, view *archiveView, st standbyState, o Options, log *slog.Logger) (standbyState, error) {
	poll := o.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	start := time.Now()
	var logged time.Time
	for {
		t, err := archiveTarget(ctx, view, st)
		if err != nil {
			return st, err
		}
		gap := remaining(st, t)
		if gap == "" {
			return st, nil
		}
		if time.Since(start) >= o.Timeout {
			return st, &NotReachedError{Waited: time.Since(start), Gap: gap}
		}
		if time.Since(logged) >= 5*time.Second {
			log.Info("waiting for the standby: " + gap)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(poll):
		}
		if st, err = readState(ctx, conn); err != nil {
			return st, err
		}
		if !st.InRecovery {
			return st, fmt.Errorf("%w: the standby left recovery while walship waited for it: something else promoted it", ErrNotStandby)
		}
	}
}

// archiveTarget finds the timeline the standby follows (the newest in the
// archive it can reach) and what the archive holds on its way from the
// standby's replay position on.
func archiveTarget(ctx context.Context, view *archiveView, st standbyState) (plannedTarget, error) {
	// Timelines the standby has reached for sure; it may be further.
	hint := max(st.CheckpointTLI, st.MinRecoveryTL, 1)
	if st.Receiver != nil {
		hint = max(hint, st.Receiver.TLI)
	}
	newest, err := view.newestTimeline(ctx, hint)
	if err != nil {
		return plannedTarget{}, err
	}
	l := lineage{tli: hint}
	for n := newest; n > hint; n-- {
		hist, found, err := view.history(ctx, n)
		if err != nil {
			return plannedTarget{}, err
		}
		// Recovery follows timeline n only if the standby's timeline is
		// one of its ancestors and the standby has not gone past the
		// point where n branched off.
		if found && inHistory(hint, hist) && wal.TimelineAt(hist, n, st.Replay) >= hint {
			l = lineage{tli: n, hist: hist}
			break
		}
	}
	if l.tli == hint && hint > 1 {
		if l.hist, _, err = view.history(ctx, hint); err != nil {
			return plannedTarget{}, err
		}
	}
	end, err := view.lineageEnd(ctx, l, wal.LSNToSegNo(st.Replay, view.segSize))
	if err != nil {
		return plannedTarget{}, err
	}
	return plannedTarget{Lineage: l, Archive: end}, nil
}

func inHistory(tli wal.TimeLineID, hist []wal.HistoryEntry) bool {
	for _, h := range hist {
		if h.TLI == tli {
			return true
		}
	}
	return false
}

// remaining says what the standby has not replayed yet; "" when nothing.
func remaining(st standbyState, t plannedTarget) string {
	var gaps []string
	if t.Archive.Segment != "" && st.Replay < t.Archive.End {
		g := fmt.Sprintf("the standby has replayed WAL up to %s, but the archive holds WAL up to %s on timeline %d (%s, %s more)",
			st.Replay, t.Archive.End, t.Lineage.tli, t.Archive.Segment, progress.Bytes(int64(t.Archive.End-st.Replay)))
		if t.Archive.Missing != "" {
			g += fmt.Sprintf("; %s is missing from the archive, so the standby cannot get past it (walship wal-verify lists the gaps)", t.Archive.Missing)
		}
		gaps = append(gaps, g)
	}
	if st.Received > st.Replay {
		gaps = append(gaps, fmt.Sprintf("it received WAL up to %s by streaming but replayed only up to %s", st.Received, st.Replay))
	}
	if r := st.Receiver; r != nil && r.Status == "streaming" && r.Flushed < r.LatestEnd {
		gaps = append(gaps, fmt.Sprintf("it streams from %s, which has WAL up to %s, and received up to %s", hostPort(r), r.LatestEnd, r.Flushed))
	}
	if len(gaps) == 0 {
		return ""
	}
	if st.Paused {
		gaps = append(gaps, "replay is paused on the standby (SELECT pg_wal_replay_resume() resumes it)")
	}
	return strings.Join(gaps, "; ")
}

func receivedClause(st standbyState) string {
	if st.Received == 0 {
		return ""
	}
	return " and all it received by streaming"
}

func hostPort(r *receiver) string {
	if r.Port == 0 {
		return r.Host
	}
	return r.Host + ":" + strconv.Itoa(r.Port)
}

// promote runs pg_promote and waits until the server is out of recovery.
func promote(ctx context.Context, conn *pgconn.PgConn, timeout time.Duration) error {
	secs := max(int(timeout.Seconds()), 1)
	pctx, cancel := context.WithTimeout(ctx, timeout+queryTimeout)
	defer cancel()
	rows, err := queryNoTimeout(pctx, conn, fmt.Sprintf("SELECT pg_promote(true, %d)", secs))
	if err != nil {
		return fmt.Errorf("pg_promote: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 || string(rows[0][0]) != "t" {
		return fmt.Errorf("PostgreSQL did not finish the promotion within %s; it goes on: watch pg_is_in_recovery() and the server's log", timeout)
	}
	rows, err = query(ctx, conn, "SELECT pg_is_in_recovery()")
	if err != nil {
		return fmt.Errorf("after pg_promote: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 || string(rows[0][0]) != "f" {
		return fmt.Errorf("pg_promote returned, but the server is still in recovery: see its log")
	}
	return nil
}

// currentTimeline reads the timeline the server writes.
func currentTimeline(ctx context.Context, conn *pgconn.PgConn) (wal.TimeLineID, error) {
	rows, err := query(ctx, conn, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	if err != nil {
		return 0, fmt.Errorf("read the new timeline: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return 0, fmt.Errorf("read the new timeline: unexpected reply")
	}
	fn, err := wal.ParseFileName(string(rows[0][0]))
	if err != nil {
		return 0, fmt.Errorf("read the new timeline: %w", err)
	}
	return fn.TLI, nil
}

// readLocalHistory reads the history file the promotion wrote.
func readLocalHistory(dataDir string, tli wal.TimeLineID) ([]wal.HistoryEntry, error) {
	path := filepath.Join(dataDir, "pg_wal", wal.HistoryFileName(tli))
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("promoted to timeline %d, but cannot read its history file: %w", tli, err)
	}
	h, err := wal.ParseHistory(data)
	if err == nil {
		err = wal.CheckHistory(tli, h)
	}
	if err == nil && len(h) == 0 {
		err = fmt.Errorf("it is empty")
	}
	if err != nil {
		return nil, fmt.Errorf("promoted to timeline %d, but its history file %s: %w", tli, path, err)
	}
	return h, nil
}

// measureLoss fills in what the archive and the upstream hold of the
// previous timeline beyond the fork.
func (r *Result) measureLoss(ctx context.Context, view *archiveView, rc *receiver, log *slog.Logger) error {
	te, err := view.timelineEnd(ctx, r.PreviousTimeline, wal.LSNToSegNo(r.ForkLSN, view.segSize))
	if err != nil {
		return fmt.Errorf("promoted to timeline %d, but measuring the archive beyond the fork failed: %w", r.Timeline, err)
	}
	r.ArchiveEndLSN = r.ForkLSN
	if te.End > r.ForkLSN {
		r.ArchiveEndLSN, r.ArchiveEndFile = te.End, te.File
	}
	end := r.ArchiveEndLSN
	if rc != nil && rc.Host != "" {
		r.Upstream = hostPort(rc)
		lsn, reachable := upstreamEnd(ctx, rc, r.PreviousTimeline, log)
		r.UpstreamLSN, r.UpstreamReachable = &lsn, reachable
		end = max(end, lsn)
	}
	r.LostBytes = max(int64(end)-int64(r.ForkLSN), 0)
	return nil
}

// upstreamEnd asks the upstream for its end of WAL on timeline tli, over
// a replication connection like the standby's; when it cannot be asked,
// the position it last reported to the standby stands in.
func upstreamEnd(ctx context.Context, rc *receiver, tli wal.TimeLineID, log *slog.Logger) (wal.LSN, bool) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgrepl.Connect(ctx, upstreamConnInfo(rc))
	if err != nil {
		log.Info(fmt.Sprintf("the upstream %s cannot be reached (%v); using the end of WAL it last reported, %s", hostPort(rc), err, rc.LatestEnd))
		return rc.LatestEnd, false
	}
	defer conn.Close(ctx)
	sys, err := pgrepl.IdentifySystem(ctx, conn)
	if err != nil || sys.Timeline != tli {
		return rc.LatestEnd, false
	}
	return max(sys.XLogPos, rc.LatestEnd), true
}
