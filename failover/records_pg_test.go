package failover

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/wal"
)

// TestLastRecordEndMatchesPgWaldump: on real pgbench WAL of PostgreSQL
// 15, with segment switches among it, the end LastRecordEnd finds in each
// complete segment is where pg_waldump says the last record ending in it
// ends (the next record's start, less the page header when that record
// starts a page).
func TestLastRecordEndMatchesPgWaldump(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	c := pgtest.Start(t, pgtest.Options{Conf: map[string]string{"max_wal_size": "1GB", "wal_keep_size": "1GB"}})
	c.Pgbench(t, "-i", "-s", "4", "-q")
	c.Psql(t, "SELECT pg_switch_wal()")
	c.Pgbench(t, "-T", "2", "-c", "2")
	c.Psql(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()")
	c.Pgbench(t, "-T", "1", "-c", "2")
	current := c.Psql(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	const segSize = 16 << 20

	walDir := filepath.Join(c.DataDir(), "pg_wal")
	entries, err := os.ReadDir(walDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if fn, err := wal.ParseFileName(e.Name()); err == nil && fn.Kind == wal.KindSegment && e.Name() < current {
			names = append(names, e.Name())
		}
	}
	if len(names) < 4 {
		t.Fatalf("only %d complete segments in pg_wal: %v", len(names), names)
	}
	dir := t.TempDir()
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(walDir, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Record starts, in order, over all segments.
	cmd := exec.Command(pgtest.ClientBin("pg_waldump"), "-p", dir, names[0], names[len(names)-1])
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, _ := cmd.Output() // it ends with an error at the incomplete last record
	re := regexp.MustCompile(`lsn: ([0-9A-F]+/[0-9A-F]+), prev`)
	var starts []wal.LSN
	for _, line := range strings.Split(string(out), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			lsn, err := wal.ParseLSN(m[1])
			if err != nil {
				t.Fatal(err)
			}
			starts = append(starts, lsn)
		}
	}
	if len(starts) < 1000 {
		t.Fatalf("pg_waldump listed %d records: %s", len(starts), stderr.String())
	}
	// A record ends where the next one starts, or just before the page
	// header when the next one starts a page.
	ends := make([]wal.LSN, 0, len(starts))
	for _, next := range starts[1:] {
		switch {
		case next%segSize == wal.LongPageHeaderSize:
			ends = append(ends, next-wal.LongPageHeaderSize)
		case next%8192 == wal.ShortPageHeaderSize:
			ends = append(ends, next-wal.ShortPageHeaderSize)
		default:
			ends = append(ends, next)
		}
	}
	switches := 0
	for _, n := range names[:len(names)-1] { // the last one's final record ends in a segment not copied
		fn, _ := wal.ParseFileName(n)
		seg, _ := fn.SegNo(segSize)
		start := wal.SegmentStartLSN(seg, segSize)
		var want wal.LSN
		for _, e := range ends {
			if e > start && e <= start+segSize {
				want = e
			}
		}
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		got, ok, err := LastRecordEnd(f, start, segSize)
		f.Close()
		if err != nil || !ok {
			t.Fatalf("%s: %v, ok %v", n, err, ok)
		}
		if got != want {
			t.Errorf("%s: last record ends at %s, pg_waldump says %s", n, got, want)
		}
		if got == start+segSize {
			switches++
		}
	}
	if switches == 0 {
		t.Error("no segment ended with a switch: the test misses that case")
	}
	t.Logf("%d segments checked, %d ended by a switch, %d records", len(names)-1, switches, len(starts))
}
