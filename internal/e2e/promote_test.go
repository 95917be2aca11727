package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/wal"
)

// promoteResult is standby-promote --json's output.
type promoteResult struct {
	Mode             string   `json:"mode"`
	Timeline         int      `json:"timeline"`
	PreviousTimeline int      `json:"previous_timeline"`
	ForkLSN          wal.LSN  `json:"fork_lsn"`
	ArchiveEndLSN    wal.LSN  `json:"archive_end_lsn"`
	ArchiveEndFile   string   `json:"archive_end_file"`
	Upstream         string   `json:"upstream"`
	LostBytes        int64    `json:"lost_bytes"`
	HistoryFile      string   `json:"history_file"`
	Warnings         []string `json:"warnings"`
}

// standbyPromote runs walship standby-promote against standby c.
func standbyPromote(t *testing.T, b backend, c *pgtest.Cluster, flags ...string) result {
	t.Helper()
	args := append(append(b.args, "standby-promote", "--pg", pgConn(c), "--pgdata", c.DataDir()), flags...)
	return walship(t, t.TempDir(), b.env, args...)
}

func parsePromote(t *testing.T, r result) promoteResult {
	t.Helper()
	var p promoteResult
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("standby-promote --json printed %q: %v\nstderr: %s", r.stdout, err, r.stderr)
	}
	return p
}

// archivingConf makes a standby archive through walship once promoted.
func archivingConf(b backend) map[string]string {
	return map[string]string{
		"archive_mode":    "on",
		"archive_command": strings.Join(append(append([]string{walshipBin}, b.args...), "wal-push", "%p"), " "),
	}
}

func hasKeyPrefix(t *testing.T, b backend, prefix string) bool {
	for _, k := range b.keys(t) {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// TestPromotePlanned: a warm standby (archive only) lags behind a primary
// under pgbench. standby-promote --planned refuses while replay is paused
// and the archive holds more, without promoting; after the primary's last
// WAL is archived and the primary stopped, it waits for the standby to
// replay everything, promotes it, and the promoted server has every row
// the primary committed; 00000002.history is archived, and a standby
// cascading from the promoted one (streaming from it, archive as
// fallback) follows it onto timeline 2.
func TestPromotePlanned(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { promotePlanned(t, b) })
	}
}

