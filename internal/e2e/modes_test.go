package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/restore"
	"github.com/walship/walship/wal"
)

// TestFileModes: everything walship creates — the file:// archive, the
// look-ahead markers of wal-push --parallel, the identity caches, a
// restored data directory with its recovery settings, the prefetch spool
// of wal-fetch, the wal-stream spool — has PostgreSQL's modes exactly,
// for a default cluster (0700/0600) and one made with initdb
// --allow-group-access (0750/0640), although every walship process runs
// with umask 0022. PostgreSQL, which refuses a data directory of any
// other mode, starts on the restored copy and replays to the primary's
// data.
func TestFileModes(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, group := range []bool{false, true} {
		name := "owner-only"
		if group {
			name = "group-access"
		}
		t.Run(name, func(t *testing.T) { fileModes(t, group) })
	}
}

// umask0022 runs walship with umask 0022, as from a login shell or cron,
// not with the umask PostgreSQL gives the commands it runs.
const umask0022 = `umask 0022; exec "$0" "$@"`

// hookUmask0022 is the same for archive_command and restore_command.
const hookUmask0022 = "umask 0022; exec "

func fileModes(t *testing.T, group bool) {
	want := modeRule{dir: 0o700, file: 0o600}
	var initdb []string
	if group {
		want = modeRule{dir: 0o750, file: 0o640, group: true}
		initdb = []string{"--allow-group-access"}
	}
	b := fileBackend(t)
	archiveDir := strings.TrimPrefix(b.repo, "file://")
	// The archive follows its directory's mode, as a data directory does.
	if err := os.Chmod(archiveDir, want.dir); err != nil {
		t.Fatal(err)
	}
	// Caches: one for the server's walship processes, one for those run
	// by hand (as root when the tests run as root). Neither exists yet.
	serverCache := filepath.Join(pgtest.NewDir(t, "servercache"), "xdg")
	handCache := filepath.Join(t.TempDir(), "xdg")
	serverEnv := append(serverEnv(b), "XDG_CACHE_HOME="+serverCache)
	handEnv := append(append([]string{}, b.env...), "XDG_CACHE_HOME="+handCache)

	pause := filepath.Join(pgtest.NewDir(t, "pause"), "pause")
	primary := pgtest.Start(t, pgtest.Options{
		Major:      15,
		InitdbArgs: initdb,
		Env:        serverEnv,
		Conf: map[string]string{
			"archive_mode": "on",
			// While the pause file exists, the archiver waits in its
			// command, and .ready files pile up for the look-ahead.
			"archive_command": fmt.Sprintf("while [ -e %s ]; do sleep 0.02; done; %s%s wal-push --parallel 4 %%p", pause, hookUmask0022, walshipBin),
		},
	})
	t.Cleanup(func() { os.Remove(pause) }) // before the server stops
	if got := modeOf(t, primary.DataDir()); got != want.dir {
		t.Fatalf("initdb made a data directory of mode %04o, want %04o", got, want.dir)
	}
	primary.Psql(t, "CREATE TABLE modes_check AS SELECT g FROM generate_series(1, 1000) g")
	primary.Pgbench(t, "-i", "-s", "2", "-q")
	waitArchived(t, primary)

	r := walshipAs(t, nil, t.TempDir(), handEnv, "backup-push", "--wal-timeout", "2m", "--pg", pgConn(primary))
	r.mustSucceed(t, "backup-push")

	t.Run("look-ahead markers", func(t *testing.T) {
		if err := os.WriteFile(pause, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 4; i++ {
			primary.Psql(t, fmt.Sprintf("INSERT INTO modes_check VALUES (%d)", 2000+i))
			switchWAL(t, primary)
		}
		status := filepath.Join(primary.DataDir(), "pg_wal", "archive_status")
		var ready []string
		waitUntil(t, time.Minute, "4 segments wait in archive_status", func() bool {
			ready = readyFiles(t, status)
			return len(ready) >= 4
		})
		// By hand, as the server's user, while the archiver waits: the
		// files after the first get pushed ahead and keep their markers.
		r := walshipAs(t, primary, primary.DataDir(), serverEnv, "wal-push", "--parallel", "4", filepath.Join("pg_wal", ready[0]))
		r.mustSucceed(t, "wal-push --parallel 4")
		markers := filepath.Join(primary.DataDir(), archive.AheadDirName)
		got := want.check(t, markers)
		for _, name := range ready[1:4] {
			if !got[name] {
				t.Errorf("look-ahead left markers %v, want one for each of %v", keys(got), ready[1:4])
			}
		}
		if err := os.Remove(pause); err != nil {
			t.Fatal(err)
		}
		waitArchived(t, primary)
	})

	dir := filepath.Join(pgtest.NewDir(t, "restore"), "data")
	walshipAs(t, nil, t.TempDir(), handEnv, "backup-fetch", "--standby", "LATEST", dir).mustSucceed(t, "backup-fetch")

	t.Run("restored directory", func(t *testing.T) {
		got := want.check(t, dir)
		for _, name := range []string{".", "global/pg_control", "postgresql.auto.conf", "standby.signal", "backup_manifest", "backup_label", "pg_wal", "base"} {
			if !got[name] {
				t.Errorf("the restored directory has no %s", name)
			}
		}
	})

	// restore_command as backup-fetch wrote it, run with umask 0022.
	conf := filepath.Join(dir, "postgresql.auto.conf")
	text := string(readFile(t, conf))
	if !strings.Contains(text, "restore_command = '"+walshipBin) {
		t.Fatalf("postgresql.auto.conf has no restore_command running %s:\n%s", walshipBin, text)
	}
	text = strings.Replace(text, "restore_command = '", "restore_command = '"+hookUmask0022, 1)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil { // keeps the file's mode
		t.Fatal(err)
	}

	standby := pgtest.Start(t, pgtest.Options{
		Major: 15, DataDir: dir, KeepDataDirMode: true, NoWait: true, Env: serverEnv,
		Conf: map[string]string{"archive_mode": "off"},
	})
	standby.WaitFor(t, "SELECT count(*) FROM modes_check", "1004", 3*time.Minute)
	if got := modeOf(t, dir); got != want.dir {
		t.Errorf("the data directory has mode %04o after PostgreSQL started, want %04o", got, want.dir)
	}

	t.Run("prefetch spool", func(t *testing.T) {
		spool := filepath.Join(dir, restore.SpoolName)
		// The standby asks for the segment after the archive's last one:
		// the answer "not archived" is remembered in the spool.
		waitUntil(t, 2*time.Minute, "the prefetch spool records a segment not archived yet", func() bool {
			entries, _ := os.ReadDir(filepath.Join(spool, "absent"))
			return len(entries) > 0
		})
		got := want.check(t, spool)
		for _, name := range []string{".", "lock", "boot", "want", "absent"} {
			if !got[name] {
				t.Errorf("the prefetch spool has no %s (it holds %v)", name, keys(got))
			}
		}
		if n := countLines(t, standby.Log(), "(prefetched)"); n == 0 {
			t.Log("no segment came from the prefetcher (recovery was faster than the downloads)")
		}
	})
	t.Run("whole data directories", func(t *testing.T) {
		// PostgreSQL's own files and the test harness's are there too:
		// no world bits anywhere, group bits only with group access.
		want.checkLoose(t, dir)
		want.checkLoose(t, primary.DataDir())
	})

	t.Run("wal-stream spool", func(t *testing.T) {
		spool := filepath.Join(pgtest.NewDir(t, "stream"), "spool")
		args := []string{"wal-stream", "--pg", pgConn(primary), "--spool", spool, "--slot", "walship_modes", "--create-slot"}
		cmd := exec.Command("/bin/sh", append([]string{"-c", umask0022, walshipBin}, args...)...)
		cmd.Env = append(baseEnv(), serverEnv...)
		cmd.Dir = filepath.Dir(spool)
		primary.RunAsServerUser(cmd)
		ws := &walStream{service: startService(t, "wal-stream", cmd, syscall.SIGTERM), b: b, spool: spool}
		ws.waitStreaming(t)
		primary.Psql(t, "INSERT INTO modes_check VALUES (3000)")
		last := switchWAL(t, primary)
		waitArchived(t, primary)
		ws.waitStatus(t, 2*time.Minute, "archived "+last, func(st streamStatus) bool { return st.Archived >= last })
		ws.stop(t)
		// Not in a data directory: the user's alone, whatever the cluster.
		got := modeRule{dir: 0o700, file: 0o600}.check(t, spool)
		for _, name := range []string{".", "walship-stream.lock", "walship-stream.status", "ready"} {
			if !got[name] {
				t.Errorf("the wal-stream spool has no %s (it holds %v)", name, keys(got))
			}
		}
	})

	t.Run("archive and caches", func(t *testing.T) {
		got := want.check(t, archiveDir)
		if len(got) < 10 {
			t.Fatalf("the archive holds only %v", keys(got))
		}
		owner := modeRule{dir: 0o700, file: 0o600}
		for _, cache := range []string{serverCache, handCache} {
			got := owner.check(t, cache)
			if !got["walship"] || len(got) < 3 {
				t.Errorf("cache %s holds %v, want walship/ and an identity file", cache, keys(got))
			}
		}
	})
}

// modeRule is what modes the entries of a tree must have.
type modeRule struct {
	dir, file fs.FileMode
	group     bool
}

// check walks root and requires every directory to have mode r.dir and
// every file r.file, exactly; symbolic links are not followed. Entries
// that vanish during the walk (a spool at work) are skipped. It returns
// the paths seen, relative to root.
func (r modeRule) check(t *testing.T, root string) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		seen[rel] = true
		want := r.file
		switch {
		case fi.IsDir():
			want = r.dir
		case !fi.Mode().IsRegular():
			return nil
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return seen
}

// checkLoose walks root and requires that nothing is accessible to
// others, and nothing to the group without group access.
func (r modeRule) checkLoose(t *testing.T, root string) {
	t.Helper()
	forbidden := fs.FileMode(0o077)
	if r.group {
		forbidden = 0o027
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&forbidden != 0 {
			t.Errorf("%s has mode %04o: bits %04o must not be set", path, fi.Mode().Perm(), fi.Mode().Perm()&forbidden)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func modeOf(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// readyFiles lists the WAL files archive_status marks ready, in the
// order PostgreSQL archives them (and look-ahead pushes them).
func readyFiles(t *testing.T, status string) []string {
	t.Helper()
	entries, err := os.ReadDir(status)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		// Every WAL file, not only segments: a .backup file that
		// backup-push left waiting is pushed ahead like the others.
		if name, ok := strings.CutSuffix(e.Name(), ".ready"); ok {
			if _, err := wal.ParseFileName(name); err == nil {
				names = append(names, name)
			}
		}
	}
	sort.Slice(names, func(i, j int) bool { return wal.ArchiveLess(names[i], names[j]) })
	return names
}

// walshipAs runs walship with umask 0022 in dir, as the server's OS user
// when c is set (else as the test's user), with env added to a clean
// environment.
func walshipAs(t *testing.T, c *pgtest.Cluster, dir string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c", umask0022, walshipBin}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(baseEnv(), env...)
	if c != nil {
		c.RunAsServerUser(cmd)
	}
	return run(t, cmd)
}
