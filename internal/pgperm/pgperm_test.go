package pgperm

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestForMode(t *testing.T) {
	for _, tc := range []struct {
		dir  fs.FileMode
		want Modes
	}{
		{0o700, Owner()},
		{0o750, Group()},
		{0o755, Group()}, // PostgreSQL refuses to start on it, but the rule is g+rx
		{0o770, Group()},
		{0o740, Owner()}, // no group execute
		{0o710, Owner()},
		{0o705, Owner()},
		{fs.ModeDir | 0o750, Group()},
	} {
		if got := ForMode(tc.dir); got != tc.want {
			t.Errorf("ForMode(%v) = %+v, want %+v", tc.dir, got, tc.want)
		}
	}
	if Owner().GroupAccess() || !Group().GroupAccess() {
		t.Error("GroupAccess does not tell Owner from Group")
	}
}

// withUmask runs fn with the process umask set to mask: the modes must
// not depend on it.
func withUmask(t *testing.T, mask int, fn func()) {
	old := syscall.Umask(mask)
	defer syscall.Umask(old)
	fn()
}

func perm(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestCreateModesIgnoreUmask(t *testing.T) {
	for _, mask := range []int{0o022, 0o077, 0o027, 0o002} {
		for _, m := range []Modes{Owner(), Group()} {
			root := t.TempDir()
			withUmask(t, mask, func() {
				deep := filepath.Join(root, "a", "b", "c")
				if err := m.MkdirAll(deep); err != nil {
					t.Fatal(err)
				}
				f, err := m.OpenFile(filepath.Join(deep, "open"), os.O_RDWR)
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
				tmp, err := m.CreateTemp(deep, "tmp-*")
				if err != nil {
					t.Fatal(err)
				}
				tmp.Close()
				if err := m.WriteFile(filepath.Join(deep, "written"), []byte("x")); err != nil {
					t.Fatal(err)
				}
				for _, d := range []string{"a", "a/b", "a/b/c"} {
					if got := perm(t, filepath.Join(root, d)); got != m.Dir {
						t.Errorf("umask %04o, %+v: directory %s has mode %04o, want %04o", mask, m, d, got, m.Dir)
					}
				}
				for _, p := range []string{filepath.Join(deep, "open"), tmp.Name(), filepath.Join(deep, "written")} {
					if got := perm(t, p); got != m.File {
						t.Errorf("umask %04o, %+v: file %s has mode %04o, want %04o", mask, m, filepath.Base(p), got, m.File)
					}
				}
			})
		}
	}
}

func TestExistingFileGetsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Owner().WriteFile(path, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if got := perm(t, path); got != 0o600 {
		t.Fatalf("rewritten file has mode %04o, want 0600", got)
	}
	if data, _ := os.ReadFile(path); string(data) != "new" {
		t.Fatalf("content %q, want %q", data, "new")
	}
}

func TestMkdirAllKeepsExisting(t *testing.T) {
	root := t.TempDir()
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := Group().MkdirAll(filepath.Join(root, "new")); err != nil {
		t.Fatal(err)
	}
	if got := perm(t, root); got != 0o711 {
		t.Errorf("an existing directory changed mode to %04o", got)
	}
	file := filepath.Join(root, "file")
	os.WriteFile(file, nil, 0o600)
	if err := Owner().MkdirAll(filepath.Join(file, "sub")); err == nil {
		t.Error("MkdirAll below a file succeeded")
	}
	if err := Owner().MkdirAll(file); err == nil {
		t.Error("MkdirAll on a file succeeded")
	}
}

func TestOfAndEnclosing(t *testing.T) {
	for _, dirMode := range []fs.FileMode{0o700, 0o750} {
		data := filepath.Join(t.TempDir(), "data")
		if err := os.MkdirAll(filepath.Join(data, "global"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(data, dirMode); err != nil {
			t.Fatal(err)
		}
		want := ForMode(dirMode)
		if got := Of(data); got != want {
			t.Errorf("Of(data %04o) = %+v, want %+v", dirMode, got, want)
		}
		// Lexically below the data directory, existing or not.
		for _, p := range []string{data, filepath.Join(data, "pg_wal"), filepath.Join(data, "pgsql_tmp_x", "absent", "f")} {
			if got := Enclosing(p); got != want {
				t.Errorf("Enclosing(%s) in a %04o data directory = %+v, want %+v", p, dirMode, got, want)
			}
		}
		if got := Enclosing(filepath.Dir(data)); got != Owner() {
			t.Errorf("Enclosing(outside) = %+v, want Owner", got)
		}
	}
	if got := Of(filepath.Join(t.TempDir(), "missing")); got != Owner() {
		t.Errorf("Of(missing) = %+v, want Owner", got)
	}
}
