package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/wal"
)

// The tests of walship wal-stream: a primary (or standby) with
// archive_mode = off, so that whatever reaches the archive came through
// wal-stream, which runs as a service beside it, as the server's OS user.

// streamFlags are the flags every wal-stream of these tests runs with: a
// slot keeps the WAL while it is down or restarting.
var streamFlags = []string{"--slot", "walship", "--create-slot"}

// TestStreamOracle: walship wal-stream and Debian's pg_receivewal stream
// from the same primary under pgbench with segment switches; every
// complete segment wal-stream archived decompresses (with a zstd decoder
// of our own, not walship's) to exactly pg_receivewal's file of that name,
// and none that pg_receivewal completed is missing from the archive.
func TestStreamOracle(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { streamOracle(t, b) })
	}
}

func streamOracle(t *testing.T, b backend) {
	primary := streamPrimary(t, b, nil)
	primary.Psql(t, "SELECT pg_create_physical_replication_slot('other_slot', true)")
	oracle := pgtest.NewDir(t, "pg_receivewal")
	receivewal := startReceivewal(t, primary, oracle, "other_slot")
	ws := startStream(t, b, primary, pgtest.NewDir(t, "spool"), streamFlags...)
	primary.WaitFor(t, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ('walship', 'pg_receivewal')", "2", time.Minute)

	primary.Pgbench(t, "-i", "-s", "2", "-q")
	load := exec.Command(pgtest.ClientBin("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port()), "-U", "postgres", "-T", "4", "-c", "2", "postgres")
	load.Env = baseEnv()
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	switches := 0
	for running := true; running; {
		select {
		case err := <-loadDone:
			if err != nil {
				t.Fatalf("pgbench: %v", err)
			}
			running = false
		case <-time.After(600 * time.Millisecond):
			// Segments end by switches while pgbench writes too.
			primary.Psql(t, "SELECT pg_switch_wal()")
			switches++
		}
	}
	last := switchWAL(t, primary)
	t.Logf("%d switches under pgbench; last segment %s", switches, last)
	waitUntil(t, 2*time.Minute, "pg_receivewal completes "+last, func() bool {
		_, err := os.Stat(filepath.Join(oracle, last))
		return err == nil
	}, receivewal)
	ws.waitArchived(t, last)

	got := archivedSegments(t, b)
	if len(got) == 0 {
		t.Fatal("wal-stream archived no segment")
	}
	var want []string
	entries, err := os.ReadDir(oracle)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if segmentName.MatchString(e.Name()) {
			want = append(want, e.Name())
		}
	}
	archived := map[string]bool{}
	for _, name := range got {
		archived[name] = true
	}
	// Both started at the start of the segment the server was writing;
	// from wal-stream's first segment to the last switched one, every
	// segment pg_receivewal completed must be archived.
	for _, name := range want {
		if name >= got[0] && name <= last && !archived[name] {
			t.Errorf("pg_receivewal completed %s; wal-stream did not archive it (archived %s … %s)", name, got[0], got[len(got)-1])
		}
	}
	compared := 0
	for _, name := range got {
		oracleData, err := os.ReadFile(filepath.Join(oracle, name))
		if err != nil {
			t.Logf("%s is archived but pg_receivewal has no complete copy (%v): not compared", name, err)
			continue
		}
		data := storedWAL(t, b, name)
		if !bytes.Equal(data, oracleData) {
			t.Errorf("%s: archived %d bytes differ from pg_receivewal's %d bytes, first at offset %d", name, len(data), len(oracleData), firstDifference(data, oracleData))
			continue
		}
		compared++
	}
	if compared < 3 {
		t.Fatalf("only %d segments compared with pg_receivewal's (archived %v, pg_receivewal %v); want at least 3", compared, got, want)
	}
	t.Logf("%d segments identical to pg_receivewal's", compared)
	st := ws.waitStatus(t, 30*time.Second, "archived_segment "+last, func(st streamStatus) bool {
		return st.Archived >= last && st.Pending == 0
	})
	if st.State != "streaming" || st.Timeline != 1 || st.Flushed > st.ServerLSN || st.LagBytes != int64(st.ServerLSN-st.Flushed) || st.Flushed > st.Received {
		t.Errorf("inconsistent status: %+v", st)
	}
	if log := ws.logText(); !strings.Contains(log, "archived streamed 0000") {
		t.Errorf("the wal-stream log has no \"archived streamed 0000…\" line:\n%s", tail(log, 40))
	}
}

// TestStreamKill: wal-stream killed with SIGKILL in the middle of a
// segment (its .partial holds the WAL written last) and started again
// after more writes leaves no gap: every segment from the first archived
// to the last switched one is there, wal-verify agrees, and a disaster
// restore from the base backup taken before the kill plus the streamed
// WAL has every row committed on the primary, the last one included (so
// this covers a plain DR restore from streamed WAL under pgbench, too).
func TestStreamKill(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	primary := streamPrimary(t, b, nil)
	spool := pgtest.NewDir(t, "spool")
	first := startStream(t, b, primary, spool, streamFlags...)
	first.waitStreaming(t)
	primary.Psql(t, "CREATE TABLE feed (id int PRIMARY KEY); CREATE TABLE filler (v text)")
	primary.Pgbench(t, "-i", "-s", "2", "-q")
	// backup-push ends once its last segment is archived: with
	// archive_mode = off, only wal-stream can do that.
	backupPush(t, b, primary)
	primary.Pgbench(t, "-T", "2", "-c", "2")
	primary.Psql(t, "INSERT INTO feed SELECT g FROM generate_series(1, 100) g")

	// Kill it while the WAL just written sits in a .partial, well inside
	// its segment.
	var lsn wal.LSN
	for {
		lsn = currentLSN(t, primary)
		if off := wal.SegmentOffset(lsn, segSize16); off >= 64<<10 && off <= segSize16-64<<10 {
			break
		}
		primary.Psql(t, "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 100)")
	}
	waitUntil(t, time.Minute, fmt.Sprintf("wal-stream writes the WAL up to %s into a .partial", lsn), func() bool {
		return spoolHolds(spool, 1, lsn)
	}, first.service)
	first.kill(t)
	// Whatever the server wrote meanwhile, the kill left a segment
	// received in part: the .partial is there, the segment is not
	// archived.
	partials, _ := filepath.Glob(filepath.Join(spool, "*.partial"))
	if len(partials) != 1 {
		t.Fatalf("after the kill the spool holds %d .partial files (%v), want 1", len(partials), partials)
	}
	seg := strings.TrimSuffix(filepath.Base(partials[0]), ".partial")
	if b.exists(t, "wal/"+seg+".zst") {
		t.Fatalf("%s is archived although wal-stream was killed while receiving it", seg)
	}
	t.Logf("killed at %s, receiving %s", lsn, seg)

	// More writes while it is down, then more with it back.
	primary.Psql(t, "INSERT INTO feed SELECT g FROM generate_series(101, 200) g")
	primary.Pgbench(t, "-T", "2", "-c", "2")
	primary.Psql(t, "SELECT pg_switch_wal()")
	second := startStream(t, b, primary, spool, streamFlags...)
	for i := 0; i < 3; i++ {
		primary.Psql(t, fmt.Sprintf("INSERT INTO feed SELECT g FROM generate_series(%d, %d) g", 201+100*i, 300+100*i))
		primary.Psql(t, "SELECT pg_switch_wal()")
	}
	primary.Psql(t, "INSERT INTO feed VALUES (1000)") // the last row committed
	last := switchWAL(t, primary)
	second.waitArchived(t, last)

	segs := archivedSegments(t, b)
	if missing := missingSegments(t, b, segs[0], last); len(missing) > 0 {
		t.Fatalf("after the kill, segments between %s and %s are not archived: %v", segs[0], last, missing)
	}
	if segs[0] > seg {
		t.Fatalf("the first archived segment %s comes after %s, the one killed midway", segs[0], seg)
	}
	walship(t, t.TempDir(), b.env, append(b.args, "wal-verify")...).mustSucceed(t, "wal-verify after the kill")

	tables := append([]string{"feed"}, pgbenchTables...)
	want := primary.TableChecksums(t, "", tables...)
	restored := startRestored(t, b, 15, backupFetch(t, b, "LATEST"), nil)
	promoted(t, restored)
	if got := restored.Psql(t, "SELECT count(*) FROM feed WHERE id = 1000"); got != "1" {
		t.Fatal("the restore lacks the last row committed before the last segment switch")
	}
	if got := restored.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored tables differ from the primary's:\n got %v\nwant %v", got, want)
	}
}

// TestStreamServerRestart: the server wal-stream streams from goes down
// and comes back; wal-stream says it is reconnecting (status and log),
// reconnects by itself, and the segments written after the restart are
// archived with no gap.
func TestStreamServerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	primary := streamPrimary(t, b, nil)
	ws := startStream(t, b, primary, pgtest.NewDir(t, "spool"), streamFlags...)
	ws.waitStreaming(t)
	primary.Psql(t, "CREATE TABLE feed (id int); INSERT INTO feed VALUES (1)")
	before := switchWAL(t, primary)
	ws.waitArchived(t, before)

	primary.Stop(t)
	down := ws.waitStatus(t, time.Minute, "connecting, with a reconnect counted", func(st streamStatus) bool {
		return st.State == "connecting" && st.Reconnects >= 1
	})
	if down.LastError == "" {
		t.Errorf("while the server is down, the status has no last_error: %+v", down)
	}
	primary.Restart(t)
	ws.waitStatus(t, 2*time.Minute, "streaming again after the restart", func(st streamStatus) bool {
		return st.State == "streaming" && st.Reconnects >= 1
	})
	primary.WaitFor(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'", "1", time.Minute)
	if log := ws.logText(); !strings.Contains(log, "reconnecting") {
		t.Errorf("the wal-stream log does not mention reconnecting:\n%s", tail(log, 40))
	}

	for i := 2; i <= 3; i++ {
		primary.Psql(t, fmt.Sprintf("INSERT INTO feed VALUES (%d)", i))
		primary.Psql(t, "SELECT pg_switch_wal()")
	}
	primary.Psql(t, "INSERT INTO feed VALUES (4)")
	after := switchWAL(t, primary)
	ws.waitArchived(t, after)
	if missing := missingSegments(t, b, before, after); len(missing) > 0 {
		t.Fatalf("segments between %s (before the restart) and %s are not archived: %v", before, after, missing)
	}
	walship(t, t.TempDir(), b.env, append(b.args, "wal-verify")...).mustSucceed(t, "wal-verify after the restart")
	ws.waitStatus(t, 30*time.Second, "archived_segment "+after, func(st streamStatus) bool {
		return st.Archived == after && st.Pending == 0 && st.LastError == ""
	})
	ws.stop(t)
	if st, ok := ws.status(t); !ok || st.State != "stopped" {
		t.Errorf("after SIGTERM the status says %+v, want state stopped", st)
	}
}

// TestStreamPromotion: wal-stream moves from the primary to a hot
// standby of it (cascading), keeping its spool; the primary goes away and
// the standby is promoted: wal-stream follows it onto timeline 2,
// archiving 00000002.history, the old timeline's last segment as .partial
// and the new timeline's segments, and a disaster restore of the backup
// taken on timeline 1 reaches the rows written after the promotion, from
// the archive wal-stream alone filled.
func TestStreamPromotion(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { streamPromotion(t, b) })
	}
}

