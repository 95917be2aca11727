package basebackup

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/progress"
	"github.com/walship/walship/storage/mem"
)

// craftEntry is one entry of a hand-made archive. claim, when set, replaces
// the size in the header (the entry still holds body only); pax records
// go into a PAX header before the entry.
type craftEntry struct {
	name     string
	typeflag byte
	linkname string
	body     string
	claim    int64
	pax      map[string]string
}

// craftTar builds an archive from entries the way a hostile archive would
// hold them: headers written byte by byte with valid checksums, so that
// only walship's own checks stop them.
func craftTar(entries ...craftEntry) []byte {
	var out bytes.Buffer
	for _, e := range entries {
		typ := e.typeflag
		if typ == 0 {
			typ = tar.TypeReg
		}
		if e.pax != nil {
			var recs strings.Builder
			for _, k := range slices.Sorted(maps.Keys(e.pax)) {
				recs.WriteString(paxRecord(k, e.pax[k]))
			}
			out.Write(tarHeader("PaxHeaders/"+e.name, tar.TypeXHeader, "", int64(recs.Len())))
			out.Write(padBlock([]byte(recs.String())))
		}
		size := int64(len(e.body))
		if e.claim != 0 {
			size = e.claim
		}
		out.Write(tarHeader(e.name, typ, e.linkname, size))
		out.Write(padBlock([]byte(e.body)))
	}
	out.Write(make([]byte, 2*tarBlock))
	return out.Bytes()
}

// tarHeader is a ustar header block; a size beyond the octal field is
// written in the base-256 form GNU tar uses.
func tarHeader(name string, typ byte, link string, size int64) []byte {
	h := make([]byte, tarBlock)
	copy(h[0:100], name)
	copy(h[100:108], "0000600\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	if size < 1<<33 {
		copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	} else {
		h[124] = 0x80
		binary.BigEndian.PutUint64(h[128:136], uint64(size))
	}
	copy(h[136:148], fmt.Sprintf("%011o\x00", 1700000000))
	h[156] = typ
	copy(h[157:257], link)
	copy(h[257:265], "ustar\x0000")
	setTarChecksum(h)
	return h
}

// paxRecord is one "length key=value\n" record, its length counting itself.
func paxRecord(k, v string) string {
	n := len(k) + len(v) + 3 // " ", "=", "\n"
	d := len(fmt.Sprint(n))
	for len(fmt.Sprint(n+d)) != d {
		d++
	}
	return fmt.Sprintf("%d %s=%s\n", n+d, k, v)
}

func padBlock(b []byte) []byte {
	return append(b, make([]byte, (tarBlock-len(b)%tarBlock)%tarBlock)...)
}

// hostileArchives are archives no PostgreSQL server sends, each trying
// to write outside the directory it is restored into, or more than it
// holds. "outside/secret" is a file of the sandbox outside the target;
// "../outside" reaches it from the target.
func hostileArchives() map[string][]byte {
	dirs := []craftEntry{{name: "global/", typeflag: tar.TypeDir}}
	with := func(e ...craftEntry) []byte { return craftTar(append(dirs, e...)...) }
	return map[string][]byte{
		"dot-dot path":              with(craftEntry{name: "../outside/evil", body: "x"}),
		"dot-dot inside path":       with(craftEntry{name: "global/../../outside/evil", body: "x"}),
		"absolute path":             with(craftEntry{name: "/tmp/walship-evil", body: "x"}),
		"symlink then write":        with(craftEntry{name: "escape", typeflag: tar.TypeSymlink, linkname: "../outside"}, craftEntry{name: "escape/evil", body: "x"}),
		"symlink to file":           with(craftEntry{name: "PG_VERSION", typeflag: tar.TypeSymlink, linkname: "../outside/secret"}),
		"hardlink outside":          with(craftEntry{name: "stolen", typeflag: tar.TypeLink, linkname: "../outside/secret"}),
		"hardlink absolute":         with(craftEntry{name: "stolen", typeflag: tar.TypeLink, linkname: "/etc/passwd"}),
		"directory symlink":         with(craftEntry{name: "base", typeflag: tar.TypeSymlink, linkname: "/"}, craftEntry{name: "base/evil", body: "x"}),
		"pg_wal symlink":            with(craftEntry{name: "pg_wal", typeflag: tar.TypeSymlink, linkname: "../outside"}),
		"tablespace link elsewhere": with(craftEntry{name: "pg_tblspc/", typeflag: tar.TypeDir}, craftEntry{name: "pg_tblspc/99", typeflag: tar.TypeSymlink, linkname: "../outside"}),
		"oversized size field":      with(craftEntry{name: "global/pg_control", body: "x", claim: 8 << 30}),
		"huge base-256 size field":  with(craftEntry{name: "global/pg_control", body: "x", claim: 1 << 62}),
		// A terabyte of holes around 512 bytes: the sparse map (one
		// fragment, offset 0, 512 bytes) comes first in the data.
		"sparse file": with(craftEntry{name: "sparse", body: string(padBlock([]byte("1\n0\n512\n"))) + strings.Repeat("x", 512), pax: map[string]string{
			"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "global/big", "GNU.sparse.realsize": "1099511627776",
		}}),
		"pg_control directory": with(craftEntry{name: "global/pg_control", typeflag: tar.TypeDir}),
		"device":               with(craftEntry{name: "dev", typeflag: tar.TypeChar}),
		"fifo":                 with(craftEntry{name: "fifo", typeflag: tar.TypeFifo}),
		"duplicate file":       with(craftEntry{name: "PG_VERSION", body: "15\n"}, craftEntry{name: "PG_VERSION", body: "16\n"}),
	}
}

