package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/restore"
)

// TestPrefetch: a DR restore replays segments the prefetcher downloaded
// ahead (wal-fetch logs "(prefetched)"), the data equals the primary's,
// and the prefetch spool is gone once recovery has ended.
func TestPrefetch(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) {
			primary := primaryFor(t, b, 15, nil)
			primary.Pgbench(t, "-i", "-s", "5", "-q")
			backupPush(t, b, primary)
			primary.Pgbench(t, "-i", "-s", "10", "-q") // about 10 segments of WAL
			want := primary.TableChecksums(t, "", pgbenchTables...)
			waitArchived(t, primary)

			dir := backupFetch(t, b, "LATEST")
			restored := startRestored(t, b, 15, dir, nil)
			promoted(t, restored)
			if got := restored.TableChecksums(t, "", pgbenchTables...); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("restored tables differ:\n got %v\nwant %v", got, want)
			}
			all, prefetched := countRestored(t, restored), countLines(t, restored.Log(), "(prefetched)")
			t.Logf("%d segments restored, %d of them prefetched", all, prefetched)
			if all < 8 || prefetched < all/2 {
				t.Fatalf("%d of %d restored segments came from the prefetcher; want at least half", prefetched, all)
			}
			spool := filepath.Join(dir, restore.SpoolName)
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, err := os.Stat(spool); os.IsNotExist(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the prefetch spool %s is still there after recovery ended", spool)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// countLines counts the lines of file that contain word.
func countLines(t *testing.T, file, word string) int {
	t.Helper()
	out, _ := exec.Command("grep", "-c", "-F", word, file).Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}
