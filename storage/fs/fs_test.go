package fs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/storagetest"
)

func newTest(t *testing.T) *Storage {
	t.Helper()
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return newTest(t) })
}

func TestHeaderFormat(t *testing.T) {
	s := newTest(t)
	meta := map[string]string{"walship-sha256": "ab12", "walship-codec": "zstd", "walship-note": `quote " back\slash {}`}
	content := []byte("line one\n#walship-meta {}\nline three")
	if err := s.Put(t.Context(), "wal/seg", bytes.NewReader(content), int64(len(content)), meta); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(s.dir, "wal", "seg"))
	if err != nil {
		t.Fatal(err)
	}
	want := `#walship-meta {"walship-codec":"zstd","walship-note":"quote \" back\\slash {}","walship-sha256":"ab12"}` + "\n" + string(content)
	if string(raw) != want {
		t.Errorf("file content:\n%q\nwant\n%q", raw, want)
	}

	// A file written by hand in the documented format reads back.
	hand := "#walship-meta {\"walship-sha256\":\"ff\"}\nhello"
	if err := os.WriteFile(filepath.Join(s.dir, "wal", "hand"), []byte(hand), 0o600); err != nil {
		t.Fatal(err)
	}
	rc, info, err := s.Get(t.Context(), "wal/hand")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "hello" || info.Size != 5 || info.Metadata["walship-sha256"] != "ff" {
		t.Errorf("Get of a hand-written object: %q, %+v", got, info)
	}

	// No metadata gives an empty object header.
	if err := s.Put(t.Context(), "empty", bytes.NewReader(nil), 0, nil); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(filepath.Join(s.dir, "empty")); string(raw) != "#walship-meta {}\n" {
		t.Errorf("zero-byte object without metadata is stored as %q", raw)
	}
}

func TestNotAnObject(t *testing.T) {
	s := newTest(t)
	for name, content := range map[string]string{
		"plain":     "000000010000000000000001 raw WAL",
		"empty":     "",
		"truncated": `#walship-meta {"walship-sha256":`,
		"badjson":   "#walship-meta [1,2]\ndata",
		"long":      "#walship-meta " + strings.Repeat("x", maxHeader+10),
	} {
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := s.Stat(t.Context(), name)
		if err == nil || errors.Is(err, storage.ErrNotExist) || !storage.IsPermanent(err) || !strings.Contains(err.Error(), "not a walship object") {
			t.Errorf("Stat of a %s file: %v, want a permanent \"not a walship object\" error", name, err)
		}
	}
}