func streamPromotion(t *testing.T, b backend) {
	primary := streamPrimary(t, b, nil)
	spool := pgtest.NewDir(t, "spool")
	fromPrimary := startStream(t, b, primary, spool, streamFlags...)
	fromPrimary.waitStreaming(t)
	primary.Psql(t, "CREATE TABLE feed (id int)")
	primary.Pgbench(t, "-i", "-s", "1", "-q")
	backupPush(t, b, primary)
	insert := func(c *pgtest.Cluster, id int) { c.Psql(t, fmt.Sprintf("INSERT INTO feed VALUES (%d)", id)) }
	sees := func(c *pgtest.Cluster, id int) {
		t.Helper()
		c.WaitFor(t, fmt.Sprintf("SELECT count(*) FROM feed WHERE id = %d", id), "1", 2*time.Minute)
	}

	standby := startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(primary), "LATEST"), nil)
	insert(primary, 1)
	sees(standby, 1)

	// The same spool, now fed by the standby, once it has what
	// wal-stream received from the primary.
	fromPrimary.stop(t)
	insert(primary, 2)
	sees(standby, 2)
	fromStandby := startStream(t, b, standby, spool, streamFlags...)
	fromStandby.waitStreaming(t)
	standby.WaitFor(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'", "1", time.Minute)
	tl1 := switchWAL(t, primary)
	fromStandby.waitArchived(t, tl1)
	insert(primary, 3)
	sees(standby, 3)

	primary.Stop(t)
	standby.Psql(t, "SELECT pg_promote()")
	promoted(t, standby)
	insert(standby, 4)
	standby.Pgbench(t, "-T", "1", "-c", "2")
	insert(standby, 5)
	tl2 := switchWAL(t, standby)
	if !strings.HasPrefix(tl2, "00000002") {
		t.Fatalf("the promoted standby switched out of %s, not a timeline-2 segment", tl2)
	}
	waitUntil(t, 2*time.Minute, "wal-stream archives 00000002.history", func() bool {
		return b.exists(t, "wal/00000002.history")
	}, fromStandby.service)
	fromStandby.waitArchived(t, tl2)
	var partials []string
	for _, key := range b.keys(t) {
		if strings.HasPrefix(key, "wal/00000001") && strings.HasSuffix(key, ".partial.zst") {
			partials = append(partials, key)
		}
	}
	if len(partials) != 1 {
		t.Errorf("want the last segment of timeline 1 archived as .partial, once; got %v", partials)
	}
	if missing := missingSegments(t, b, firstOfTimeline(t, b, 2), tl2); len(missing) > 0 {
		t.Fatalf("timeline-2 segments not archived: %v", missing)
	}

	tables := append([]string{"feed"}, pgbenchTables...)
	want := standby.TableChecksums(t, "", tables...)
	restored := startRestored(t, b, 15, backupFetch(t, b, "LATEST"), nil)
	promoted(t, restored)
	if got := restored.Psql(t, "SELECT string_agg(id::text, ',' ORDER BY id) FROM feed"); got != "1,2,3,4,5" {
		t.Fatalf("the restore from the streamed archive has rows %q, want 1,2,3,4,5", got)
	}
	if got := restored.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored tables differ from the promoted server's:\n got %v\nwant %v", got, want)
	}
}

