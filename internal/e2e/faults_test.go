package e2e

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/wal"
)

const segSize16 = 16 << 20

// dataDir makes a directory that looks like the one PostgreSQL runs its
// hooks in; standby adds standby.signal.
func dataDir(t *testing.T, standby bool) string {
	dir := t.TempDir()
	if standby {
		if err := os.WriteFile(filepath.Join(dir, "standby.signal"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "pg_wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPushFetch covers the archive contract on both backends: round trip
// with every codec, identical re-push, conflicting re-push, WAL of another
// cluster, the exit codes of wal-fetch, and damaged objects.
func TestPushFetch(t *testing.T) {
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) {
			dir := dataDir(t, false)
			const sysID = 7300000000000000001
			var pushed []segment
			for i, codec := range []string{"zstd", "s2", "gzip", "none"} {
				seg := makeSegment(sysID, 1, wal.SegNo(1+i), segSize16, compressible(uint64(i)))
				path := writeSegment(t, dir, seg)
				walship(t, dir, b.env, append(b.args, "--compress", codec, "wal-push", path)...).mustSucceed(t, "wal-push "+codec)
				pushed = append(pushed, seg)
			}
			// Read back with the default codec configured: the others are
			// found by their extension.
			for _, seg := range pushed {
				dest := filepath.Join(dir, "pg_wal", "RECOVERYXLOG")
				walship(t, dir, b.env, append(b.args, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG")...).mustSucceed(t, "wal-fetch "+seg.name)
				if !bytes.Equal(readFile(t, dest), seg.data) {
					t.Fatalf("wal-fetch %s returned other bytes than were pushed", seg.name)
				}
			}

			t.Run("identical re-push succeeds", func(t *testing.T) {
				path := writeSegment(t, dir, pushed[0])
				r := walship(t, dir, b.env, append(b.args, "wal-push", path)...)
				r.mustSucceed(t, "second wal-push")
				if !strings.Contains(r.stderr, "already archived with identical content") {
					t.Fatalf("re-push did not say it found an identical copy:\n%s", r.stderr)
				}
			})
			t.Run("different content is refused", func(t *testing.T) {
				other := makeSegment(sysID, 1, 1, segSize16, compressible(99))
				path := writeSegment(t, dir, other)
				walship(t, dir, b.env, append(b.args, "wal-push", path)...).mustFail(t, "conflicting wal-push", 1, "split brain")
				walship(t, dir, b.env, append(b.args, "wal-fetch", pushed[0].name, "pg_wal/RECOVERYXLOG")...).mustSucceed(t, "wal-fetch")
				if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), pushed[0].data) {
					t.Fatal("the archived segment changed after a conflicting push")
				}
			})
			t.Run("another cluster is refused", func(t *testing.T) {
				foreign := makeSegment(sysID+1, 1, 9, segSize16, compressible(7))
				path := writeSegment(t, dir, foreign)
				walship(t, dir, b.env, append(b.args, "wal-push", path)...).mustFail(t, "foreign wal-push", 1, "another cluster")
				if b.exists(t, "wal/"+foreign.name+".zst") {
					t.Fatal("WAL of another cluster was stored")
				}
			})
			t.Run("wrong size and wrong page address are refused", func(t *testing.T) {
				short := makeSegment(sysID, 1, 20, segSize16, compressible(3))
				path := writeSegment(t, dir, segment{name: short.name, data: short.data[:segSize16/2]})
				walship(t, dir, b.env, append(b.args, "wal-push", path)...).mustFail(t, "short segment", 1, "bytes")
				moved := makeSegment(sysID, 1, 21, segSize16, compressible(3))
				path = writeSegment(t, dir, segment{name: wal.SegmentFileName(1, 22, segSize16), data: moved.data})
				walship(t, dir, b.env, append(b.args, "wal-push", path)...).mustFail(t, "misnamed segment", 1, "page address")
			})
			t.Run("wal-fetch exit codes", func(t *testing.T) {
				missing := wal.SegmentFileName(1, 500, segSize16)
				r := walship(t, dir, b.env, append(b.args, "wal-fetch", missing, "pg_wal/RECOVERYXLOG")...)
				if r.code != 1 {
					t.Fatalf("missing segment: exit %d, want 1\n%s", r.code, r.stderr)
				}
				walship(t, dir, b.env, append(b.args, "wal-fetch", "00000002.history", "pg_wal/RECOVERYHISTORY")...).mustFail(t, "missing history", 1, "not in the archive")
				for _, bad := range []string{"../../etc/passwd", "", "00000001000000000000000", "000000010000000000000001/../x", "00000001000000000000000g"} {
					walship(t, dir, b.env, append(b.args, "wal-fetch", bad, "pg_wal/RECOVERYXLOG")...).mustFail(t, "wal-fetch "+bad, 2, "")
				}
				if _, err := os.Stat(filepath.Join(dir, "pg_wal", "RECOVERYXLOG")); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("damaged objects are never served", func(t *testing.T) {
				damage := map[string]func([]byte) []byte{
					"truncated":  func(b []byte) []byte { return b[:len(b)/2] },
					"bit flip":   func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b },
					"empty body": func([]byte) []byte { return nil },
				}
				i := 0
				for what, mutate := range damage {
					seg := makeSegment(sysID, 1, wal.SegNo(40+i), segSize16, compressible(uint64(40+i)))
					i++
					path := writeSegment(t, dir, seg)
					walship(t, dir, b.env, append(b.args, "--compress", "none", "wal-push", path)...).mustSucceed(t, "wal-push")
					b.corrupt(t, "wal/"+seg.name, mutate)
					dest := filepath.Join(dir, "pg_wal", "RECOVERYXLOG")
					os.Remove(dest)
					walship(t, dir, b.env, append(b.args, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG")...).mustFail(t, what+" object", 255, seg.name)
					if _, err := os.Stat(dest); err == nil {
						t.Fatalf("%s object: a file reached %s", what, dest)
					}
					standby := dataDir(t, true)
					walship(t, standby, b.env, append(b.args, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG")...).mustFail(t, what+" object on a standby", 1, seg.name)
				}
				leftovers, _ := filepath.Glob(filepath.Join(dir, "pg_wal", ".walship-*"))
				if len(leftovers) > 0 {
					t.Fatalf("temporary files left in pg_wal: %v", leftovers)
				}
			})
			t.Run("flag after the arguments is refused", func(t *testing.T) {
				path := writeSegment(t, dir, pushed[0])
				walship(t, dir, b.env, append(b.args, "wal-push", path, "--compress", "gzip")...).mustFail(t, "late flag", 2, "must come before")
			})
		})
	}
}

// TestConfigErrorsDuringRecovery: a DR restore with a broken configuration
// must stop, not promote: wal-fetch exits above 125 (1 on a standby).
func TestConfigErrorsDuringRecovery(t *testing.T) {
	name := wal.SegmentFileName(1, 1, segSize16)
	for _, tc := range []struct {
		what      string
		env       []string
		args      []string
		pushFails bool // wal-push exits 2 as well
	}{
		{"no repo", nil, nil, true},
		{"unreadable config", []string{"WALSHIP_CONFIG=/nonexistent/walship.conf"}, nil, true},
		{"unknown scheme", []string{"WALSHIP_REPO=ftp://x/y"}, nil, true},
		{"relative path", []string{"WALSHIP_REPO=file://archive"}, nil, true},
		{"unknown flag", []string{"WALSHIP_REPO=file:///tmp"}, []string{"--no-such-flag"}, true},
		// A push into an empty archive is how an archive starts.
		{"empty archive (wrong path)", []string{"WALSHIP_REPO=file://" + t.TempDir()}, nil, false},
	} {
		t.Run(tc.what, func(t *testing.T) {
			r := walship(t, dataDir(t, false), tc.env, append(tc.args, "wal-fetch", name, "pg_wal/RECOVERYXLOG")...)
			if r.code != 255 {
				t.Fatalf("exit %d, want 255:\n%s", r.code, r.stderr)
			}
			r = walship(t, dataDir(t, true), tc.env, append(tc.args, "wal-fetch", name, "pg_wal/RECOVERYXLOG")...)
			if r.code != 1 {
				t.Fatalf("on a standby: exit %d, want 1:\n%s", r.code, r.stderr)
			}
			if !tc.pushFails {
				return
			}
			r = walship(t, dataDir(t, false), tc.env, append(tc.args, "wal-push", "pg_wal/"+name)...)
			if r.code != 2 {
				t.Fatalf("wal-push: exit %d, want 2:\n%s", r.code, r.stderr)
			}
		})
	}
}

// TestStorageDown: with MinIO stopped, wal-push fails within its time
// limit (PostgreSQL retries it), wal-fetch refuses to pass the outage off
// as "not found", and everything works again once MinIO is back.
func TestStorageDown(t *testing.T) {
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	srv := s3test.Start(t)
	b := s3Backend(t, srv)
	dir := dataDir(t, false)
	seg1 := makeSegment(7300000000000000002, 1, 1, segSize16, compressible(1))
	seg2 := makeSegment(7300000000000000002, 1, 2, segSize16, compressible(2))
	walship(t, dir, b.env, append(b.args, "wal-push", writeSegment(t, dir, seg1))...).mustSucceed(t, "wal-push")

	srv.Stop(t)
	fast := append(b.args, "--storage-timeout", "2s", "--storage-retries", "3")
	r := walship(t, dir, b.env, append(fast, "wal-push", writeSegment(t, dir, seg2))...)
	if r.code != 1 {
		t.Fatalf("wal-push with storage down: exit %d, want 1\n%s", r.code, r.stderr)
	}
	if r.took > 30*time.Second {
		t.Fatalf("wal-push with storage down took %v; the time limit is 3 attempts of 2s", r.took)
	}
	walship(t, dir, b.env, append(fast, "wal-fetch", seg1.name, "pg_wal/RECOVERYXLOG")...).mustFail(t, "wal-fetch, storage down", 255, "")
	walship(t, dataDir(t, true), b.env, append(fast, "wal-fetch", seg1.name, "pg_wal/RECOVERYXLOG")...).mustFail(t, "wal-fetch on a standby, storage down", 1, "")

	srv.Restart(t)
	walship(t, dir, b.env, append(b.args, "wal-push", writeSegment(t, dir, seg2))...).mustSucceed(t, "wal-push after restart")
	walship(t, dir, b.env, append(b.args, "wal-fetch", seg2.name, "pg_wal/RECOVERYXLOG")...).mustSucceed(t, "wal-fetch after restart")
	if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), seg2.data) {
		t.Fatal("segment pushed after the outage reads back different")
	}
}

// TestKillDuringPush: wal-push killed with SIGKILL at random moments never
// leaves an object that counts as archived but is incomplete: afterwards
// the name is either absent or fetches back intact, and a new push
// completes the job.
func TestKillDuringPush(t *testing.T) {
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	const size = 64 << 20 // large enough that a kill lands mid-upload
	r := rand.New(rand.NewPCG(42, 42))
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) {
			dir := dataDir(t, false)
			var absent, complete int
			for i := 0; i < 12; i++ {
				seg := makeSegment(7300000000000000003, 1, wal.SegNo(i+1), size, incompressible(uint64(i)))
				path := writeSegment(t, dir, seg)
				cmd := exec.Command(walshipBin, append(b.args, "--compress", "none", "wal-push", path)...)
				cmd.Dir, cmd.Env = dir, append(baseEnv(), b.env...)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				// A random moment to crash at, not a synchronisation.
				time.Sleep(time.Duration(r.IntN(1500)) * time.Millisecond)
				kill9(cmd.Process)

				if !b.exists(t, "wal/"+seg.name) {
					absent++
				} else {
					complete++
					walship(t, dir, b.env, append(b.args, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG")...).mustSucceed(t, "wal-fetch after kill")
					if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), seg.data) {
						t.Fatalf("kill %d: the stored object is not the complete segment", i)
					}
				}
				// Like PostgreSQL's archiver, try again until it works.
				start := time.Now()
				var r result
				for try := 0; try < 30; try++ {
					if r = walship(t, dir, b.env, append(b.args, "--compress", "none", "wal-push", path)...); r.code == 0 {
						break
					}
				}
				r.mustSucceed(t, "wal-push after kill")
				t.Logf("kill %d: re-push done after %v", i, time.Since(start).Round(time.Millisecond))
				walship(t, dir, b.env, append(b.args, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG")...).mustSucceed(t, "wal-fetch")
				if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), seg.data) {
					t.Fatalf("kill %d: segment reads back different after the re-push", i)
				}
			}
			t.Logf("%d kills left no object, %d a complete one", absent, complete)
		})
	}
}

// TestDestinationErrors: a destination wal-fetch cannot write gives a clear
// error and the fatal code, never "not found".
func TestDestinationErrors(t *testing.T) {
	b := fileBackend(t)
	dir := dataDir(t, false)
	seg := makeSegment(7300000000000000004, 1, 1, segSize16, compressible(1))
	walship(t, dir, b.env, "wal-push", writeSegment(t, dir, seg)).mustSucceed(t, "wal-push")

	walship(t, dir, b.env, "wal-fetch", seg.name, "no/such/dir/RECOVERYXLOG").mustFail(t, "missing directory", 255, "no such file or directory")

	// A full and a read-only file system, where this machine lets us
	// mount one.
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.MkdirAll(mnt, 0o700)
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).Run(); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v): full and read-only destinations not tested", err)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	walship(t, dir, b.env, "wal-fetch", seg.name, filepath.Join(mnt, "RECOVERYXLOG")).mustFail(t, "full file system", 255, "no space left")
	if entries, _ := os.ReadDir(mnt); len(entries) != 0 {
		t.Fatalf("a full destination kept %d files", len(entries))
	}
	if err := exec.Command("mount", "-o", "remount,ro", mnt).Run(); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	walship(t, dir, b.env, "wal-fetch", seg.name, filepath.Join(mnt, "RECOVERYXLOG")).mustFail(t, "read-only file system", 255, "read-only")
}

