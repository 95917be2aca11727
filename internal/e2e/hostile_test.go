package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/codec"
	storagefs "github.com/walship/walship/storage/fs"
)

// hostileEntry is one entry of a hand-made tar archive. claim, when not
// zero, is the size its header states instead of the size of body.
type hostileEntry struct {
	name     string
	typeflag byte
	linkname string
	body     string
	claim    int64
}

// hostileTar writes entries as a tar archive, header by header, with
// valid header checksums: what a tampered archive can hold.
func hostileTar(entries ...hostileEntry) []byte {
	var out bytes.Buffer
	for _, e := range entries {
		typ := e.typeflag
		if typ == 0 {
			typ = tar.TypeReg
		}
		size := int64(len(e.body))
		if e.claim != 0 {
			size = e.claim
		}
		h := make([]byte, 512)
		copy(h[0:100], e.name)
		copy(h[100:108], "0000600\x00")
		copy(h[108:116], "0000000\x00")
		copy(h[116:124], "0000000\x00")
		if size < 1<<33 {
			copy(h[124:136], fmt.Sprintf("%011o\x00", size))
		} else {
			h[124] = 0x80 // base-256, as GNU tar writes large sizes
			binary.BigEndian.PutUint64(h[128:136], uint64(size))
		}
		copy(h[136:148], fmt.Sprintf("%011o\x00", time.Now().Unix()))
		h[156] = typ
		copy(h[157:257], e.linkname)
		copy(h[257:265], "ustar\x0000")
		copy(h[148:156], "        ")
		var sum int
		for _, c := range h {
			sum += int(c)
		}
		copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
		out.Write(h)
		out.WriteString(e.body)
		out.Write(make([]byte, (512-len(e.body)%512)%512))
	}
	out.Write(make([]byte, 1024))
	return out.Bytes()
}

// storeCraftedBackup stores a base backup whose data directory archive is
// base, exactly as backup-push stores one (zstd object, SHA-256 and size
// of its content in backup.json, backup.json written last), so that only
// walship's checks of the archive's entries stand in the way.
func storeCraftedBackup(t *testing.T, archiveDir, name string, base []byte) {
	t.Helper()
	ctx := context.Background()
	s, err := storagefs.New(archiveDir)
	if err != nil {
		t.Fatal(err)
	}
	putJSON := func(key string, v any) {
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		meta := map[string]string{archive.MetaSHA256: hex.EncodeToString(sum[:]), archive.MetaSize: strconv.Itoa(len(data))}
		if err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data)), meta); err != nil {
			t.Fatal(err)
		}
	}
	putJSON(archive.IdentityKey, archive.Identity{SystemID: 7300000000000000001, SegmentSize: 16 << 20, PGVersion: 15, Created: time.Now().UTC()})
	zstd, err := codec.ByName("zstd")
	if err != nil {
		t.Fatal(err)
	}
	prefix := basebackup.Prefix + name + "/"
	d, stored, err := archive.PutStream(ctx, s, prefix+"base.tar"+zstd.Ext(), bytes.NewReader(base), zstd)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().UTC().Add(-time.Minute)
	putJSON(prefix+"backup.json", basebackup.Backup{
		Name: name, Timeline: 1, StopTimeline: 1, StartLSN: 0x4000028, StopLSN: 0x4000100,
		StartWAL: "000000010000000000000004", StopWAL: "000000010000000000000004",
		StartTime: start, FinishTime: start.Add(30 * time.Second), Size: d.Size, StoredSize: stored,
		PGVersion: 150018, SystemID: "7300000000000000001", SegmentSize: 16 << 20, Codec: zstd.Name(),
		Label: "walship " + name,
		Files: []basebackup.File{{Key: "base.tar" + zstd.Ext(), Digest: d, StoredSize: stored}},
	})
}

// sandboxState is what snapshotSandbox notes of one path.
type sandboxState struct {
	mode  fs.FileMode
	size  int64
	mtime time.Time
	nlink uint64
	link  string
	data  string
}