func promotePlanned(t *testing.T, b backend) {
	primary := primaryFor(t, b, 15, nil)
	primary.Pgbench(t, "-i", "-s", "5", "-q")
	primary.Psql(t, "CREATE TABLE ticks (id bigserial PRIMARY KEY, v int)")
	backupPush(t, b, primary)
	warm := startRestored(t, b, 15, backupFetch(t, b, "--standby", "LATEST"), archivingConf(b))
	warm.WaitFor(t, "SELECT pg_is_in_recovery()", "t", 2*time.Minute)
	downstream := startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(warm), "LATEST"), nil)
	downstream.WaitFor(t, "SELECT pg_is_in_recovery()", "t", 2*time.Minute)

	// Usage errors: no mode, both modes.
	standbyPromote(t, b, warm).mustFail(t, "standby-promote without a mode", 2, "--planned")
	standbyPromote(t, b, warm, "--planned", "--forced").mustFail(t, "standby-promote --planned --forced", 2, "exclude each other")

	t.Run("refused while the standby cannot catch up", func(t *testing.T) {
		warm.Psql(t, "SELECT pg_wal_replay_pause()")
		primary.Psql(t, "INSERT INTO ticks (v) SELECT g FROM generate_series(1, 1000) g")
		waitArchived(t, primary)
		r := standbyPromote(t, b, warm, "--planned", "--timeout", "3s")
		r.mustFail(t, "standby-promote --planned on a paused standby", 1, "not promoted")
		if !strings.Contains(r.stderr, "replay is paused") || !strings.Contains(r.stderr, "the archive holds WAL up to") {
			t.Fatalf("the refusal does not name the gap and the pause:\n%s", r.stderr)
		}
		if got := warm.Psql(t, "SELECT pg_is_in_recovery()"); got != "t" {
			t.Fatal("a refused planned promotion promoted the standby")
		}
		warm.Psql(t, "SELECT pg_wal_replay_resume()")
	})

	// Writes under load, then the switchover runbook: last WAL archived,
	// primary stopped, planned promotion.
	primary.Pgbench(t, "-T", "4", "-c", "4")
	primary.Psql(t, "INSERT INTO ticks (v) SELECT g FROM generate_series(1, 5000) g")
	tables := append([]string{"ticks"}, pgbenchTables...)
	want := primary.TableChecksums(t, "", tables...)
	lastLSN, err := wal.ParseLSN(primary.Psql(t, "SELECT pg_current_wal_insert_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	waitArchived(t, primary)
	primary.Stop(t)
	behind := warm.Psql(t, fmt.Sprintf("SELECT pg_last_wal_replay_lsn() < '%s'", lastLSN))

	r := standbyPromote(t, b, warm, "--planned", "--json", "--timeout", "3m")
	r.mustSucceed(t, "standby-promote --planned")
	p := parsePromote(t, r)
	t.Logf("%s archive; standby behind when started: %s; took %s: %+v\n%s", b.name, behind, r.took.Round(time.Millisecond), p, r.stderr)
	if p.Timeline != 2 || p.PreviousTimeline != 1 || p.Mode != "planned" || p.HistoryFile != "00000002.history" {
		t.Fatalf("standby-promote --planned reported %+v", p)
	}
	if p.LostBytes != 0 || p.ForkLSN < lastLSN || p.ArchiveEndLSN != p.ForkLSN {
		t.Fatalf("a planned promotion reports a loss or a fork before the primary's last commit at %s: %+v", lastLSN, p)
	}
	if !strings.Contains(r.stderr, "no WAL lost") {
		t.Fatalf("the summary line is not on stderr:\n%s", r.stderr)
	}
	if got := warm.Psql(t, "SELECT pg_is_in_recovery()"); got != "f" {
		t.Fatal("standby-promote succeeded but the server is still in recovery")
	}
	if got := warm.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the promoted standby lacks rows the primary committed:\n got %v\nwant %v", got, want)
	}
	if !hasKeyPrefix(t, b, "wal/00000002.history") {
		t.Fatalf("00000002.history is not in the archive: %v", b.keys(t))
	}

	// The cascade follows the promoted server.
	warm.Psql(t, "INSERT INTO ticks (v) VALUES (-1)")
	waitArchived(t, warm)
	downstream.WaitFor(t, "SELECT count(*) FROM ticks WHERE v = -1", "1", 2*time.Minute)
	if got := downstream.TableChecksums(t, "", tables...); fmt.Sprint(got) == fmt.Sprint(want) {
		t.Fatal("the downstream standby did not change after the promotion")
	}
	if got, want := downstream.TableChecksums(t, "", tables...), warm.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the downstream standby differs from the promoted server:\n got %v\nwant %v", got, want)
	}

	// Promoting a primary is refused.
	standbyPromote(t, b, warm, "--planned").mustFail(t, "standby-promote on a primary", 1, "not in recovery")
}

// TestPromoteForced: a warm standby has replayed three batches of rows
// when its replay is paused; six more batches are archived and the
// primary crashes. standby-promote --forced promotes at once instead of
// replaying the archive first, and reports the loss window: the batches
// whose commit LSN lies beyond the reported fork LSN are exactly the ones
// missing on the promoted server, and the archive end it reports covers
// them all.
func TestPromoteForced(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { promoteForced(t, b) })
	}
}

