package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
)

// TestWarmStandbyCleanup: a warm standby set up with --archive-cleanup
// runs walship wal-cleanup %r at its restartpoints while pgbench writes on
// the primary: it keeps following, the archive does not keep every
// segment, and the WAL the base backup needs is still there.
func TestWarmStandbyCleanup(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	primary := primaryFor(t, b, 15, map[string]string{"archive_timeout": "1s"})
	primary.Psql(t, "CREATE TABLE feed (id int)")
	backup := backupPush(t, b, primary)
	dir := backupFetch(t, b, "--standby", "--archive-cleanup", "LATEST")
	standby := startRestored(t, b, 15, dir, map[string]string{"checkpoint_timeout": "30s"})

	var cleaned bool
	var archived int
	for round := 1; round <= 12 && !cleaned; round++ {
		primary.Pgbench(t, "-i", "-s", "2", "-q")
		primary.Psql(t, fmt.Sprintf("INSERT INTO feed VALUES (%d)", round))
		primary.Psql(t, "CHECKPOINT") // a standby restartpoint needs a replayed checkpoint
		waitArchived(t, primary)
		standby.WaitFor(t, fmt.Sprintf("SELECT count(*) FROM feed WHERE id = %d", round), "1", 2*time.Minute)
		// A restartpoint on the standby runs archive_cleanup_command.
		standby.Psql(t, "CHECKPOINT")
		archived = len(segments(t, b))
		// initdb's first segment comes before the backup: nothing needs it.
		cleaned = !b.exists(t, "wal/000000010000000000000001.zst")
	}
	if !cleaned {
		log, _ := os.ReadFile(standby.Log())
		t.Fatalf("archive_cleanup_command never removed anything; %d segments archived; standby log:\n%s", archived, grepLines(string(log), "removed"))
	}
	// The base backup still restores: the WAL it needs was kept.
	walship(t, t.TempDir(), b.env, append(b.args, "backup-fetch", "--verify", backup, filepath.Join(pgtest.NewDir(t, "again"), "data"))...).mustSucceed(t, "backup-fetch after cleanup")
	restored := startRestored(t, b, 15, backupFetch(t, b, backup), nil)
	promoted(t, restored)
	if got, want := restored.Psql(t, "SELECT count(*) FROM feed"), primary.Psql(t, "SELECT count(*) FROM feed"); got != want {
		t.Fatalf("a restore of %s after cleanup has %s rows, the primary %s", backup, got, want)
	}
}

func grepLines(text, word string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestWalVerify: wal-verify passes on a complete archive of a real cluster
// and names a segment deleted by hand, with a non-zero exit.
func TestWalVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	primary := primaryFor(t, b, 15, nil)
	backupPush(t, b, primary)
	for i := 0; i < 4; i++ {
		primary.Psql(t, "CREATE TABLE IF NOT EXISTS x (i int); INSERT INTO x VALUES (1)")
		waitArchived(t, primary)
	}
	walship(t, t.TempDir(), b.env, "wal-verify").mustSucceed(t, "wal-verify on a complete archive")

	victim := segments(t, b)[2]
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	name := strings.TrimSuffix(filepath.Base(victim), ".zst")
	r := walship(t, t.TempDir(), b.env, "wal-verify", "--json")
	if r.code != 1 || !strings.Contains(r.stdout, `"first_missing": "`+name+`"`) {
		t.Fatalf("wal-verify after deleting %s: exit %d\n%s\n%s", name, r.code, r.stdout, r.stderr)
	}
}

func segments(t *testing.T, b backend) []string {
	matches, _ := filepath.Glob(filepath.Join(strings.TrimPrefix(b.repo, "file://"), "wal", "????????????????????????.zst"))
	if len(matches) < 3 {
		t.Fatalf("only %d segments archived", len(matches))
	}
	return matches
}

// TestRetention: backups on timelines 1 and 2 around a promotion;
// backup-delete --retain-full 1 (a dry run first, which changes nothing)
// keeps the newest backup and everything it needs: a DR restore from it
// reaches the newest data and wal-verify finds no gap. A segment deleted
// by hand afterwards is a gap wal-verify names.
func TestRetention(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) { retention(t, b) })
	}
}

