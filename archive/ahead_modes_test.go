package archive

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// TestAheadModes: the look-ahead marker directory and markers get the
// data directory's modes, and the identity cache is the user's alone,
// whatever the umask.
func TestAheadModes(t *testing.T) {
	for _, tc := range []struct {
		dirMode   fs.FileMode
		dir, file fs.FileMode
	}{
		{0o700, 0o700, 0o600},
		{0o750, 0o750, 0o640},
	} {
		for _, mask := range []int{0o022, 0o077} {
			dataDir := filepath.Join(t.TempDir(), "data")
			walDir := filepath.Join(dataDir, "pg_wal")
			if err := os.MkdirAll(filepath.Join(walDir, "archive_status"), 0o700); err != nil {
				t.Fatal(err)
			}
			os.Chmod(dataDir, tc.dirMode)
			var names []string
			for seg := wal.SegNo(1); seg <= 2; seg++ {
				name, data := waltest.Segment(1, 1, seg, 1<<20, waltest.Compressible(uint64(seg)))
				if err := os.WriteFile(filepath.Join(walDir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(walDir, "archive_status", name+".ready"), nil, 0o600)
				names = append(names, name)
			}
			cache := filepath.Join(t.TempDir(), "home", ".cache", "walship")
			zstd, _ := codec.ByName("zstd")
			s := mem.New()
			o := PushOptions{Codec: zstd, Repo: "mem:a", DataDir: dataDir, CacheDir: cache}

			old := syscall.Umask(mask)
			res := PushAhead(context.Background(), s, filepath.Join(walDir, names[0]), 1, o)
			_, err := LoadIdentity(context.Background(), s, o.Repo, cache)
			syscall.Umask(old)
			if len(res) != 1 || res[0].Err != nil {
				t.Fatalf("push ahead: %v", res)
			}
			if err != nil {
				t.Fatal(err)
			}

			markers := filepath.Join(dataDir, AheadDirName)
			check := func(path string, want fs.FileMode) {
				t.Helper()
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != want {
					t.Errorf("data directory %04o, umask %04o: %s has mode %v, want %v", tc.dirMode, mask, path, fi.Mode(), want)
				}
			}
			check(markers, fs.ModeDir|tc.dir)
			check(filepath.Join(markers, names[1]), tc.file)
			for _, d := range []string{cache, filepath.Dir(cache)} {
				check(d, fs.ModeDir|0o700)
			}
			// The identity, and what the fencing check learned.
			n := 0
			filepath.WalkDir(cache, func(path string, d fs.DirEntry, err error) error {
				switch {
				case err != nil || path == cache:
				case d.IsDir():
					check(path, fs.ModeDir|0o700)
				default:
					check(path, 0o600)
					n++
				}
				return err
			})
			if n != 2 {
				t.Fatalf("the cache holds %d files, want the identity and the timeline-2 probe", n)
			}
		}
	}
}
