package restore

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// fakeDataDir makes a directory that looks like a data directory, with
// mode dirMode.
func fakeDataDir(t *testing.T, dirMode fs.FileMode) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	for _, d := range []string{"global", "pg_wal"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestModesInDataDir: the fetched file and the prefetch spool get the
// data directory's modes, whatever the umask.
func TestModesInDataDir(t *testing.T) {
	for _, tc := range []struct {
		dirMode   fs.FileMode
		dir, file fs.FileMode
	}{
		{0o700, 0o700, 0o600},
		{0o750, 0o750, 0o640},
	} {
		for _, mask := range []int{0o022, 0o077} {
			dd := fakeDataDir(t, tc.dirMode)
			s := mem.New()
			name, _ := archived(t, s, 1, "zstd")
			spool := Spool(dd)
			dest := filepath.Join(dd, "pg_wal", "RECOVERYXLOG")
			dest2 := filepath.Join(dd, "pg_wal", "RECOVERYHISTORY")
			o := options(t)
			o.DataDir = dd

			old := syscall.Umask(mask)
			_, err := Fetch(context.Background(), s, name, dest, o)
			if err == nil {
				// Without DataDir: found from the path.
				_, err = Fetch(context.Background(), s, name, dest2, options(t))
			}
			if err == nil {
				err = Want(spool, name)
			}
			if err == nil {
				MarkAbsent(spool, wal.SegmentFileName(1, 2, seg16))
				err = copyFile(dest, filepath.Join(dd, "pg_wal", "copied"), spoolModes(spool))
			}
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}

			for path, want := range map[string]fs.FileMode{
				dest:                                  tc.file,
				dest2:                                 tc.file,
				filepath.Join(dd, "pg_wal", "copied"): tc.file,
				spool:                                 fs.ModeDir | tc.dir,
				filepath.Join(spool, wantName):        tc.file,
				filepath.Join(spool, absentDir):       fs.ModeDir | tc.dir,
				filepath.Join(spool, absentDir, wal.SegmentFileName(1, 2, seg16)): tc.file,
			} {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != want {
					t.Errorf("data directory %04o, umask %04o: %s has mode %v, want %v", tc.dirMode, mask, path, fi.Mode(), want)
				}
			}
		}
	}
}