// TestStreamSynchronous: wal-stream --synchronous as the synchronous
// standby ('walship'): commits go through while it runs, wait (not
// committed, in SyncRep) while it is stopped and complete once it is back.
// A row whose commit returned just before the primary crashed is in the
// spool's .partial after SIGTERM, and a restore from the backup, the
// archive and that .partial (copied into pg_wal, as one does with
// pg_receivewal's) has it.
func TestStreamSynchronous(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	primary := streamPrimary(t, b, map[string]string{
		"synchronous_standby_names": "walship",
		"synchronous_commit":        "on",
	})
	spool := pgtest.NewDir(t, "spool")
	flags := append(append([]string{}, streamFlags...), "--synchronous")
	ws := startStream(t, b, primary, spool, flags...)
	primary.WaitFor(t, "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walship'", "sync", time.Minute)
	commit := func(sql string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := psqlContext(ctx, primary, sql)
		if err != nil {
			t.Fatalf("%s with wal-stream --synchronous running: %v", sql, err)
		}
		return out
	}
	commit("CREATE TABLE feed (id int)")
	commit("INSERT INTO feed VALUES (1)")
	backupPush(t, b, primary)

	// Stopped, it holds commits back; back, it lets them through.
	ws.stop(t)
	primary.WaitFor(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship'", "0", time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const waitingInsert = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND query LIKE 'INSERT INTO feed VALUES (2)%'"
	waiting := make(chan error, 1)
	go func() {
		_, err := psqlContext(ctx, primary, "INSERT INTO feed VALUES (2)")
		waiting <- err
	}()
	primary.WaitFor(t, waitingInsert, "1", 30*time.Second)
	select {
	case err := <-waiting:
		t.Fatalf("an INSERT returned (%v) with no synchronous standby connected", err)
	case <-time.After(3 * time.Second): // how long it must keep waiting, not a synchronisation
	}
	if got := primary.Psql(t, "SELECT count(*) FROM feed WHERE id = 2"); got != "0" {
		t.Fatal("the INSERT waiting for the synchronous standby is visible already")
	}
	if got := primary.Psql(t, waitingInsert); got != "1" {
		t.Fatal("the INSERT no longer waits in SyncRep, yet it has not returned")
	}
	ws = startStream(t, b, primary, spool, flags...)
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatalf("the waiting INSERT failed once wal-stream was back: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the waiting INSERT did not commit within a minute of wal-stream's restart")
	}
	if got := primary.Psql(t, "SELECT count(*) FROM feed WHERE id = 2"); got != "1" {
		t.Fatal("the INSERT returned but its row is not there")
	}

	// A commit that returned just before a crash is in the spool: it
	// returned once wal-stream had made it durable. The same psql then
	// names the segment it is in.
	seg := commit("INSERT INTO feed VALUES (3); SELECT pg_walfile_name(pg_current_wal_lsn())")
	primary.StopImmediate(t)
	ws.stop(t)
	partial := filepath.Join(spool, seg+".partial")
	data, err := os.ReadFile(partial)
	if err != nil {
		entries, _ := os.ReadDir(spool)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("after SIGTERM, the segment of the last commit is not in the spool as %s (%v); the spool holds %v", filepath.Base(partial), err, names)
	}
	if int64(len(data)) != segSize16 {
		t.Fatalf("%s has %d bytes, want the full segment size %d", partial, len(data), segSize16)
	}

	dir := backupFetch(t, b, "LATEST")
	dest := filepath.Join(dir, "pg_wal", seg)
	if err := os.WriteFile(dest, data, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := startRestored(t, b, 15, dir, nil)
	promoted(t, restored)
	if got := restored.Psql(t, "SELECT string_agg(id::text, ',' ORDER BY id) FROM feed"); got != "1,2,3" {
		t.Fatalf("the restore from backup, archive and spool has rows %q, want 1,2,3", got)
	}
}

// streamPrimary starts a PostgreSQL 15 primary that archives nothing by
// itself: only wal-stream fills the archive of b.
func streamPrimary(t *testing.T, b backend, conf map[string]string) *pgtest.Cluster {
	t.Helper()
	c := map[string]string{"archive_mode": "off"}
	maps.Copy(c, conf)
	return primaryFor(t, b, 15, c)
}

// service is a long-running process a test started: it is stopped when
// the test ends, and its output is printed if the test failed.
type service struct {
	name    string
	cmd     *exec.Cmd
	log     string         // stdout and stderr
	stopSig syscall.Signal // how it is asked to stop
	done    chan struct{}  // closed once it has exited
	err     error          // Wait's result, once done is closed
}

func startService(t *testing.T, name string, cmd *exec.Cmd, stopSig syscall.Signal) *service {
	t.Helper()
	logFile, err := os.CreateTemp(t.TempDir(), name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	s := &service{name: fmt.Sprintf("%s (pid %d)", name, cmd.Process.Pid), cmd: cmd, log: logFile.Name(), stopSig: stopSig, done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("%s output (%s):\n%s", s.name, s.log, tail(s.logText(), 80))
		}
	})
	return s
}

