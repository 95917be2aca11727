package basebackup

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/storage/mem"
)

// modesBackup stores a small base backup whose tar headers carry the
// modes of a cluster with (group) or without group access, plus wider
// modes than PostgreSQL ever uses on the other entries.
func modesBackup(t *testing.T, group bool) (*mem.Storage, Backup) {
	t.Helper()
	fileMode := int64(0o600)
	if group {
		fileMode = 0o640
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, typ byte, mode int64, data string) {
		hdr := &tar.Header{Name: name, Typeflag: typ, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(1700000000, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	add("backup_label", tar.TypeReg, fileMode, "START WAL LOCATION: 0/2000028\n")
	add("PG_VERSION", tar.TypeReg, 0o644, "15\n")
	add("base/", tar.TypeDir, 0o777, "")
	add("base/1/", tar.TypeDir, 0o755, "")
	add("base/1/1259", tar.TypeReg, 0o666, "table data")
	add("pg_wal/", tar.TypeDir, 0o750, "")
	add("global/", tar.TypeDir, 0o700, "")
	add("global/pg_control", tar.TypeReg, fileMode, "control")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	b := Backup{Name: "base_20260101T000000Z", Files: []File{{
		Key:    "base.tar",
		Digest: archive.Digest{SHA256: hex.EncodeToString(sum[:]), Size: int64(buf.Len())},
	}}}
	s := mem.New()
	if err := s.Put(t.Context(), b.prefix()+"base.tar", bytes.NewReader(buf.Bytes()), int64(buf.Len()), nil); err != nil {
		t.Fatal(err)
	}
	return s, b
}

// TestFetchModes: a restored directory has PostgreSQL's modes — 0700 and
// 0600, or 0750 and 0640 for a backup of a cluster with group access —
// never the tar headers' wider ones, whatever the umask.
func TestFetchModes(t *testing.T) {
	for _, group := range []bool{false, true} {
		for _, mask := range []int{0o022, 0o077, 0o000} {
			s, b := modesBackup(t, group)
			dir := filepath.Join(t.TempDir(), "restore", "data")
			old := syscall.Umask(mask)
			err := Fetch(t.Context(), s, b, dir, FetchOptions{})
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			wantDir, wantFile := fs.FileMode(0o700), fs.FileMode(0o600)
			if group {
				wantDir, wantFile = 0o750, 0o640
			}
			seen := 0
			err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				fi, err := d.Info()
				if err != nil {
					return err
				}
				want := wantFile
				if d.IsDir() {
					want = wantDir
				}
				if fi.Mode().Perm() != want {
					t.Errorf("group access %v, umask %04o: %s has mode %04o, want %04o", group, mask, path, fi.Mode().Perm(), want)
				}
				seen++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if seen != 9 { // data, 4 directories in it, 4 files
				t.Errorf("restored %d entries, want 9", seen)
			}
			// Parents walship created for the data directory: 0700.
			if fi, err := os.Stat(filepath.Dir(dir)); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("the parent walship created has mode %v (%v), want 0700", fi.Mode().Perm(), err)
			}
		}
	}
}