func TestKeyEscapesRejected(t *testing.T) {
	outside := t.TempDir()
	root := filepath.Join(outside, "archive")
	s, err := Create(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"",
		"../escape",
		"wal/../../escape",
		"..",
		"/etc/passwd",
		"/",
		"wal//x",
		"wal/",
		"wal/x/",
		`wal\..\escape`,
		"wal/x\x00y",
		"./x",
		"wal/.hidden",
		".walship-tmp-123",
		"a..b",
	} {
		data := []byte("x")
		err := s.Put(t.Context(), key, bytes.NewReader(data), 1, nil)
		if err == nil || !storage.IsPermanent(err) || errors.Is(err, storage.ErrExist) {
			t.Errorf("Put(%q): %v, want a permanent invalid-key error", key, err)
		}
		if _, err := s.Stat(t.Context(), key); err == nil || errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Stat(%q): %v, want an invalid-key error, not ErrNotExist", key, err)
		}
		if err := s.Delete(t.Context(), key); err == nil {
			t.Errorf("Delete(%q) succeeded, want an invalid-key error", key)
		}
	}
	for _, prefix := range []string{"../", "/", `wal\`, "wal//"} {
		if err := s.List(t.Context(), prefix, func(storage.ObjectInfo) error { return nil }); err == nil {
			t.Errorf("List(%q) succeeded, want an invalid-prefix error", prefix)
		}
	}
	entries, _ := os.ReadDir(outside)
	if len(entries) != 1 {
		t.Errorf("something was written next to the archive directory: %v", entries)
	}
}

// TestModes: what the archive creates is 0700/0600, or 0750/0640 in an
// archive directory that grants its group access, whatever the umask.
func TestModes(t *testing.T) {
	for _, tc := range []struct {
		root      os.FileMode
		dir, file os.FileMode
	}{
		{0o700, 0o700, 0o600},
		{0o755, 0o750, 0o640}, // never world-readable below it
		{0o750, 0o750, 0o640},
		{0o710, 0o700, 0o600},
	} {
		for _, mask := range []int{0o022, 0o077, 0o000} {
			s := newTest(t)
			if err := os.Chmod(s.dir, tc.root); err != nil {
				t.Fatal(err)
			}
			s, err := New(s.dir)
			if err != nil {
				t.Fatal(err)
			}
			old := syscall.Umask(mask)
			err = s.Put(t.Context(), "basebackups/b/meta.json", bytes.NewReader([]byte("{}")), 2, nil)
			if err == nil {
				_, err = s.PutStream(t.Context(), "wal/x/000000010000000000000001", strings.NewReader("stream"), nil)
			}
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			for path, want := range map[string]os.FileMode{
				"basebackups":                    os.ModeDir | tc.dir,
				"basebackups/b":                  os.ModeDir | tc.dir,
				"basebackups/b/meta.json":        tc.file,
				"wal/x":                          os.ModeDir | tc.dir,
				"wal/x/000000010000000000000001": tc.file,
			} {
				fi, err := os.Stat(filepath.Join(s.dir, path))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != want {
					t.Errorf("archive directory %04o, umask %04o: %s has mode %v, want %v", tc.root, mask, path, fi.Mode(), want)
				}
			}
		}
	}
}

func TestTempFiles(t *testing.T) {
	s := newTest(t)
	put := func(key string) {
		t.Helper()
		if err := s.Put(t.Context(), key, bytes.NewReader([]byte("data")), 4, nil); err != nil {
			t.Fatal(err)
		}
	}
	put("wal/000000010000000000000001")
	// What a writer killed before link, or between link and unlink,
	// leaves behind: a temporary file, fresh or old.
	fresh := filepath.Join(s.dir, "wal", tempPrefix+"fresh")
	stale := filepath.Join(s.dir, "wal", tempPrefix+"stale")
	other := filepath.Join(s.dir, "wal", ".operator-notes")
	for _, p := range []string{fresh, stale, other} {
		if err := os.WriteFile(p, []byte("#walship-meta {}\npartial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(other, old, old); err != nil {
		t.Fatal(err)
	}

	var keys []string
	if err := s.List(t.Context(), "", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "wal/000000010000000000000001" {
		t.Errorf("List returned %q; temporary files must not be listed", keys)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a fresh temporary file (a Put in progress) was removed: %v", err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a temporary file untouched for two hours was not swept: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a dot file that walship did not write was removed: %v", err)
	}

	// A successful Put leaves no temporary file.
	put("wal/000000010000000000000002")
	entries, _ := os.ReadDir(filepath.Join(s.dir, "wal"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) && e.Name() != filepath.Base(fresh) {
			t.Errorf("Put left %s behind", e.Name())
		}
	}
	// Nor does a failed one.
	if err := s.Put(t.Context(), "wal/000000010000000000000002", bytes.NewReader([]byte("data")), 4, nil); !errors.Is(err, storage.ErrExist) {
		t.Fatalf("second Put: %v", err)
	}
	if err := s.Put(t.Context(), "wal/000000010000000000000003", bytes.NewReader([]byte("da")), 4, nil); err == nil {
		t.Fatal("Put of a short body succeeded")
	}
	entries, _ = os.ReadDir(filepath.Join(s.dir, "wal"))
	if len(entries) != 4 { // two objects, fresh, other
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("wal/ holds %q after failed Puts", names)
	}
}

func TestDeleteRemovesEmptyDirectories(t *testing.T) {
	s := newTest(t)
	for _, key := range []string{"basebackups/b1/data/base.tar", "basebackups/b2/meta.json"} {
		if err := s.Put(t.Context(), key, bytes.NewReader(nil), 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(t.Context(), "basebackups/b1/data/base.tar"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "basebackups", "b1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("empty backup directory left behind: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "basebackups", "b2", "meta.json")); err != nil {
		t.Errorf("sibling removed: %v", err)
	}
	if err := s.Delete(t.Context(), "basebackups/b2/meta.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.dir); err != nil {
		t.Errorf("the archive directory itself was removed: %v", err)
	}
	// A "directory" key is not an object: Delete leaves it alone.
	if err := s.Put(t.Context(), "a/b", bytes.NewReader(nil), 0, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(t.Context(), "a"); err != nil {
		t.Errorf("Delete of a directory name: %v, want nil", err)
	}
	if _, err := s.Stat(t.Context(), "a/b"); err != nil {
		t.Errorf("Delete of a directory name removed what it holds: %v", err)
	}
}

func TestConflictingKeys(t *testing.T) {
	s := newTest(t)
	if err := s.Put(t.Context(), "a/b", bytes.NewReader(nil), 0, nil); err != nil {
		t.Fatal(err)
	}
	err := s.Put(t.Context(), "a", bytes.NewReader(nil), 0, nil)
	if err == nil || errors.Is(err, storage.ErrExist) || !strings.Contains(err.Error(), "directory") {
		t.Errorf("Put of a key that is a directory: %v, want an error that says so", err)
	}
	err = s.Put(t.Context(), "a/b/c", bytes.NewReader(nil), 0, nil)
	if err == nil || errors.Is(err, storage.ErrExist) {
		t.Errorf("Put below an object: %v, want an error", err)
	}
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ dir, want string }{
		{"relative/dir", "not an absolute path"},
		{filepath.Join(dir, "missing"), "does not exist: create it"},
	} {
		if _, err := New(tc.dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q): %v, want an error containing %q", tc.dir, err, tc.want)
		}
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("New(a file): %v", err)
	}
	s, err := Create(filepath.Join(dir, "new", "archive"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(s.dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("Create made %v (%v), want mode 0700", fi, err)
	}
	if got, want := s.String(), "file://"+filepath.Join(dir, "new", "archive"); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestArchiveDirectoryGone(t *testing.T) {
	s := newTest(t)
	if err := os.Remove(s.dir); err != nil {
		t.Fatal(err)
	}
	// An unmounted or removed archive is a failure, never "not found":
	// a restore would take it for the end of the archive.
	if _, err := s.Stat(t.Context(), "wal/000000010000000000000001"); err == nil || errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat in a removed archive: %v, want an error other than ErrNotExist", err)
	}
	if _, _, err := s.Get(t.Context(), "wal/000000010000000000000001"); err == nil || errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Get in a removed archive: %v, want an error other than ErrNotExist", err)
	}
	if err := s.List(t.Context(), "wal/", func(storage.ObjectInfo) error { return nil }); err == nil {
		t.Error("List of a removed archive succeeded")
	}
	if err := s.Put(t.Context(), "wal/x", bytes.NewReader(nil), 0, nil); err == nil || !strings.Contains(err.Error(), "not accessible") {
		t.Errorf("Put into a removed archive: %v", err)
	}
}

func TestErrorMessages(t *testing.T) {
	s := &Storage{dir: "/srv/archive"}
	path := "/srv/archive/wal/x"
	for _, tc := range []struct {
		errno     syscall.Errno
		want      string
		permanent bool
	}{
		{syscall.ENOSPC, "no space left on the file system of /srv/archive", true},
		{syscall.EDQUOT, "disk quota exceeded on /srv/archive", true},
		{syscall.EROFS, "/srv/archive is read-only", true},
		{syscall.EACCES, "check that the PostgreSQL OS user can write to /srv/archive", true},
		{syscall.EIO, "writing /srv/archive/wal/x: input/output error", false},
	} {
		err := s.describe("writing", path, &os.PathError{Op: "write", Path: path, Err: tc.errno})
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%v: message %q, want it to name %s and contain %q", tc.errno, err, path, tc.want)
		}
		if storage.IsPermanent(err) != tc.permanent {
			t.Errorf("%v: IsPermanent = %v, want %v", tc.errno, !tc.permanent, tc.permanent)
		}
		if !errors.Is(err, tc.errno) {
			t.Errorf("%v: the system error is not wrapped: %v", tc.errno, err)
		}
	}
}

func TestPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("permission bits do not stop root")
	}
	s := newTest(t)
	if err := os.Chmod(s.dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(s.dir, 0o700) })
	err := s.Put(t.Context(), "wal/x", bytes.NewReader([]byte("x")), 1, nil)
	if err == nil || !storage.IsPermanent(err) || !strings.Contains(err.Error(), "check that the PostgreSQL OS user can write to "+s.dir) {
		t.Errorf("Put into a read-only directory: %v", err)
	}
}

// A stream that waits long for data keeps its temporary file fresh, so a
// concurrent List does not sweep it as a dead writer's.
func TestKeepFresh(t *testing.T) {
	path := filepath.Join(t.TempDir(), tempPrefix+"stream")
	if err := os.WriteFile(path, []byte("#walship-meta {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	stop := keepFresh(path, 5*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(fi.ModTime()) < time.Minute {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("keepFresh did not touch the file")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	// After stop, the file is left alone.
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if fi, _ := os.Stat(path); time.Since(fi.ModTime()) < time.Hour {
		t.Error("keepFresh touched the file after it was stopped")
	}
}

// TestRootKeepsArchiveOwner: walship run as root (a restore, a cron job)
// gives what it creates to the archive directory's owner, so the
// PostgreSQL OS user can still read and write the archive.
func TestRootKeepsArchiveOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	const nobody = 65534
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.Put(ctx, "a/b/object", bytes.NewReader([]byte("x")), 1, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutStream(ctx, "a/c/stream", bytes.NewReader([]byte("y")), nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "a/b", "a/b/object", "a/c", "a/c/stream"} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if uid := st.Sys().(*syscall.Stat_t).Uid; uid != nobody {
			t.Errorf("%s is owned by uid %d, want the archive's owner %d", p, uid, nobody)
		}
	}
}