func (s *service) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop asks the process to stop and waits for it, 30 s at most before
// SIGKILL; it must exit 0.
func (s *service) stop(t *testing.T) {
	t.Helper()
	if s.exited() {
		return
	}
	if err := s.cmd.Process.Signal(s.stopSig); err != nil {
		t.Errorf("signal %s: %v", s.name, err)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		t.Errorf("%s did not exit within 30 s of %v; killed", s.name, s.stopSig)
		return
	}
	if s.err != nil {
		t.Errorf("%s stopped with %v: %v, want exit 0\n%s", s.name, s.stopSig, s.err, tail(s.logText(), 20))
	}
}

// kill ends the process with SIGKILL, as a crash would.
func (s *service) kill(t *testing.T) {
	t.Helper()
	if s.exited() {
		t.Fatalf("%s exited by itself before the kill: %v\n%s", s.name, s.err, tail(s.logText(), 40))
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

func (s *service) logText() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// walStream is a running walship wal-stream.
type walStream struct {
	*service
	b     backend
	spool string
}

// startStream starts walship wal-stream from server c into b's archive
// with spool, as the OS user PostgreSQL runs as.
func startStream(t *testing.T, b backend, c *pgtest.Cluster, spool string, flags ...string) *walStream {
	t.Helper()
	args := append(append([]string{}, b.args...), "wal-stream", "--pg", pgConn(c), "--spool", spool)
	cmd := exec.Command(walshipBin, append(args, flags...)...)
	cmd.Env = append(baseEnv(), b.env...)
	cmd.Dir = spool
	c.RunAsServerUser(cmd)
	return &walStream{service: startService(t, "wal-stream", cmd, syscall.SIGTERM), b: b, spool: spool}
}

// startReceivewal starts pg_receivewal from c into dir through slot.
func startReceivewal(t *testing.T, c *pgtest.Cluster, dir, slot string) *service {
	t.Helper()
	cmd := exec.Command(pgtest.ClientBin("pg_receivewal"), "-D", dir, "--slot", slot,
		"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres", "--no-password", "--verbose")
	cmd.Env = baseEnv()
	cmd.Dir = dir
	c.RunAsServerUser(cmd)
	return startService(t, "pg_receivewal", cmd, syscall.SIGINT)
}

// streamStatus is what wal-stream --status prints.
type streamStatus struct {
	PID        int       `json:"pid"`
	Server     string    `json:"server"`
	State      string    `json:"state"`
	Timeline   int       `json:"timeline"`
	Received   wal.LSN   `json:"received_lsn"`
	Flushed    wal.LSN   `json:"flushed_lsn"`
	ServerLSN  wal.LSN   `json:"server_lsn"`
	LagBytes   int64     `json:"lag_bytes"`
	Archived   string    `json:"archived_segment"`
	Pending    int       `json:"segments_pending"`
	Updated    time.Time `json:"updated"`
	LastError  string    `json:"last_error"`
	Reconnects int       `json:"reconnects"`
}

// status runs wal-stream --status on the spool; ok is false while there
// is no status of this process yet (none, or an earlier run's).
func (ws *walStream) status(t *testing.T) (st streamStatus, ok bool) {
	t.Helper()
	r := walship(t, "", ws.b.env, append(append([]string{}, ws.b.args...), "wal-stream", "--status", "--spool", ws.spool)...)
	if r.code != 0 {
		return st, false
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("wal-stream --status printed something else than the status JSON: %v\n%s", err, r.stdout)
	}
	return st, st.PID == ws.cmd.Process.Pid
}

// waitStatus waits until this wal-stream's status satisfies cond and
// returns it.
func (ws *walStream) waitStatus(t *testing.T, timeout time.Duration, what string, cond func(streamStatus) bool) streamStatus {
	t.Helper()
	var st streamStatus
	waitUntil(t, timeout, "wal-stream --status: "+what, func() bool {
		var ok bool
		st, ok = ws.status(t)
		return ok && cond(st)
	}, ws.service)
	return st
}

// waitStreaming waits until wal-stream's status says it streams.
func (ws *walStream) waitStreaming(t *testing.T) {
	t.Helper()
	ws.waitStatus(t, time.Minute, "streaming", func(st streamStatus) bool { return st.State == "streaming" })
}

// waitArchived waits until wal-stream has archived segment name.
func (ws *walStream) waitArchived(t *testing.T, name string) {
	t.Helper()
	waitUntil(t, 2*time.Minute, "wal-stream archives "+name, func() bool {
		return ws.b.exists(t, "wal/"+name+".zst")
	}, ws.service)
}

// waitUntil polls cond until it holds; it fails the test after timeout,
// or at once when one of the services it waits on has exited.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool, on ...*service) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := 20 * time.Millisecond; !cond(); delay = min(2*delay, 250*time.Millisecond) {
		for _, s := range on {
			if s.exited() {
				t.Fatalf("waiting until %s: %s exited: %v\n%s", what, s.name, s.err, tail(s.logText(), 40))
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(delay)
	}
}

func switchWAL(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	return c.Psql(t, "SELECT pg_walfile_name(pg_switch_wal())")
}

func currentLSN(t *testing.T, c *pgtest.Cluster) wal.LSN {
	t.Helper()
	lsn, err := wal.ParseLSN(c.Psql(t, "SELECT pg_current_wal_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// psqlContext runs sql like pgtest's Psql, but gives up when ctx ends.
func psqlContext(ctx context.Context, c *pgtest.Cluster, sql string) (string, error) {
	cmd := exec.CommandContext(ctx, pgtest.ClientBin("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", c.ConnString(""), "-f", "-")
	cmd.Env = append(baseEnv(), "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(sql)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("psql %q: %w: %s", sql, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// walPageSize is PostgreSQL's XLOG_BLCKSZ.
const walPageSize = 8192

// spoolHolds reports whether wal-stream has written the WAL page holding
// the byte before lsn (on timeline tli) into its segment's .partial file.
func spoolHolds(spool string, tli wal.TimeLineID, lsn wal.LSN) bool {
	seg := wal.SegmentFileName(tli, wal.LSNToSegNo(lsn-1, segSize16), segSize16)
	f, err := os.Open(filepath.Join(spool, seg+".partial"))
	if err != nil {
		return false
	}
	defer f.Close()
	page := wal.SegmentOffset(lsn-1, segSize16) / walPageSize * walPageSize
	var magic [2]byte // xlp_magic: zero until the page arrived
	if _, err := f.ReadAt(magic[:], page); err != nil {
		return false
	}
	return magic != [2]byte{}
}

var segmentName = regexp.MustCompile(`^[0-9A-F]{24}$`)

// archivedSegments lists the complete segments in b's archive, sorted.
func archivedSegments(t *testing.T, b backend) []string {
	t.Helper()
	var names []string
	for _, key := range b.keys(t) {
		name, ok := strings.CutPrefix(key, "wal/")
		if !ok {
			continue
		}
		if name, ok = strings.CutSuffix(name, ".zst"); ok && segmentName.MatchString(name) {
			names = append(names, name)
		}
	}
	return names
}

// firstOfTimeline is the oldest archived segment of timeline tli.
func firstOfTimeline(t *testing.T, b backend, tli wal.TimeLineID) string {
	t.Helper()
	prefix := fmt.Sprintf("%08X", tli)
	for _, name := range archivedSegments(t, b) {
		if strings.HasPrefix(name, prefix) {
			return name
		}
	}
	t.Fatalf("no segment of timeline %d archived", tli)
	return ""
}

// missingSegments lists the segments from first to last (of first's
// timeline) that b's archive lacks.
func missingSegments(t *testing.T, b backend, first, last string) []string {
	t.Helper()
	from, err := wal.ParseFileName(first)
	if err != nil {
		t.Fatal(err)
	}
	to, err := wal.ParseFileName(last)
	if err != nil {
		t.Fatal(err)
	}
	a, err := from.SegNo(segSize16)
	if err != nil {
		t.Fatal(err)
	}
	z, err := to.SegNo(segSize16)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, name := range archivedSegments(t, b) {
		have[name] = true
	}
	var missing []string
	for seg := a; seg <= z; seg++ {
		if name := wal.SegmentFileName(from.TLI, seg, segSize16); !have[name] {
			missing = append(missing, name)
		}
	}
	return missing
}

// storedWAL reads segment name from b's archive without walship: the
// stored object (on a file archive, after its one-line metadata header),
// decompressed with zstd.
func storedWAL(t *testing.T, b backend, name string) []byte {
	t.Helper()
	key := "wal/" + name + ".zst"
	var body []byte
	switch {
	case b.srv != nil:
		u, err := url.Parse(b.repo)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := b.srv.Client().GetObject(context.Background(), u.Host, strings.TrimPrefix(u.Path, "/")+"/"+key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer obj.Close()
		if body, err = io.ReadAll(obj); err != nil {
			t.Fatalf("read %s: %v", key, err)
		}
	default:
		raw := readFile(t, filepath.Join(strings.TrimPrefix(b.repo, "file://"), filepath.FromSlash(key)))
		i := bytes.IndexByte(raw, '\n')
		if i < 0 || !bytes.HasPrefix(raw, []byte("#walship-meta {")) {
			t.Fatalf("%s does not start with a #walship-meta header line", key)
		}
		body = raw[i+1:]
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	data, err := dec.DecodeAll(body, nil)
	if err != nil {
		t.Fatalf("%s is not zstd: %v", key, err)
	}
	return data
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// tail returns the last n lines of text.
func tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[… %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
