package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/walship/walship/internal/pgtest"
)

// TestBenchPromote times standby-promote on a pgbench database of about
// 1 GB (WALSHIP_BENCH_SCALE, default 70) with a file:// archive, after a
// pgbench run of WALSHIP_BENCH_PROMOTE_LOAD (default 30s): a planned
// promotion of a warm standby that followed the run (it lags by what the
// archive had not yet received), a planned promotion of one whose replay
// was paused for the whole run (resumed as the promotion starts: the time
// is mostly replaying the run's WAL), and a forced promotion of another
// paused one, which promotes without replaying it and reports it lost.
func TestBenchPromote(t *testing.T) {
	skipUnlessBench(t)
	scale := 70
	if v, err := strconv.Atoi(os.Getenv("WALSHIP_BENCH_SCALE")); err == nil && v > 0 {
		scale = v
	}
	load := 30 * time.Second
	if v, err := time.ParseDuration(os.Getenv("WALSHIP_BENCH_PROMOTE_LOAD")); err == nil && v > 0 {
		load = v
	}
	bin := buildWalship(t)
	env := []string{"WALSHIP_REPO=file://" + pgtest.NewDir(t, "archive")}
	c := pgtest.Start(t, pgtest.Options{
		Conf: map[string]string{"archive_mode": "on", "archive_command": bin + " wal-push %p", "max_wal_size": "4GB"},
		Env:  env,
	})
	c.Pgbench(t, "-i", "-s", strconv.Itoa(scale), "-q")
	c.Psql(t, "CHECKPOINT")
	size, _ := strconv.ParseInt(c.Psql(t, "SELECT pg_database_size('postgres')"), 10, 64)
	conn := func(c *pgtest.Cluster) string { return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port()) }
	run := func(what string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("%s: %v\n%s", what, err, stderr)
		}
		return out
	}
	run("backup-push", "backup-push", "--pg", conn(c))
	standby := func() *pgtest.Cluster {
		dir := filepath.Join(pgtest.NewDir(t, "standby"), "data")
		run("backup-fetch", "backup-fetch", "--standby", "LATEST", dir)
		s := pgtest.Start(t, pgtest.Options{DataDir: dir, NoWait: true, Env: env, Conf: map[string]string{"archive_mode": "off"}})
		s.WaitFor(t, "SELECT pg_is_in_recovery()", "t", 10*time.Minute)
		return s
	}
	planned, lagging, forced := standby(), standby(), standby()
	start := c.Psql(t, "SELECT pg_current_wal_lsn()")
	c.Psql(t, "SELECT pg_switch_wal()")
	for _, s := range []*pgtest.Cluster{planned, lagging, forced} {
		s.WaitFor(t, fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'", start), "t", 10*time.Minute)
	}
	lagging.Psql(t, "SELECT pg_wal_replay_pause()")
	forced.Psql(t, "SELECT pg_wal_replay_pause()")
	c.Pgbench(t, "-T", strconv.Itoa(int(load.Seconds())), "-c", "4", "-j", "2")
	end := c.Psql(t, "SELECT pg_current_wal_lsn()")
	walMB, _ := strconv.ParseFloat(c.Psql(t, fmt.Sprintf("SELECT ('%s'::pg_lsn - '%s') / 1048576", end, start)), 64)
	last := c.Psql(t, "SELECT pg_walfile_name(pg_switch_wal())")
	c.WaitFor(t, fmt.Sprintf("SELECT coalesce(last_archived_wal, '') >= '%s' FROM pg_stat_archiver", last), "t", 10*time.Minute)
	c.Stop(t)

	type outcome struct {
		WaitedMS  int64  `json:"waited_ms"`
		PromoteMS int64  `json:"promote_ms"`
		LostBytes int64  `json:"lost_bytes"`
		ForkLSN   string `json:"fork_lsn"`
	}
	promote := func(s *pgtest.Cluster, mode string) (outcome, float64, time.Duration) {
		t.Helper()
		behind, _ := strconv.ParseFloat(s.Psql(t, fmt.Sprintf("SELECT ('%s'::pg_lsn - pg_last_wal_replay_lsn()) / 1048576", end)), 64)
		if s.Psql(t, "SELECT pg_is_wal_replay_paused()") == "t" && mode == "planned" {
			s.Psql(t, "SELECT pg_wal_replay_resume()")
		}
		began := time.Now()
		out := run("standby-promote --"+mode, "standby-promote", "--"+mode, "--json", "--timeout", "30m", "--pg", conn(s), "--pgdata", s.DataDir())
		took := time.Since(began)
		var o outcome
		if err := json.Unmarshal(out, &o); err != nil {
			t.Fatalf("standby-promote --%s printed %q: %v", mode, out, err)
		}
		return o, behind, took
	}
	p, pBehind, pTook := promote(planned, "planned")
	if p.LostBytes != 0 {
		t.Fatalf("planned promotion lost %d bytes", p.LostBytes)
	}
	l, lBehind, lTook := promote(lagging, "planned")
	if l.LostBytes != 0 {
		t.Fatalf("planned promotion of the lagging standby lost %d bytes", l.LostBytes)
	}
	f, fBehind, fTook := promote(forced, "forced")
	if f.LostBytes == 0 {
		t.Fatal("the forced promotion of a standby paused during the whole run lost nothing: it replayed the archive")
	}

	fmt.Printf("\nstandby-promote, pgbench scale %d (%d MB database), %.0f MB of WAL in %s of pgbench, file:// archive\n", scale, size>>20, walMB, load)
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "promotion\tstandby behind\ttotal\twaiting to replay\tpg_promote\tWAL lost\t")
	fmt.Fprintf(w, "planned\t%.0f MB\t%.1f s\t%.1f s\t%.2f s\t%d MB\t\n", pBehind, pTook.Seconds(), float64(p.WaitedMS)/1000, float64(p.PromoteMS)/1000, p.LostBytes>>20)
	fmt.Fprintf(w, "planned, paused standby\t%.0f MB\t%.1f s\t%.1f s\t%.2f s\t%d MB\t\n", lBehind, lTook.Seconds(), float64(l.WaitedMS)/1000, float64(l.PromoteMS)/1000, l.LostBytes>>20)
	fmt.Fprintf(w, "forced\t%.0f MB\t%.1f s\t-\t%.2f s\t%d MB\t\n", fBehind, fTook.Seconds(), float64(f.PromoteMS)/1000, f.LostBytes>>20)
	w.Flush()
}