func promoteForced(t *testing.T, b backend) {
	primary := primaryFor(t, b, 15, nil)
	primary.Psql(t, "CREATE TABLE batches (batch int, id int)")
	backupPush(t, b, primary)
	standby := startRestored(t, b, 15, backupFetch(t, b, "--standby", "LATEST"), archivingConf(b))
	standby.WaitFor(t, "SELECT pg_is_in_recovery()", "t", 2*time.Minute)

	// commits[i] is where batch i's commit ends (the insert position
	// right after it, in the same session).
	commits := map[int]wal.LSN{}
	insert := func(n int) {
		out := primary.Psql(t, fmt.Sprintf("INSERT INTO batches SELECT %d, g FROM generate_series(1, 1000) g; SELECT pg_current_wal_insert_lsn()", n))
		lsn, err := wal.ParseLSN(out)
		if err != nil {
			t.Fatal(err)
		}
		commits[n] = lsn
	}
	for n := 1; n <= 3; n++ {
		insert(n)
	}
	waitArchived(t, primary)
	standby.WaitFor(t, fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'", commits[3]), "t", 2*time.Minute)
	standby.Psql(t, "SELECT pg_wal_replay_pause()")
	for n := 4; n <= 9; n++ {
		insert(n)
		if n%3 == 0 {
			waitArchived(t, primary)
		}
	}
	primary.StopImmediate(t) // the primary is lost

	r := standbyPromote(t, b, standby, "--forced", "--json", "--timeout", "2m")
	r.mustSucceed(t, "standby-promote --forced")
	p := parsePromote(t, r)
	t.Logf("%s archive; took %s: %+v\n%s", b.name, r.took.Round(time.Millisecond), p, r.stderr)
	promoted(t, standby)
	if p.Timeline != 2 || p.PreviousTimeline != 1 || p.Mode != "forced" || p.HistoryFile != "00000002.history" {
		t.Fatalf("standby-promote --forced reported %+v", p)
	}
	var missing []int
	for n := 1; n <= 9; n++ {
		rows := standby.Psql(t, fmt.Sprintf("SELECT count(*) FROM batches WHERE batch = %d", n))
		present := rows == "1000"
		if !present && rows != "0" {
			t.Fatalf("batch %d is half there: %s rows", n, rows)
		}
		if present != (commits[n] <= p.ForkLSN) {
			t.Errorf("batch %d committed at %s, fork at %s: present %v", n, commits[n], p.ForkLSN, present)
		}
		if !present {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 || missing[0] < 4 {
		t.Fatalf("missing batches %v: want some of the batches written after the pause, none before", missing)
	}
	if p.ArchiveEndLSN < commits[9] || p.LostBytes != int64(p.ArchiveEndLSN-p.ForkLSN) || p.Upstream != "" {
		t.Fatalf("the loss window %s … %s (%d bytes) does not cover the last commit at %s: %+v", p.ForkLSN, p.ArchiveEndLSN, p.LostBytes, commits[9], p)
	}
	if !strings.Contains(r.stderr, "LOST") {
		t.Fatalf("the summary line does not say what was lost:\n%s", r.stderr)
	}
	if !hasKeyPrefix(t, b, "wal/00000002.history") {
		t.Fatalf("00000002.history is not in the archive: %v", b.keys(t))
	}
	if _, err := os.Stat(filepath.Join(standby.DataDir(), "pgsql_tmp_walship_promote")); !os.IsNotExist(err) {
		t.Fatalf("the fetch hold is still in the data directory: %v", err)
	}
	// The promoted server writes and archives on its own timeline.
	standby.Psql(t, "INSERT INTO batches VALUES (10, 1)")
	waitArchived(t, standby)
}

// TestPromotePlannedHot: a hot standby streams from the primary, which
// stops cleanly without archiving its last, unfinished segment: only
// streaming brought its end to the standby. standby-promote --planned
// promotes it without waiting for the archive to hold that WAL, and the
// promoted server has every row the primary committed.
func TestPromotePlannedHot(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	primary := primaryFor(t, b, 15, nil)
	primary.Pgbench(t, "-i", "-s", "2", "-q")
	backupPush(t, b, primary)
	hot := startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(primary), "LATEST"), archivingConf(b))
	hot.WaitFor(t, "SELECT status FROM pg_stat_wal_receiver", "streaming", 2*time.Minute)
	primary.Pgbench(t, "-T", "3", "-c", "2")
	want := primary.TableChecksums(t, "", pgbenchTables...)
	primary.Stop(t)
	// The primary's last record, its shutdown checkpoint, is in a segment
	// it never finished, so never archived.
	out, err := exec.Command(pgtest.ClientBin("pg_controldata"), "-D", primary.DataDir()).Output()
	if err != nil {
		t.Fatalf("pg_controldata: %v", err)
	}
	m := regexp.MustCompile(`Latest checkpoint location:\s+(\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("pg_controldata printed no checkpoint location:\n%s", out)
	}
	shutdown, err := wal.ParseLSN(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	unarchived := wal.SegmentFileName(1, wal.LSNToSegNo(shutdown, segSize16), segSize16)
	if hasKeyPrefix(t, b, "wal/"+unarchived) {
		t.Fatalf("%s, which holds the shutdown checkpoint, was archived: the test would not show that streamed WAL counts", unarchived)
	}

	r := standbyPromote(t, b, hot, "--planned", "--json", "--timeout", "2m")
	r.mustSucceed(t, "standby-promote --planned of a streaming standby")
	p := parsePromote(t, r)
	t.Logf("took %s: %+v\n%s", r.took.Round(time.Millisecond), p, r.stderr)
	if p.Timeline != 2 || p.LostBytes != 0 || p.ForkLSN <= shutdown {
		t.Fatalf("standby-promote --planned reported %+v; want no loss and a fork after the shutdown checkpoint at %s", p, shutdown)
	}
	promoted(t, hot)
	if got := hot.TableChecksums(t, "", pgbenchTables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the promoted standby lacks rows the primary committed:\n got %v\nwant %v", got, want)
	}
}