// fixtureArchives decodes the recorded server replies into the tar
// archives they carry: real archives as PostgreSQL 13, 15 and 17 send them.
func fixtureArchives(t testing.TB) (base, tablespace [][]byte) {
	for _, fx := range fixtures {
		h := Handler{Archive: func(ts Tablespace, r io.Reader) error {
			b, err := io.ReadAll(r)
			if ts.OID == 0 {
				base = append(base, b)
			} else {
				tablespace = append(tablespace, b)
			}
			return err
		}}
		if _, _, err := Decode(wireSource(readFixture(t, fx.major)), fx.version, fixtureOptions, h); err != nil {
			t.Fatal(err)
		}
	}
	return base, tablespace
}

// tablespaceLink is the only kind of link a restore creates.
var tablespaceLink = regexp.MustCompile(`^data/pg_tblspc/[0-9]+$`)

// FuzzExtract restores arbitrary archives with the real extraction code:
// base is the data directory's archive, tablespace that of tablespace
// 16384, both stored in an archive with the right checksums. Whatever the
// archives hold, nothing may appear outside the target directory and the
// tablespace's location, no link may lead out of them, no file may be a
// hard link, pg_control is never put in place, the files written never
// hold more bytes than the archives, and memory does not follow the size
// fields of headers.
func FuzzExtract(f *testing.F) {
	base, tablespace := fixtureArchives(f)
	for i := range base {
		f.Add(base[i], tablespace[i])
	}
	for _, a := range hostileArchives() {
		f.Add(a, tablespace[0])
		f.Add(base[0], a)
	}
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, base, tablespace []byte) {
		sandbox := t.TempDir()
		dir := filepath.Join(sandbox, "data")
		tsDir := filepath.Join(sandbox, "ts")
		outside := filepath.Join(sandbox, "outside")
		secret := filepath.Join(outside, "secret")
		if err := os.Mkdir(outside, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		before := walkSandbox(t, sandbox)

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s := mem.New()
		b := Backup{Name: "base_fuzz", Tablespaces: []Tablespace{{OID: 16384, Location: tsDir}}}
		none, err := codec.ByName("none")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []struct {
			name string
			oid  uint32
			data []byte
		}{{"base.tar", 0, base}, {"16384.tar", 16384, tablespace}} {
			d, n, err := archive.PutStream(ctx, s, b.prefix()+a.name, bytes.NewReader(a.data), none)
			if err != nil {
				t.Fatal(err)
			}
			b.Files = append(b.Files, File{Key: a.name, TablespaceOID: a.oid, Digest: d, StoredSize: n})
		}

		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		extractErr := extractOnly(ctx, s, b, dir)
		runtime.ReadMemStats(&m1)
		if grew := m1.TotalAlloc - m0.TotalAlloc; grew > 64<<20+4*uint64(len(base)+len(tablespace)) {
			t.Fatalf("extracting %d+%d bytes allocated %d bytes", len(base), len(tablespace), grew)
		}

		after := walkSandbox(t, sandbox)
		var written int64
		for rel, e := range after {
			inTarget := rel == "data" || strings.HasPrefix(rel, "data/") || rel == "ts" || strings.HasPrefix(rel, "ts/")
			if !inTarget {
				if e != before[rel] {
					t.Fatalf("%s changed outside the target: %+v, was %+v (error %v)", rel, e, before[rel], extractErr)
				}
				continue
			}
			switch {
			case e.mode.Type() == fs.ModeSymlink:
				if !tablespaceLink.MatchString(rel) || e.link != tsDir {
					t.Fatalf("symbolic link %s -> %s (error %v)", rel, e.link, extractErr)
				}
			case e.mode.IsRegular():
				if e.nlink != 1 {
					t.Fatalf("%s has %d links (error %v)", rel, e.nlink, extractErr)
				}
				written += e.size
			case e.mode.IsDir():
			default:
				t.Fatalf("%s has mode %v (error %v)", rel, e.mode, extractErr)
			}
		}
		for rel := range before {
			if _, ok := after[rel]; !ok {
				t.Fatalf("%s outside the target was removed (error %v)", rel, extractErr)
			}
		}
		if written > int64(len(base)+len(tablespace)) {
			t.Fatalf("%d bytes written from archives of %d bytes", written, len(base)+len(tablespace))
		}
		if _, err := os.Lstat(filepath.Join(dir, "global", "pg_control")); err == nil {
			t.Fatal("global/pg_control was put in place by the extraction")
		}
		if _, err := os.Lstat("/tmp/walship-evil"); err == nil {
			t.Fatal("an absolute path was written")
		}
	})
}

