// Package bench measures walship against baselines run in the same
// process on the same files: `cp` and the `zstd` CLI for wal-push and
// wal-fetch of real pgbench WAL and of incompressible segments, on a
// file:// archive and on a real MinIO. It prints a table of times and
// ratios; it asserts nothing about speed (shared machines vary), only that
// every fetched segment equals the pushed one.
//
// Run it with `make bench` (WALSHIP_BENCH=1 go test -run TestBenchTable -v ./internal/bench).
package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/wal"
)

const maxSegments = 12

func TestBenchTable(t *testing.T) {
	skipUnlessBench(t)
	bin := buildWalship(t)
	real := pgbenchWAL(t)
	random := randomWAL(t, len(real))
	t.Logf("%d segments of real pgbench WAL, %d of random data", len(real), len(random))

	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	archives := []struct {
		name string
		env  func(t *testing.T) []string
	}{
		{"file", func(t *testing.T) []string {
			return []string{"WALSHIP_REPO=file://" + pgtest.NewDir(t, "archive")}
		}},
		{"s3", func(t *testing.T) []string {
			prefix := fmt.Sprintf("bench-%d", time.Now().UnixNano())
			return append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/"+prefix, "WALSHIP_S3_PATH_STYLE=true", "AWS_EC2_METADATA_DISABLED=true")
		}},
	}

	var rows []row
	for _, set := range []struct {
		name string
		segs []string
	}{{"pgbench WAL", real}, {"random data", random}} {
		cpPush := timeEach(t, set.segs, func(seg string) *exec.Cmd {
			return exec.Command("cp", seg, filepath.Join(t.TempDir(), filepath.Base(seg)))
		})
		rows = append(rows, row{what: "cp (baseline)", data: set.name, backend: "local", codec: "-", per: cpPush.per, mbps: mbps(set.segs, cpPush.per), ratio: 1, stored: 1})
		syncDir := t.TempDir()
		cpSync := timeEach(t, set.segs, func(seg string) *exec.Cmd {
			return exec.Command("dd", "if="+seg, "of="+filepath.Join(syncDir, filepath.Base(seg)), "bs=1M", "conv=fsync", "status=none")
		})
		rows = append(rows, row{what: "cp + fsync (baseline)", data: set.name, backend: "local", codec: "-", per: cpSync.per, mbps: mbps(set.segs, cpSync.per), ratio: ratio(cpSync.per, cpPush.per), stored: 1})
		zstdOut := t.TempDir()
		zstdPush := timeEach(t, set.segs, func(seg string) *exec.Cmd {
			return exec.Command("zstd", "-q", "-3", "-f", seg, "-o", filepath.Join(zstdOut, filepath.Base(seg)+".zst"))
		})
		rows = append(rows, row{what: "zstd -3 CLI (baseline)", data: set.name, backend: "local", codec: "zstd", per: zstdPush.per, mbps: mbps(set.segs, zstdPush.per),
			ratio: ratio(zstdPush.per, cpPush.per), stored: storedFraction(t, zstdOut, set.segs)})

		for _, a := range archives {
			for _, codec := range []string{"zstd", "s2", "gzip", "none"} {
				env := append(a.env(t), "WALSHIP_COMPRESS="+codec, "WALSHIP_CACHE_DIR="+t.TempDir(), "WALSHIP_LOG_LEVEL=debug")
				work := t.TempDir()
				push := timeEach(t, set.segs, func(seg string) *exec.Cmd {
					c := exec.Command(bin, "wal-push", seg)
					c.Env, c.Dir = append(os.Environ(), env...), work
					return c
				})
				storedBytes := push.stored
				rows = append(rows, row{what: "wal-push", data: set.name, backend: a.name, codec: codec, per: push.per, mbps: mbps(set.segs, push.per),
					ratio: ratio(push.per, cpPush.per), stored: storedBytes, rss: push.rss, reqs: push.perSegment(len(set.segs))})
				dest := filepath.Join(work, "RECOVERYXLOG")
				fetch := timeEach(t, set.segs, func(seg string) *exec.Cmd {
					c := exec.Command(bin, "wal-fetch", filepath.Base(seg), dest)
					c.Env, c.Dir = append(os.Environ(), env...), work
					return c
				}, func(seg string) {
					if !sameFile(t, seg, dest) {
						t.Fatalf("wal-fetch of %s returned other bytes", filepath.Base(seg))
					}
				})
				rows = append(rows, row{what: "wal-fetch", data: set.name, backend: a.name, codec: codec, per: fetch.per, mbps: mbps(set.segs, fetch.per),
					ratio: ratio(fetch.per, cpPush.per), rss: fetch.rss, reqs: fetch.perSegment(len(set.segs))})
			}
		}
	}
	printTable(rows)
}

type row struct {
	what, data, backend, codec string
	per                        time.Duration
	mbps                       float64
	ratio                      float64 // time relative to cp of the same file
	stored                     float64 // stored bytes / original bytes (0: not measured)
	rss                        int64   // peak resident set of one walship process, bytes
	reqs                       string  // storage requests per segment (S3)
}

func printTable(rows []row) {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "operation\tdata\tarchive\tcodec\tms/segment\tMB/s\ttime vs cp\tstored\tpeak RSS\trequests/segment\t")
	for _, r := range rows {
		stored, rss := "-", "-"
		if r.reqs == "" {
			r.reqs = "-"
		}
		if r.stored > 0 {
			stored = fmt.Sprintf("%.1f%%", 100*r.stored)
		}
		if r.rss > 0 {
			rss = fmt.Sprintf("%d MB", r.rss>>20)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.1f\t%.0f\t%.2fx\t%s\t%s\t%s\t\n", r.what, r.data, r.backend, r.codec,
			float64(r.per.Microseconds())/1000, r.mbps, r.ratio, stored, rss, r.reqs)
	}
	w.Flush()
}