func retention(t *testing.T, b backend) {
	run := func(args ...string) result {
		return walship(t, t.TempDir(), b.env, append(b.args, args...)...)
	}
	primary := primaryFor(t, b, 15, nil)
	primary.Psql(t, "CREATE TABLE feed (id int)")
	primary.Pgbench(t, "-i", "-s", "2", "-q")
	first := backupPush(t, b, primary)
	primary.Psql(t, "INSERT INTO feed VALUES (1)")

	// A hot standby that archives once promoted.
	standby := startRestored(t, b, 15, backupFetch(t, b, "--primary-conninfo", pgConn(primary), "LATEST"), map[string]string{
		"archive_mode":    "on",
		"archive_command": strings.Join(append(append([]string{walshipBin}, b.args...), "wal-push", "%p"), " "),
	})
	standby.WaitFor(t, "SELECT count(*) FROM feed WHERE id = 1", "1", 2*time.Minute)
	primary.Stop(t)
	standby.Psql(t, "SELECT pg_promote()")
	promoted(t, standby)
	newPrimary := standby
	newPrimary.Psql(t, "INSERT INTO feed VALUES (2)")
	newPrimary.Pgbench(t, "-T", "2", "-c", "2")
	waitArchived(t, newPrimary)
	second := backupPush(t, b, newPrimary)
	for id := 3; id <= 4; id++ {
		newPrimary.Psql(t, fmt.Sprintf("INSERT INTO feed VALUES (%d)", id))
		newPrimary.Pgbench(t, "-T", "1", "-c", "2")
		waitArchived(t, newPrimary)
	}
	tables := append([]string{"feed"}, pgbenchTables...)
	want := newPrimary.TableChecksums(t, "", tables...)

	before := b.keys(t)
	dry := run("backup-delete", "--retain-full", "1")
	dry.mustSucceed(t, "backup-delete dry run")
	if !strings.Contains(dry.stdout, "would delete  backup "+first) || !strings.Contains(dry.stdout, "keep          backup "+second) {
		t.Fatalf("the dry run does not say it would delete %s and keep %s:\n%s", first, second, dry.stdout)
	}
	if after := b.keys(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a dry run changed the archive:\nbefore %v\nafter  %v", before, after)
	}

	run("backup-delete", "--retain-full", "1", "--confirm").mustSucceed(t, "backup-delete --confirm")
	list := run("backup-list", "--json")
	list.mustSucceed(t, "backup-list")
	if !strings.Contains(list.stdout, second) || strings.Contains(list.stdout, first) {
		t.Fatalf("after backup-delete, backup-list shows:\n%s", list.stdout)
	}
	left := b.keys(t)
	if !slices.Contains(left, "wal/00000002.history") {
		t.Fatal("retention removed 00000002.history")
	}
	for _, key := range left {
		if strings.HasPrefix(key, "basebackups/"+first+"/") {
			t.Fatalf("%s of the deleted backup is still stored", key)
		}
	}
	if slices.Contains(left, "wal/000000010000000000000001.zst") {
		t.Fatal("retention kept WAL from before every remaining backup")
	}
	if len(left) >= len(before) {
		t.Fatalf("retention removed nothing: %d objects before, %d after", len(before), len(left))
	}
	run("wal-verify").mustSucceed(t, "wal-verify after retention")

	restored := startRestored(t, b, 15, backupFetch(t, b, "LATEST"), nil)
	promoted(t, restored)
	if got := restored.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("a restore after retention differs from the new primary:\n got %v\nwant %v", got, want)
	}

	// A segment between the backup and the newest WAL, deleted by hand.
	var tl2 []string
	for _, key := range left {
		if strings.HasPrefix(key, "wal/00000002") && strings.HasSuffix(key, ".zst") && len(key) == len("wal/")+24+len(".zst") {
			tl2 = append(tl2, key)
		}
	}
	if len(tl2) < 3 {
		t.Fatalf("only %d timeline-2 segments archived: %v", len(tl2), tl2)
	}
	victim := tl2[len(tl2)-2]
	b.remove(t, victim)
	name := strings.TrimSuffix(strings.TrimPrefix(victim, "wal/"), ".zst")
	r := run("wal-verify")
	if r.code != 1 || !strings.Contains(r.stdout, "GAP on timeline 2: "+name) {
		t.Fatalf("wal-verify after deleting %s: exit %d\n%s\n%s", name, r.code, r.stdout, r.stderr)
	}
}