// TestConcurrentIdenticalPush: standbys with archive_mode = always push
// the same segments into one archive at the same moment, the first of
// them into an archive that has no identity yet: every push succeeds and
// the archive holds the segment once, intact.
func TestConcurrentIdenticalPush(t *testing.T) {
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	for _, newBackend := range backends() {
		b := newBackend(t)
		t.Run(b.name, func(t *testing.T) {
			seg := makeSegment(7300000000000000005, 1, 1, segSize16, compressible(5))
			const pushers = 6
			cmds := make([]*exec.Cmd, pushers)
			outs := make([]*bytes.Buffer, pushers)
			for i := range cmds {
				dir := dataDir(t, false)
				cmds[i] = exec.Command(walshipBin, append(b.args, "wal-push", writeSegment(t, dir, seg))...)
				cmds[i].Dir, cmds[i].Env = dir, append(baseEnv(), b.env...)
				outs[i] = new(bytes.Buffer)
				cmds[i].Stderr = outs[i]
			}
			for _, c := range cmds {
				if err := c.Start(); err != nil {
					t.Fatal(err)
				}
			}
			for i, c := range cmds {
				if err := c.Wait(); err != nil {
					t.Fatalf("pusher %d: %v\n%s", i, err, outs[i])
				}
			}
			dir := dataDir(t, false)
			walship(t, dir, b.env, append(b.args, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG")...).mustSucceed(t, "wal-fetch")
			if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), seg.data) {
				t.Fatal("segment reads back different")
			}
		})
	}
}