type timing struct {
	per      time.Duration // mean time per segment
	stored   float64       // fraction of bytes stored, from walship's log
	rss      int64
	requests map[string]int64 // storage requests by kind, summed over the runs
}

// perSegment formats the requests per segment, e.g. "1.0 PUT".
func (tm timing) perSegment(n int) string {
	var parts []string
	for _, kind := range []string{"PUT", "GET", "HEAD", "LIST", "POST", "DELETE"} {
		if c := tm.requests[kind]; c > 0 {
			parts = append(parts, fmt.Sprintf("%.2f %s", float64(c)/float64(n), kind))
		}
	}
	return strings.Join(parts, " + ")
}

// timeEach runs one command per segment, one after the other as
// PostgreSQL's archiver does, and returns the mean time per segment.
func timeEach(t *testing.T, segs []string, command func(seg string) *exec.Cmd, check ...func(seg string)) timing {
	t.Helper()
	var total time.Duration
	var tm timing
	var in, out int64
	for _, seg := range segs {
		c := command(seg)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		start := time.Now()
		if err := c.Run(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c.Args, " "), err, stderr.String())
		}
		total += time.Since(start)
		s, st, rss := parseLog(stderr.String())
		in, out, tm.rss = in+s, out+st, max(tm.rss, rss)
		for kind, n := range parseRequests(stderr.String()) {
			if tm.requests == nil {
				tm.requests = map[string]int64{}
			}
			tm.requests[kind] += n
		}
		for _, f := range check {
			f(seg)
		}
	}
	tm.per = total / time.Duration(len(segs))
	if in > 0 {
		tm.stored = float64(out) / float64(in)
	}
	return tm
}

// parseRequests reads requests_put= and the like from walship's debug
// resources line.
func parseRequests(log string) map[string]int64 {
	out := map[string]int64{}
	for _, f := range strings.Fields(log) {
		if rest, ok := strings.CutPrefix(f, "requests_"); ok {
			kind, v, ok := strings.Cut(rest, "=")
			var n int64
			if ok {
				fmt.Sscan(v, &n)
				out[strings.ToUpper(kind)] += n
			}
		}
	}
	return out
}

// parseLog reads size=, stored= and peak_rss= from walship's log lines.
func parseLog(log string) (size, stored, rss int64) {
	for _, f := range strings.Fields(log) {
		for key, v := range map[string]*int64{"size=": &size, "stored=": &stored, "peak_rss=": &rss} {
			if s, found := strings.CutPrefix(f, key); found {
				fmt.Sscan(s, v)
			}
		}
	}
	return size, stored, rss
}

func mbps(segs []string, per time.Duration) float64 {
	st, _ := os.Stat(segs[0])
	return float64(st.Size()) / (1 << 20) / per.Seconds()
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func storedFraction(t *testing.T, dir string, segs []string) float64 {
	var in, out int64
	for _, seg := range segs {
		st, _ := os.Stat(seg)
		in += st.Size()
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		out += info.Size()
	}
	return float64(out) / float64(in)
}

func sameFile(t *testing.T, a, b string) bool {
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// buildWalship builds the binary where the PostgreSQL server user can run
// it (archive_command).
// skipUnlessBench skips a benchmark outside make bench.
func skipUnlessBench(t *testing.T) {
	t.Helper()
	if os.Getenv("WALSHIP_BENCH") == "" {
		t.Skip("set WALSHIP_BENCH=1 (make bench) to run the benchmark")
	}
}

func buildWalship(t *testing.T) string {
	bin := filepath.Join(pgtest.NewDir(t, "bin"), "walship")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/walship/walship/cmd/walship").CombinedOutput()
	if err != nil {
		t.Fatalf("build walship: %v\n%s", err, out)
	}
	return bin
}

// pgbenchWAL runs pgbench on a real PostgreSQL that archives with cp and
// returns up to maxSegments completed segments.
func pgbenchWAL(t *testing.T) []string {
	dir := pgtest.NewDir(t, "walcopy")
	c := pgtest.Start(t, pgtest.Options{Conf: map[string]string{
		"archive_mode":    "on",
		"archive_command": "cp %p " + dir + "/%f",
	}})
	c.Pgbench(t, "-i", "-s", "10", "-q")
	c.Pgbench(t, "-T", "15", "-c", "4", "-j", "2")
	last := c.Psql(t, "SELECT pg_walfile_name(pg_switch_wal())")
	c.WaitFor(t, fmt.Sprintf("SELECT coalesce(last_archived_wal, '') >= '%s' FROM pg_stat_archiver", last), "t", 2*time.Minute)
	matches, _ := filepath.Glob(filepath.Join(dir, "????????????????????????"))
	sort.Strings(matches)
	// Skip the first segments (initdb's), which are unlike steady-state WAL.
	if len(matches) > maxSegments+2 {
		matches = matches[len(matches)-maxSegments-1 : len(matches)-1]
	}
	return matches
}

// randomWAL makes n incompressible segments with valid headers.
func randomWAL(t *testing.T, n int) []string {
	dir := t.TempDir()
	var out []string
	for i := 0; i < n; i++ {
		name, data := waltest.Segment(7300000000000000099, 1, wal.SegNo(i+1), 16<<20, waltest.Incompressible(uint64(i)))
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out = append(out, path)
	}
	return out
}