// snapshotSandbox lists everything below root, without following links,
// with the content of small regular files.
func snapshotSandbox(t *testing.T, root string) map[string]sandboxState {
	t.Helper()
	out := map[string]sandboxState{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := sandboxState{mode: fi.Mode(), mtime: fi.ModTime()}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			st.nlink = uint64(sys.Nlink)
		}
		switch {
		case fi.Mode().IsRegular():
			st.size = fi.Size()
			if fi.Size() < 1<<20 {
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				st.data = string(b)
			}
		case fi.Mode().Type() == fs.ModeSymlink:
			if st.link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		rel, _ := filepath.Rel(root, path)
		out[filepath.ToSlash(rel)] = st
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBackupFetchRefusesHostileArchives: backups whose data directory
// archive tries to write outside the target directory — or more than it
// holds — are refused by the real walship backup-fetch with a short error
// and a non-zero exit; nothing in the sandbox around the target changes,
// and the target gets no global/pg_control, so PostgreSQL cannot start on
// it. The same hand-made backup without the hostile entry restores, so
// nothing but walship's checks of the entries stops the others.
func TestBackupFetchRefusesHostileArchives(t *testing.T) {
	control := strings.Repeat("\x00", 8192)
	good := []hostileEntry{
		{name: "PG_VERSION", body: "15\n"},
		{name: "global/", typeflag: tar.TypeDir},
		{name: "global/pg_control", body: control},
		{name: "pg_wal/", typeflag: tar.TypeDir},
	}
	cases := []struct {
		name    string
		entries func(sandbox string) []hostileEntry
		says    string
	}{
		{"dot-dot path", func(string) []hostileEntry {
			return []hostileEntry{{name: "../outside/evil", body: "x"}}
		}, "escapes the target directory"},
		{"dot-dot inside a path", func(string) []hostileEntry {
			return []hostileEntry{{name: "global/../../outside/evil", body: "x"}}
		}, "escapes the target directory"},
		{"absolute path", func(sandbox string) []hostileEntry {
			return []hostileEntry{{name: filepath.Join(sandbox, "outside", "evil"), body: "x"}}
		}, "escapes the target directory"},
		{"symlink outside, then a file through it", func(sandbox string) []hostileEntry {
			return []hostileEntry{
				{name: "escape", typeflag: tar.TypeSymlink, linkname: filepath.Join(sandbox, "outside")},
				{name: "escape/evil", body: "x"},
			}
		}, "unexpected symbolic link"},
		{"hard link to a file outside", func(sandbox string) []hostileEntry {
			return []hostileEntry{{name: "stolen", typeflag: tar.TypeLink, linkname: filepath.Join(sandbox, "outside", "secret")}}
		}, "unsupported tar entry type"},
		{"directory symlink", func(string) []hostileEntry {
			return []hostileEntry{
				{name: "base", typeflag: tar.TypeSymlink, linkname: "../outside"},
				{name: "base/1/evil", body: "x"},
			}
		}, "unexpected symbolic link"},
		{"pg_wal as a symlink elsewhere", func(sandbox string) []hostileEntry {
			return []hostileEntry{{name: "pg_wal", typeflag: tar.TypeSymlink, linkname: filepath.Join(sandbox, "outside")}}
		}, "unexpected symbolic link"},
		{"oversized header size field", func(string) []hostileEntry {
			return []hostileEntry{{name: "base/huge", body: "x", claim: 1 << 40}}
		}, "the entry's header says 1099511627776 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sandbox := t.TempDir()
			if err := os.Mkdir(filepath.Join(sandbox, "outside"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sandbox, "outside", "secret"), []byte("secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(sandbox, "data")
			archiveDir := t.TempDir()
			const name = "base_20261122T030000Z"
			// The hostile entry comes after pg_control: it must still
			// not be put in place.
			entries := append([]hostileEntry{{name: "base/", typeflag: tar.TypeDir}}, good...)
			storeCraftedBackup(t, archiveDir, name, hostileTar(append(entries, c.entries(sandbox)...)...))

			before := snapshotSandbox(t, sandbox)
			env := []string{"WALSHIP_CACHE_DIR=" + t.TempDir()}
			r := walship(t, sandbox, env, "--repo", "file://"+archiveDir, "backup-fetch", name, target)
			r.mustFail(t, "backup-fetch", 1, c.says)
			t.Log(strings.TrimSpace(r.stderr))
			if !strings.Contains(r.stderr, "corrupt archive object") {
				t.Errorf("the error does not say the archive is corrupt:\n%s", r.stderr)
			}

			after := snapshotSandbox(t, sandbox)
			for rel, st := range after {
				if rel == "." {
					continue // the sandbox itself: the target is created in it
				}
				if rel == "data" || strings.HasPrefix(rel, "data/") {
					if st.mode.Type() == fs.ModeSymlink {
						t.Errorf("%s is a symbolic link to %s", rel, st.link)
					}
					if st.mode.IsRegular() && st.nlink != 1 {
						t.Errorf("%s has %d links", rel, st.nlink)
					}
					continue
				}
				if was, ok := before[rel]; !ok || was != st {
					t.Errorf("%s outside the target changed: %+v, was %+v", rel, st, was)
				}
			}
			for rel := range before {
				if _, ok := after[rel]; !ok {
					t.Errorf("%s outside the target was removed", rel)
				}
			}
			if _, err := os.Lstat(filepath.Join(target, "global", "pg_control")); err == nil {
				t.Error("global/pg_control was written: PostgreSQL could start on the half-restored directory")
			}
			if _, err := os.Stat(filepath.Join(target, basebackup.IncompleteMarker)); err != nil {
				t.Errorf("the target has no %s: %v", basebackup.IncompleteMarker, err)
			}
		})
	}

	t.Run("the same backup without a hostile entry", func(t *testing.T) {
		sandbox := t.TempDir()
		target := filepath.Join(sandbox, "data")
		archiveDir := t.TempDir()
		const name = "base_20261122T030000Z"
		storeCraftedBackup(t, archiveDir, name, hostileTar(append([]hostileEntry{{name: "base/", typeflag: tar.TypeDir}}, good...)...))
		env := []string{"WALSHIP_CACHE_DIR=" + t.TempDir()}
		walship(t, sandbox, env, "--repo", "file://"+archiveDir, "backup-fetch", name, target).mustSucceed(t, "backup-fetch")
		if got := readFile(t, filepath.Join(target, "global", "pg_control")); string(got) != control {
			t.Fatalf("pg_control restored as %d bytes", len(got))
		}
		if got := readFile(t, filepath.Join(target, "PG_VERSION")); string(got) != "15\n" {
			t.Fatalf("PG_VERSION restored as %q", got)
		}
	})
}
