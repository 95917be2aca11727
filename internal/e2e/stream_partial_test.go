package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/wal"
)

// TestStreamPartialDR: the primary is lost for good with a committed row
// in a segment that never completed. wal-stream --partial-interval stored
// snapshots of that segment; a DR restore reaches the row only when asked
// to use them (backup-fetch --use-partial), never by itself.
func TestStreamPartialDR(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := fileBackend(t)
	primary := streamPrimary(t, b, nil)
	spool := pgtest.NewDir(t, "spool")
	ws := startStream(t, b, primary, spool, "--slot", "walship", "--create-slot", "--status-interval", "200ms", "--partial-interval", "200ms")
	ws.waitStreaming(t)
	primary.Psql(t, "CREATE TABLE feed (id int)")
	backupPush(t, b, primary)
	primary.Psql(t, "INSERT INTO feed VALUES (1)")
	lsn := currentLSN(t, primary)
	seg := wal.SegmentFileName(1, wal.LSNToSegNo(lsn, segSize16), segSize16)
	need := wal.SegmentOffset(lsn, segSize16)
	waitUntil(t, time.Minute, fmt.Sprintf("a snapshot of %s up to offset %d", seg, need), func() bool {
		for _, key := range b.keys(t) {
			rest, ok := strings.CutPrefix(key, "partial/"+seg+".")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSuffix(rest, ".zst"), 16, 64)
			if err == nil && n >= need {
				return true
			}
		}
		return false
	}, ws.service)
	primary.StopImmediate(t) // lost for good
	ws.stop(t)
	if b.exists(t, "wal/"+seg+".zst") {
		t.Fatalf("%s was archived complete: the test would not show the snapshot is used", seg)
	}

	without := startRestored(t, b, 15, backupFetch(t, b, "LATEST"), nil)
	promoted(t, without)
	if got := without.Psql(t, "SELECT count(*) FROM feed"); got != "0" {
		t.Fatalf("a restore without --use-partial has %s rows: the snapshot was used without being asked for", got)
	}
	with := startRestored(t, b, 15, backupFetch(t, b, "--use-partial", "LATEST"), nil)
	promoted(t, with)
	if got := with.Psql(t, "SELECT count(*) FROM feed WHERE id = 1"); got != "1" {
		t.Fatalf("a restore with --use-partial does not have the row committed before the primary was lost (count %s)", got)
	}
	if n := countLines(t, with.Log(), "streamed snapshot"); n == 0 {
		t.Fatal("wal-fetch did not say it restored a streamed snapshot")
	}
}
