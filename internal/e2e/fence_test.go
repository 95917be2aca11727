package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/wal"
)

// TestFenceSplitBrain: a standby is promoted while the old primary keeps
// running and writing. The old primary's further wal-push calls on
// timeline 1 past the fork are refused, every retry again; the fence
// command runs once; its log explains why in one line; backup-push
// against it is refused; and a disaster restore from the archive follows
// timeline 2 and equals the new primary, not the old one.
func TestFenceSplitBrain(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range []func(t *testing.T) backend{
		func(t *testing.T) backend { return s3Backend(t, s3test.Start(t)) },
		fileBackend,
	} {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { fenceSplitBrain(t, b) })
	}
}

func fenceSplitBrain(t *testing.T, b backend) {
	const interval = 2 * time.Second
	fenceLog := filepath.Join(pgtest.NewDir(t, "fence"), "fenced.log")
	archiveConf := func() map[string]string {
		return map[string]string{
			"archive_mode":    "on",
			"archive_command": strings.Join(append(append([]string{walshipBin}, b.args...), "wal-push", "%p"), " "),
		}
	}
	primary := pgtest.Start(t, pgtest.Options{Major: 15, Conf: archiveConf(), Env: append(serverEnv(b),
		`WALSHIP_FENCE_COMMAND=echo "$WALSHIP_FENCED_TIMELINE $WALSHIP_FENCE_LSN $WALSHIP_NEW_TIMELINE $PGDATA" >> `+fenceLog,
		fmt.Sprintf("WALSHIP_FENCE_CHECK_INTERVAL=%v", interval))})
	insert := func(c *pgtest.Cluster, from, to int, src string) {
		c.Psql(t, fmt.Sprintf("INSERT INTO feed SELECT g, '%s', md5(g::text) FROM generate_series(%d, %d) g", src, from, to))
	}
	primary.Psql(t, "CREATE TABLE feed (id int PRIMARY KEY, src text, pad text)")
	insert(primary, 1, 1000, "old primary")
	backupPush(t, b, primary)

	standby := startRestored(t, b, 15, backupFetch(t, b, "--standby", "LATEST"), archiveConf())
	insert(primary, 1001, 2000, "old primary")
	waitArchived(t, primary)
	lastPush := time.Now()
	standby.WaitFor(t, "SELECT count(*) FROM feed", "2000", 2*time.Minute)

	// Failover: the standby becomes timeline 2; the old primary runs on.
	standby.Psql(t, "SELECT pg_promote()")
	promoted(t, standby)
	waitUntil(t, 2*time.Minute, "the promoted standby archives 00000002.history", func() bool {
		return b.exists(t, "wal/00000002.history")
	})
	fork := forkPoint(t, b)

	// The old primary learns of timeline 2 once the interval for which
	// it trusts "no newer timeline" has passed (the documented window).
	time.Sleep(time.Until(lastPush.Add(interval + 100*time.Millisecond)))
	// The first segment holding WAL past the fork.
	refused := wal.SegmentFileName(1, wal.LSNToSegNo(fork, segSize16), segSize16)
	for i := 0; i < 3; i++ {
		insert(primary, 2001+1000*i, 3000+1000*i, "zombie")
		switchWAL(t, primary)
	}
	// PostgreSQL tries three times per round, and a new segment starts
	// another round.
	primary.WaitFor(t, "SELECT failed_count >= 6 FROM pg_stat_archiver", "t", 2*time.Minute)
	if got := primary.Psql(t, "SELECT last_failed_wal FROM pg_stat_archiver"); got != refused {
		t.Errorf("last_failed_wal %s, want %s: the first segment written past the fork is retried until it goes", got, refused)
	}
	if got := primary.Psql(t, "SELECT coalesce(last_archived_wal, '') < '"+refused+"' FROM pg_stat_archiver"); got != "t" {
		t.Errorf("the old primary archived something at or past %s", refused)
	}

	for _, key := range b.keys(t) {
		name, ok := strings.CutPrefix(key, "wal/")
		if !ok || len(name) < 24 || !segmentName.MatchString(name[:24]) || strings.Contains(name, ".partial") || strings.Contains(name, ".backup") {
			continue
		}
		fn, err := wal.ParseFileName(name[:24])
		if err != nil {
			t.Fatal(err)
		}
		start, _ := fn.StartLSN(segSize16)
		if fn.TLI == 1 && start >= fork {
			t.Errorf("the archive holds %s, a timeline-1 segment starting at %s, at or past the fork at %s", key, start, fork)
		}
	}

	log := string(readFile(t, fenceLog))
	if want := fmt.Sprintf("1 %s 2 %s\n", fork, primary.DataDir()); log != want {
		t.Errorf("the fence command ran with output %q, want once: %q", log, want)
	}
	explanation := fmt.Sprintf("this server was superseded by timeline 2 at LSN %s; it must not accept writes", fork)
	server := string(readFile(t, primary.Log()))
	if n := strings.Count(server, explanation); n < 6 {
		t.Errorf("the old primary's log explains the refusal %d times, want one line per refused attempt:\n%s", n, tail(server, 20))
	}
	for _, line := range strings.Split(server, "\n") {
		if strings.Contains(line, explanation) && !strings.Contains(line, "level=ERROR") {
			t.Errorf("the explanation is not logged as an error: %s", line)
		}
	}

	// A base backup of the old primary is refused before anything is
	// stored.
	before := b.keys(t)
	walship(t, t.TempDir(), b.env, append(b.args, "backup-push", "--pg", pgConn(primary))...).
		mustFail(t, "backup-push of the superseded primary", 1, explanation)
	if after := b.keys(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a refused backup-push changed the archive:\nbefore %v\nafter  %v", before, after)
	}

	// The archive is the new primary's history.
	insert(standby, 10001, 11000, "new primary")
	waitArchived(t, standby)
	want := standby.TableChecksums(t, "", "feed")
	restored := startRestored(t, b, 15, backupFetch(t, b, "LATEST"), map[string]string{"recovery_target_timeline": "latest"})
	promoted(t, restored)
	if got := restored.TableChecksums(t, "", "feed"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the disaster restore differs from the new primary:\n got %v\nwant %v", got, want)
	}
	if got := restored.Psql(t, "SELECT count(*) FILTER (WHERE src = 'zombie') || ' ' || count(*) FROM feed"); got != "0 3000" {
		t.Fatalf("the disaster restore holds %q rows (zombie, total), want 0 3000", got)
	}
}

// forkPoint reads where timeline 2 left timeline 1 from the archived
// 00000002.history, fetched through walship.
func forkPoint(t *testing.T, b backend) wal.LSN {
	t.Helper()
	dir := t.TempDir()
	walship(t, dir, b.env, append(b.args, "wal-fetch", "00000002.history", "history")...).mustSucceed(t, "wal-fetch 00000002.history")
	entries, err := wal.ParseHistory(readFile(t, filepath.Join(dir, "history")))
	if err != nil || len(entries) != 1 || entries[0].TLI != 1 {
		t.Fatalf("00000002.history: %v %+v", err, entries)
	}
	return entries[0].SwitchPoint
}
