package e2e

import (
	"fmt"
	"os"
	"path/filepath"
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
