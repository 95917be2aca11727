package bench

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
)

// TestBenchStream runs walship wal-stream and pg_receivewal side by side
// against one primary under pgbench (WALSHIP_BENCH_STREAM_SECONDS, default
// 30) and prints, for each, the replication lag the server sees (bytes
// behind its WAL end and flush_lag, sampled every 100 ms), CPU time and
// peak resident memory.
func TestBenchStream(t *testing.T) {
	skipUnlessBench(t)
	seconds := 30
	if v, err := strconv.Atoi(os.Getenv("WALSHIP_BENCH_STREAM_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	bin := buildWalship(t)
	archiveDir := pgtest.NewDir(t, "archive")
	spool := pgtest.NewDir(t, "spool")
	recv := pgtest.NewDir(t, "receivewal")
	c := pgtest.Start(t, pgtest.Options{Conf: map[string]string{"max_wal_size": "2GB"}})
	c.Pgbench(t, "-i", "-s", "20", "-q")
	c.Psql(t, "SELECT pg_create_physical_replication_slot('bench_walship', true), pg_create_physical_replication_slot('bench_receivewal', true)")
	conn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Port())

	start := func(cmd *exec.Cmd) *exec.Cmd {
		t.Helper()
		c.RunAsServerUser(cmd)
		log, err := os.Create(pgtest.NewDir(t, "log") + "/out")
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		})
		return cmd
	}
	ws := exec.Command(bin, "--repo", "file://"+archiveDir, "wal-stream", "--pg", conn+" application_name=bench_walship",
		"--slot", "bench_walship", "--spool", spool)
	start(ws)
	rw := exec.Command(pgtest.ClientBin("pg_receivewal"), "-D", recv, "-d", conn+" application_name=bench_receivewal",
		"--slot", "bench_receivewal", "-n")
	start(rw)
	c.WaitFor(t, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", "2", time.Minute)

	type sample struct{ bytes, ms float64 }
	stats := map[string][]sample{}
	cpu0 := map[string]float64{"bench_walship": cpuSeconds(ws.Process.Pid), "bench_receivewal": cpuSeconds(rw.Process.Pid)}
	load := exec.Command(pgtest.ClientBin("pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres",
		"-T", strconv.Itoa(seconds), "-c", "4", "-j", "2", "postgres")
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- load.Wait() }()
	wallStart := time.Now()
poll:
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("pgbench: %v", err)
			}
			break poll
		case <-time.After(100 * time.Millisecond):
		}
		out := c.Psql(t, `SELECT application_name, pg_current_wal_lsn() - flush_lsn,
			coalesce(extract(epoch FROM flush_lag) * 1000, 0) FROM pg_stat_replication`)
		for _, line := range strings.Split(out, "\n") {
			f := strings.Split(line, "|")
			if len(f) != 3 {
				continue
			}
			b, _ := strconv.ParseFloat(f[1], 64)
			ms, _ := strconv.ParseFloat(f[2], 64)
			stats[f[0]] = append(stats[f[0]], sample{b, ms})
		}
	}
	wall := time.Since(wallStart).Seconds()
	walMB, _ := strconv.ParseFloat(c.Psql(t, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"), 64)

	fmt.Printf("\nwal-stream vs pg_receivewal, pgbench -c 4 for %d s (%.0f MB of WAL in all; lag sampled every 100 ms)\n", seconds, walMB/(1<<20))
	fmt.Printf("%-16s %14s %14s %12s %12s %10s %10s\n", "receiver", "mean lag", "max lag", "mean flush", "max flush", "CPU", "peak RSS")
	for _, who := range []struct {
		name string
		pid  int
	}{{"bench_walship", ws.Process.Pid}, {"bench_receivewal", rw.Process.Pid}} {
		var sumB, maxB, sumMs, maxMs float64
		for _, s := range stats[who.name] {
			sumB, sumMs = sumB+s.bytes, sumMs+s.ms
			maxB, maxMs = max(maxB, s.bytes), max(maxMs, s.ms)
		}
		n := float64(max(1, len(stats[who.name])))
		cpu := cpuSeconds(who.pid) - cpu0[who.name]
		fmt.Printf("%-16s %11.0f kB %11.0f kB %9.1f ms %9.1f ms %9.1f%% %7d MB\n", strings.TrimPrefix(who.name, "bench_"),
			sumB/n/1024, maxB/1024, sumMs/n, maxMs, 100*cpu/wall, peakRSS(who.pid)>>20)
	}
}

// cpuSeconds is the user and system CPU time process pid used so far.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // clock ticks (USER_HZ = 100 on Linux)
}

// peakRSS is process pid's peak resident set (VmHWM), in bytes.
func peakRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