// extractOnly is Fetch without the final sync and the pg_control rename:
// the directories are prepared and every archive of b extracted.
func extractOnly(ctx context.Context, s *mem.Storage, b Backup, dir string) error {
	uid, gid, err := prepareDir(dir)
	if err != nil {
		return err
	}
	locations, err := tablespaceTargets(b, nil)
	if err != nil {
		return err
	}
	for _, loc := range locations {
		if _, _, err := prepareDir(loc); err != nil {
			return err
		}
	}
	ex := &extractor{uid: uid, gid: gid, rep: progress.Or(nil), locations: locations}
	return ex.all(ctx, s, b, dir, 2)
}

// sandboxEntry is what walkSandbox notes of one path.
type sandboxEntry struct {
	mode  fs.FileMode
	size  int64
	nlink uint64
	mtime time.Time
	link  string
}

// walkSandbox lists everything below root without following links.
func walkSandbox(t *testing.T, root string) map[string]sandboxEntry {
	t.Helper()
	out := map[string]sandboxEntry{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == root {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		e := sandboxEntry{mode: fi.Mode(), mtime: fi.ModTime()}
		if fi.Mode().IsRegular() {
			e.size = fi.Size()
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			e.nlink = uint64(st.Nlink)
		}
		if fi.Mode().Type() == fs.ModeSymlink {
			if e.link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExtractRefusesHostileArchives: each hostile archive fails with an
// error that names the entry and says the archive is corrupt.
func TestExtractRefusesHostileArchives(t *testing.T) {
	_, tablespace := fixtureArchives(t)
	none, err := codec.ByName("none")
	if err != nil {
		t.Fatal(err)
	}
	for what, a := range hostileArchives() {
		t.Run(what, func(t *testing.T) {
			ctx := context.Background()
			sandbox := t.TempDir()
			s := mem.New()
			b := Backup{Name: "base_hostile", Tablespaces: []Tablespace{{OID: 16384, Location: filepath.Join(sandbox, "ts")}}}
			for _, obj := range []struct {
				name string
				oid  uint32
				data []byte
			}{{"base.tar", 0, a}, {"16384.tar", 16384, tablespace[0]}} {
				d, n, err := archive.PutStream(ctx, s, b.prefix()+obj.name, bytes.NewReader(obj.data), none)
				if err != nil {
					t.Fatal(err)
				}
				b.Files = append(b.Files, File{Key: obj.name, TablespaceOID: obj.oid, Digest: d, StoredSize: n})
			}
			err := extractOnly(ctx, s, b, filepath.Join(sandbox, "data"))
			t.Logf("%v", err)
			if !errors.Is(err, archive.ErrCorrupt) {
				t.Fatalf("got %v, want a corrupt archive", err)
			}
		})
	}
}
