package basebackup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/walship/walship/internal/pgtest"
)

// fixture reads a gzipped file of testdata/manifest.
func readManifestFixture(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "testdata", "manifest", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// crc32cManifest is a CRC-32C as PostgreSQL writes it into a manifest on
// a little-endian machine.
func manifestCRC32C(data []byte) string {
	return hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))))
}

func manifestChecksumOf(algorithm string, data []byte) string {
	switch algorithm {
	case "CRC32C":
		return manifestCRC32C(data)
	case "SHA224":
		s := sha256.Sum224(data)
		return hex.EncodeToString(s[:])
	case "SHA256":
		s := sha256.Sum256(data)
		return hex.EncodeToString(s[:])
	case "SHA384":
		s := sha512.Sum384(data)
		return hex.EncodeToString(s[:])
	case "SHA512":
		s := sha512.Sum512(data)
		return hex.EncodeToString(s[:])
	}
	return ""
}

// withChecksum completes a manifest's text, everything before the
// Manifest-Checksum line, the way PostgreSQL does.
func withManifestChecksum(body string) []byte {
	sum := sha256.Sum256([]byte(body))
	return []byte(fmt.Sprintf("%s\"Manifest-Checksum\": \"%x\"}\n", body, sum))
}

// manifestText writes a manifest in PostgreSQL's layout.
func manifestText(version int, sysID uint64, files []ManifestFile, ranges []WALRange) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "{ \"PostgreSQL-Backup-Manifest-Version\": %d,\n", version)
	if version >= 2 {
		fmt.Fprintf(&b, "\"System-Identifier\": %d,\n", sysID)
	}
	b.WriteString("\"Files\": [")
	for i, f := range files {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n{ \"Path\": %q, \"Size\": %d, \"Last-Modified\": \"2026-11-22 03:17:30 GMT\"", f.Path, f.Size)
		if f.Algorithm != "NONE" && f.Algorithm != "" {
			fmt.Fprintf(&b, ", \"Checksum-Algorithm\": %q, \"Checksum\": %q", f.Algorithm, f.Checksum)
		}
		b.WriteString(" }")
	}
	b.WriteString("\n],\n\"WAL-Ranges\": [")
	for i, r := range ranges {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n{ \"Timeline\": %d, \"Start-LSN\": \"%s\", \"End-LSN\": \"%s\" }", r.Timeline, r.Start, r.End)
	}
	b.WriteString("\n],\n")
	return withManifestChecksum(b.String())
}

func TestParseManifestReal(t *testing.T) {
	for _, tc := range []struct {
		file      string
		version   int
		sysID     uint64
		algorithm string
		pgVersion string
		files     int
		wal       WALRange
	}{
		{"pg15-crc32c.backup_manifest.gz", 1, 0, "CRC32C", "15\n", 964, WALRange{1, 0x2000028, 0x2000100}},
		{"pg17-sha256.backup_manifest.gz", 2, 7710829899878100755, "SHA256", "17\n", 0, WALRange{1, 0x2000028, 0x2000120}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			data := readManifestFixture(t, tc.file)
			m, err := ParseManifest(data)
			if err != nil {
				t.Fatal(err)
			}
			if m.Version != tc.version || m.SystemIdentifier != tc.sysID {
				t.Errorf("version %d, system %d; want %d, %d", m.Version, m.SystemIdentifier, tc.version, tc.sysID)
			}
			if tc.files != 0 && len(m.Files) != tc.files {
				t.Errorf("%d files, want %d", len(m.Files), tc.files)
			}
			if len(m.WALRanges) != 1 || m.WALRanges[0] != tc.wal {
				t.Errorf("WAL ranges %+v, want %+v", m.WALRanges, tc.wal)
			}
			found := false
			for _, f := range m.Files {
				if f.Algorithm != tc.algorithm {
					t.Fatalf("%s: algorithm %s", f.Path, f.Algorithm)
				}
				if f.Path == "PG_VERSION" {
					found = true
					if want := manifestChecksumOf(tc.algorithm, []byte(tc.pgVersion)); f.Checksum != want || f.Size != 3 {
						t.Errorf("PG_VERSION: size %d, checksum %s; want 3, %s", f.Size, f.Checksum, want)
					}
				}
				if f.Size == 0 && tc.algorithm == "CRC32C" && f.Checksum != "00000000" {
					t.Errorf("empty %s has CRC32C %s", f.Path, f.Checksum)
				}
			}
			if !found {
				t.Error("no PG_VERSION in the manifest")
			}
			// Any change to the text breaks the manifest's checksum.
			damaged := bytes.Replace(data, []byte(`"Size": 8192`), []byte(`"Size": 8193`), 1)
			if _, err := ParseManifest(damaged); !errors.Is(err, ErrInvalidManifest) || !strings.Contains(err.Error(), "checksum mismatch") {
				t.Errorf("damaged manifest: %v", err)
			}
		})
	}
}

// TestCRC32CByteOrder pins down the finding the fixtures show: the
// manifest holds the CRC-32C's bytes least significant first.
func TestCRC32CByteOrder(t *testing.T) {
	if got := crc32.Checksum([]byte("15\n"), crc32.MakeTable(crc32.Castagnoli)); got != 0x2247748a {
		t.Fatalf("CRC-32C of \"15\\n\" = %08x", got)
	}
	if got := manifestCRC32C([]byte("15\n")); got != "8a744722" {
		t.Fatalf("manifest form %s, want 8a744722 (as in the PostgreSQL 15 fixture)", got)
	}
}

func TestParseManifestErrors(t *testing.T) {
	files := `"Files": [
{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-11-22 03:16:30 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "8a744722" }
],
`
	ranges := `"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
`
	head := "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n"
	good := head + files + ranges
	file := func(fields string) string {
		return head + "\"Files\": [\n{ " + fields + " }\n],\n"
	}
	walRange := func(fields string) string {
		return head + "\"WAL-Ranges\": [\n{ " + fields + " }\n],\n"
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" means valid
	}{
		{"good", withManifestChecksum(good), ""},
		{"no files, no WAL", withManifestChecksum(head), ""},
		{"version 2", withManifestChecksum("{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 18446744073709551615,\n" + files), ""},
		{"algorithm in lower case", withManifestChecksum(file(`"Path": "a", "Size": 0, "Checksum-Algorithm": "sha224", "Checksum": "D14A028C2A3A2BC9476102BB288234C415A2B01F828EA62AC5B3E42F"`)), ""},
		{"no checksum", withManifestChecksum(file(`"Path": "a", "Size": 1`)), ""},
		{"algorithm NONE", withManifestChecksum(file(`"Path": "a", "Size": 1, "Checksum-Algorithm": "NONE"`)), ""},
		{"size as a string", withManifestChecksum(file(`"Path": "a", "Size": "12"`)), ""},
		{"encoded path", withManifestChecksum(file(`"Encoded-Path": "62617365ff", "Size": 1`)), ""},

		{"empty", nil, "ended unexpectedly"},
		{"not JSON", []byte("hello\nworld\n"), "invalid"},
		{"not an object", withManifestChecksum("[1,\n"), `expected "{"`},
		{"version not first", withManifestChecksum("{ \"Files\": [],\n"), "version indicator"},
		{"version 3", withManifestChecksum("{ \"PostgreSQL-Backup-Manifest-Version\": 3,\n"), "unexpected manifest version"},
		{"version 1.0", withManifestChecksum("{ \"PostgreSQL-Backup-Manifest-Version\": 1.0,\n"), "unexpected manifest version"},
		{"version 2 without system", withManifestChecksum("{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n" + files), "must have a System-Identifier"},
		{"version 1 with system", withManifestChecksum(head + "\"System-Identifier\": 1,\n"), "has no System-Identifier"},
		{"system not a number", withManifestChecksum("{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": -1,\n"), "not an integer"},
		{"unknown field", withManifestChecksum(head + "\"Tablespaces\": [],\n"), "unrecognized top-level field"},
		{"no checksum field", []byte(good + "\"X\": 1}\n"), "unrecognized top-level field"},
		{"ends without checksum", []byte(head + files + "\"WAL-Ranges\": []}\n"), "no Manifest-Checksum"},
		{"checksum mismatch", bytes.Replace(withManifestChecksum(good), []byte(`"Size": 3`), []byte(`"Size": 4`), 1), "checksum mismatch"},
		{"checksum not hex", []byte(good + "\"Manifest-Checksum\": \"xyz\"}\n"), "not a SHA-256"},
		{"field after checksum", []byte(good + "\"Manifest-Checksum\": \"00\", \"Files\": []}\n"), "must be the last field"},
		{"text after the end", append(withManifestChecksum(good), "{}\n"...), "after the end"},
		{"no final newline", bytes.TrimSuffix(withManifestChecksum(good), []byte("\n")), "newline"},
		{"one line", []byte(`{ "PostgreSQL-Backup-Manifest-Version": 1, "Manifest-Checksum": "00"}` + "\n"), "at least 2 lines"},
		{"truncated", withManifestChecksum(good)[:len(good)/2], "ended unexpectedly"},
		{"invalid UTF-8", withManifestChecksum(file("\"Path\": \"a\xff\", \"Size\": 1")), "UTF-8"},
		{"duplicate path", withManifestChecksum(head + "\"Files\": [\n{ \"Path\": \"a\", \"Size\": 1 },\n{ \"Path\": \"a\", \"Size\": 1 }\n],\n"), "duplicate path"},
		{"no path", withManifestChecksum(file(`"Size": 1`)), "without a path"},
		{"path and encoded path", withManifestChecksum(file(`"Path": "a", "Encoded-Path": "61", "Size": 1`)), "both"},
		{"bad encoded path", withManifestChecksum(file(`"Encoded-Path": "6", "Size": 1`)), "could not decode"},
		{"path out of the directory", withManifestChecksum(file(`"Path": "../etc/passwd", "Size": 1`)), "not a relative path"},
		{"absolute path", withManifestChecksum(file(`"Path": "/etc/passwd", "Size": 1`)), "not a relative path"},
		{"unclean path", withManifestChecksum(file(`"Path": "base//1", "Size": 1`)), "not a relative path"},
		{"encoded path out of the directory", withManifestChecksum(file(`"Encoded-Path": "2e2e2f78", "Size": 1`)), "not a relative path"},
		{"no size", withManifestChecksum(file(`"Path": "a"`)), "missing size"},
		{"negative size", withManifestChecksum(file(`"Path": "a", "Size": -1`)), "not an integer"},
		{"fractional size", withManifestChecksum(file(`"Path": "a", "Size": 1.5`)), "not an integer"},
		{"unknown file field", withManifestChecksum(file(`"Path": "a", "Size": 1, "Mode": 384`)), "unexpected file field"},
		{"object as a value", withManifestChecksum(file(`"Path": {"a": 1}, "Size": 1`)), "expected a string or a number"},
		{"checksum without algorithm", withManifestChecksum(file(`"Path": "a", "Size": 1, "Checksum": "00000000"`)), "without algorithm"},
		{"unknown algorithm", withManifestChecksum(file(`"Path": "a", "Size": 1, "Checksum-Algorithm": "MD5", "Checksum": "00"`)), "unrecognized checksum algorithm"},
		{"short checksum", withManifestChecksum(file(`"Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "8a7447"`)), "want 8 hexadecimal digits"},
		{"algorithm without checksum", withManifestChecksum(file(`"Path": "a", "Size": 1, "Checksum-Algorithm": "SHA256"`)), "want 64 hexadecimal digits"},
		{"checksum with NONE", withManifestChecksum(file(`"Path": "a", "Size": 1, "Checksum-Algorithm": "NONE", "Checksum": "00"`)), "want 0 hexadecimal digits"},
		{"file checksum not hex", withManifestChecksum(file(`"Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "8a74472g"`)), "invalid CRC32C checksum"},
		{"range without timeline", withManifestChecksum(walRange(`"Start-LSN": "0/1", "End-LSN": "0/2"`)), "without a timeline"},
		{"range without start", withManifestChecksum(walRange(`"Timeline": 1, "End-LSN": "0/2"`)), "without a start"},
		{"range without end", withManifestChecksum(walRange(`"Timeline": 1, "Start-LSN": "0/1"`)), "without an end"},
		{"timeline 0", withManifestChecksum(walRange(`"Timeline": 0, "Start-LSN": "0/1", "End-LSN": "0/2"`)), "not a timeline"},
		{"bad LSN", withManifestChecksum(walRange(`"Timeline": 1, "Start-LSN": "1", "End-LSN": "0/2"`)), "invalid LSN"},
		{"range backwards", withManifestChecksum(walRange(`"Timeline": 1, "Start-LSN": "0/3", "End-LSN": "0/2"`)), "before its start"},
		{"unknown range field", withManifestChecksum(walRange(`"Timeline": 1, "Start-LSN": "0/1", "End-LSN": "0/2", "X": 1`)), "unexpected WAL range field"},
		{"files not an array", withManifestChecksum(head + "\"Files\": {},\n"), `expected "["`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest(tc.data)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("ParseManifest: %v", err)
			case tc.want == "":
				return
			case err == nil:
				t.Fatalf("ParseManifest accepted it: %+v", m)
			case !errors.Is(err, ErrInvalidManifest):
				t.Fatalf("error %v is not ErrInvalidManifest", err)
			case !strings.Contains(err.Error(), tc.want):
				t.Fatalf("ParseManifest: %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}

func TestParseManifestFields(t *testing.T) {
	data := withManifestChecksum("{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7300000000000000001,\n" +
		"\"Files\": [\n{ \"Encoded-Path\": \"62617365ff2f78\", \"Size\": 5, \"Last-Modified\": \"2026-11-22 03:16:30 GMT\", \"Checksum-Algorithm\": \"crc32c\", \"Checksum\": \"8A744722\" },\n" +
		"{ \"Path\": \"global/pg_control\", \"Size\": 8192 }\n],\n" +
		"\"WAL-Ranges\": [\n{ \"Timeline\": 3, \"Start-LSN\": \"16/B374D848\", \"End-LSN\": \"17/00000100\" }\n],\n")
	m, err := ParseManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data[:bytes.LastIndexByte(data[:len(data)-1], '\n')+1])
	want := Manifest{
		Version:          2,
		SystemIdentifier: 7300000000000000001,
		Files: []ManifestFile{
			{Path: "base\xff/x", Size: 5, LastModified: "2026-11-22 03:16:30 GMT", Algorithm: "CRC32C", Checksum: "8a744722"},
			{Path: "global/pg_control", Size: 8192, Algorithm: "NONE"},
		},
		WALRanges: []WALRange{{Timeline: 3, Start: 0x16B374D848, End: 0x1700000100}},
		Checksum:  hex.EncodeToString(sum[:]),
	}
	if fmt.Sprintf("%#v", m) != fmt.Sprintf("%#v", want) {
		t.Fatalf("got  %#v\nwant %#v", m, want)
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add(manifestText(1, 0, []ManifestFile{{Path: "PG_VERSION", Size: 3, Algorithm: "CRC32C", Checksum: "8a744722"}},
		[]WALRange{{1, 0x2000028, 0x2000100}}))
	f.Add(manifestText(2, 42, []ManifestFile{{Path: "a/b", Size: 0, Algorithm: "NONE"}, {Path: "c", Size: 1, Algorithm: "SHA224", Checksum: manifestChecksumOf("SHA224", []byte("x"))}}, nil))
	f.Add(withManifestChecksum("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{ \"Encoded-Path\": \"2e2e\", \"Size\": 1 }\n],\n"))
	real := readManifestFixture(f, "pg15-crc32c.backup_manifest.gz")
	f.Add(real[:2000])
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidManifest) {
				t.Fatalf("error %v is not ErrInvalidManifest", err)
			}
			return
		}
		if m.Version != 1 && m.Version != 2 {
			t.Fatalf("version %d", m.Version)
		}
		seen := map[string]bool{}
		for _, file := range m.Files {
			if !safeManifestPath(file.Path) || seen[file.Path] || file.Size < 0 {
				t.Fatalf("accepted file %+v", file)
			}
			seen[file.Path] = true
			n, ok := manifestChecksumSize(file.Algorithm)
			if !ok || len(file.Checksum) != 2*n {
				t.Fatalf("accepted checksum %s %q", file.Algorithm, file.Checksum)
			}
		}
		for _, r := range m.WALRanges {
			if r.Timeline == 0 || r.End < r.Start {
				t.Fatalf("accepted WAL range %+v", r)
			}
		}
		// Re-checksummed, the same content parses the same.
		i := bytes.LastIndexByte(data[:len(data)-1], '\n')
		if bytes.HasPrefix(data[i+1:], []byte(`"Manifest-Checksum": "`)) {
			again, err := ParseManifest(withManifestChecksum(string(data[:i+1])))
			if err != nil || fmt.Sprintf("%v", again.Files) != fmt.Sprintf("%v", m.Files) {
				t.Fatalf("re-checksummed manifest: %v", err)
			}
		}
	})
}

// testFile is a file of manifestTestDir.
type testFile struct{ path, content, algorithm string }

// manifestTestDir writes files into a new directory and returns it with a
// manifest of them, in the order given.
func manifestTestDir(t *testing.T, files []testFile) (string, Manifest) {
	t.Helper()
	dir := t.TempDir()
	var mf []ManifestFile
	for _, f := range files {
		writeTestFile(t, filepath.Join(dir, filepath.FromSlash(f.path)), f.content)
		mf = append(mf, ManifestFile{Path: f.path, Size: int64(len(f.content)), Algorithm: f.algorithm, Checksum: manifestChecksumOf(f.algorithm, []byte(f.content))})
	}
	m, err := ParseManifest(manifestText(1, 0, mf, []WALRange{{1, 0x2000028, 0x2000100}}))
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func mismatchProblems(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var mm *ManifestMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("error %v is not a ManifestMismatchError", err)
	}
	return mm.Problems
}

func TestVerifyDataDir(t *testing.T) {
	files := []testFile{
		{"PG_VERSION", "15\n", "CRC32C"},
		{"global/pg_control", strings.Repeat("c", 8192), "SHA256"},
		{"base/1/1259", strings.Repeat("r", 16384), "SHA256"},
		{"base/1/1259_fsm", strings.Repeat("f", 24576), "SHA224"},
		{"base/1/2608", "a", "CRC32C"},
		{"base/1/2609", "b", "SHA224"},
		{"base/1/2610", "c", "SHA256"},
		{"base/1/2611", "d", "SHA384"},
		{"base/1/2612", "e", "NONE"},
		{"base/1/2613", "f", "SHA512"},
		{"base/1/empty", "", "CRC32C"},
		{"postgresql.conf", "x = 1\n", "CRC32C"},
		{"pg_tblspc/16385/PG_15_1/5/16390", "tablespace data", "CRC32C"},
		{"pg_tblspc/16385/PG_15_1/5/16390.1", "more", "SHA512"},
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   []string
	}{
		{"intact", nil, nil},
		{"intact, with the files recovery adds", func(t *testing.T, dir string) {
			for _, p := range []string{"backup_manifest", "postgresql.auto.conf", "recovery.signal", "standby.signal", "pg_wal/000000010000000000000002", "pg_wal/archive_status/x.done"} {
				writeTestFile(t, filepath.Join(dir, p), "x")
			}
		}, nil},
		{"flipped byte", func(t *testing.T, dir string) { flipTestByte(t, filepath.Join(dir, "base/1/1259"), 5000) },
			[]string{`checksum mismatch for file "base/1/1259" (SHA256)`}},
		{"flipped byte, each algorithm", func(t *testing.T, dir string) {
			for _, p := range []string{"PG_VERSION", "base/1/2609", "base/1/2610", "base/1/2611", "base/1/2613"} {
				flipTestByte(t, filepath.Join(dir, p), 0)
			}
		}, []string{
			`checksum mismatch for file "PG_VERSION" (CRC32C)`,
			`checksum mismatch for file "base/1/2609" (SHA224)`,
			`checksum mismatch for file "base/1/2610" (SHA256)`,
			`checksum mismatch for file "base/1/2611" (SHA384)`,
			`checksum mismatch for file "base/1/2613" (SHA512)`,
		}},
		{"flipped byte, no checksum", func(t *testing.T, dir string) { flipTestByte(t, filepath.Join(dir, "base/1/2612"), 0) }, nil},
		{"missing and stray files", func(t *testing.T, dir string) {
			removeTestFile(t, filepath.Join(dir, "base/1/2608"))
			writeTestFile(t, filepath.Join(dir, "base/1/99999"), "stray")
			writeTestFile(t, filepath.Join(dir, "postgresql.auto.conf.bak"), "stray")
			writeTestFile(t, filepath.Join(dir, "pg_walx"), "stray")
		}, []string{
			`"base/1/99999" is present on disk but not in the manifest`,
			`"pg_walx" is present on disk but not in the manifest`,
			`"postgresql.auto.conf.bak" is present on disk but not in the manifest`,
			`"base/1/2608" is present in the manifest but not on disk`,
		}},
		{"size changed", func(t *testing.T, dir string) {
			writeTestFile(t, filepath.Join(dir, "base/1/1259_fsm"), "short")
		}, []string{`"base/1/1259_fsm" has size 5 on disk but size 24576 in the manifest`}},
		{"missing directory", func(t *testing.T, dir string) {
			if err := os.RemoveAll(filepath.Join(dir, "pg_tblspc")); err != nil {
				t.Fatal(err)
			}
		}, []string{
			`"pg_tblspc/16385/PG_15_1/5/16390" is present in the manifest but not on disk`,
			`"pg_tblspc/16385/PG_15_1/5/16390.1" is present in the manifest but not on disk`,
		}},
		{"tablespace behind a symbolic link", func(t *testing.T, dir string) {
			elsewhere := t.TempDir()
			if err := os.Rename(filepath.Join(dir, "pg_tblspc/16385"), filepath.Join(elsewhere, "ts")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(elsewhere, "ts"), filepath.Join(dir, "pg_tblspc/16385")); err != nil {
				t.Fatal(err)
			}
			flipTestByte(t, filepath.Join(elsewhere, "ts/PG_15_1/5/16390"), 3)
		}, []string{`checksum mismatch for file "pg_tblspc/16385/PG_15_1/5/16390" (CRC32C)`}},
		{"dangling link and a FIFO", func(t *testing.T, dir string) {
			if err := os.Symlink("/nonexistent", filepath.Join(dir, "base/1/link")); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
				t.Skip(err)
			}
		}, []string{
			`could not stat file or directory "base/1/link": stat ` + "DIR" + `/base/1/link: no such file or directory`,
			`"fifo" is not a regular file or directory`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, m := manifestTestDir(t, files)
			if tc.damage != nil {
				tc.damage(t, dir)
			}
			got := mismatchProblems(t, VerifyDataDir(ctx, dir, m))
			for i := range tc.want {
				tc.want[i] = strings.ReplaceAll(tc.want[i], "DIR", dir)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestVerifyDataDirManyProblems(t *testing.T) {
	var files []testFile
	for i := range 30 {
		files = append(files, testFile{fmt.Sprintf("base/5/%d", 16384+i), strconv.Itoa(i), "CRC32C"})
	}
	dir, m := manifestTestDir(t, files)
	if err := os.RemoveAll(filepath.Join(dir, "base")); err != nil {
		t.Fatal(err)
	}
	err := VerifyDataDir(context.Background(), dir, m)
	if len(mismatchProblems(t, err)) != 30 {
		t.Fatalf("want 30 problems: %v", err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 22 || !strings.HasPrefix(lines[0], "30 problems comparing "+dir) || lines[21] != "… and 10 more" {
		t.Fatalf("error message:\n%s", err)
	}
}

func TestVerifyDataDirSystemIdentifier(t *testing.T) {
	control := make([]byte, 8192)
	binary.LittleEndian.PutUint64(control, 7300000000000000001)
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "global/pg_control"), string(control))
	for _, tc := range []struct {
		version int
		sysID   uint64
		want    string
	}{
		{2, 7300000000000000001, ""},
		{2, 7300000000000000002, "belongs to another cluster"},
		{1, 0, ""},
	} {
		m, err := ParseManifest(manifestText(tc.version, tc.sysID, []ManifestFile{{Path: "global/pg_control", Size: 8192, Algorithm: "CRC32C", Checksum: manifestCRC32C(control)}}, nil))
		if err != nil {
			t.Fatal(err)
		}
		err = VerifyDataDir(context.Background(), dir, m)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("version %d, system %d: %v", tc.version, tc.sysID, err)
		}
	}
}

func TestVerifyDataDirCancelled(t *testing.T) {
	dir, m := manifestTestDir(t, []testFile{{"a", "1", "SHA256"}, {"b/c", "2", "CRC32C"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := VerifyDataDir(ctx, dir, m); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	var mm *ManifestMismatchError
	if err := VerifyDataDir(context.Background(), filepath.Join(dir, "nonexistent"), m); err == nil || errors.As(err, &mm) {
		t.Fatalf("missing directory: %v", err)
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func removeTestFile(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func flipTestByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// runPG runs a PostgreSQL client tool as the server's OS user and returns
// its combined output and error.
func runClientTool(c *pgtest.Cluster, name string, args ...string) (string, error) {
	cmd := exec.Command(pgtest.ClientBin(name), args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.Dir = os.TempDir()
	c.RunAsServerUser(cmd)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// serverOwned gives path to the owner of dir, for files the server must
// read when the tests run as root.
func giveToServerUser(t *testing.T, path, dir string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
}

// verifyBoth runs VerifyDataDir and pg_verifybackup on dir and returns
// walship's problems and pg_verifybackup's output.
func verifyWithBoth(t *testing.T, c *pgtest.Cluster, dir string, m Manifest) ([]string, string, error) {
	t.Helper()
	problems := mismatchProblems(t, VerifyDataDir(context.Background(), dir, m))
	out, err := runClientTool(c, "pg_verifybackup", "-n", dir)
	return problems, out, err
}

// TestVerifyDataDirPostgres compares VerifyDataDir with pg_verifybackup on
// real base backups taken by pg_basebackup: intact, and then damaged.
func TestVerifyDataDirPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	c := pgtest.Start(t, pgtest.Options{})
	tsDir := pgtest.NewDir(t, "ts")
	c.Psql(t, fmt.Sprintf(`CREATE TABLESPACE extra LOCATION '%s';
CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g;
CREATE TABLE u TABLESPACE extra AS SELECT g FROM generate_series(1, 5000) g;
CHECKPOINT;`, tsDir))
	tFile := c.Psql(t, "SELECT pg_relation_filepath('t')")
	uFile := c.Psql(t, "SELECT pg_relation_filepath('u')")
	// A file name that is not UTF-8: the manifest hex-encodes it
	// (Encoded-Path).
	odd := filepath.Join(c.DataDir(), "odd-\xff\xfe.txt")
	writeTestFile(t, odd, "not UTF-8")
	giveToServerUser(t, odd, c.DataDir())

	for _, algorithm := range []string{"CRC32C", "SHA224", "SHA256", "SHA384", "SHA512", "NONE"} {
		t.Run(algorithm, func(t *testing.T) {
			dir := pgtest.NewDir(t, "backup")
			tsCopy := pgtest.NewDir(t, "ts-copy")
			out, err := runClientTool(c, "pg_basebackup", "-d", c.ConnString(""), "-D", dir, "-Fp", "-X", "none",
				"-c", "fast", "--manifest-checksums="+algorithm, "--tablespace-mapping="+tsDir+"="+tsCopy)
			if err != nil {
				t.Fatalf("pg_basebackup: %v\n%s", err, out)
			}
			data, err := os.ReadFile(filepath.Join(dir, "backup_manifest"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(`"Encoded-Path": "`+hex.EncodeToString([]byte("odd-\xff\xfe.txt"))+`"`)) {
				t.Error("the manifest has no Encoded-Path for the file whose name is not UTF-8")
			}
			m, err := ParseManifest(data)
			if err != nil {
				t.Fatal(err)
			}
			if m.Version != 1 || len(m.WALRanges) != 1 || m.WALRanges[0].Timeline != 1 {
				t.Errorf("manifest version %d, WAL ranges %+v", m.Version, m.WALRanges)
			}
			for _, f := range m.Files {
				if f.Algorithm != algorithm {
					t.Fatalf("%s: algorithm %s, want %s", f.Path, f.Algorithm, algorithm)
				}
			}
			problems, out, err := verifyWithBoth(t, c, dir, m)
			if len(problems) > 0 || err != nil {
				t.Fatalf("intact backup:\nwalship: %q\npg_verifybackup: %v\n%s", problems, err, out)
			}
			if algorithm != "CRC32C" && algorithm != "SHA512" {
				return
			}

			// Recovery settings and WAL do not count; damage does.
			writeTestFile(t, filepath.Join(dir, "standby.signal"), "")
			writeTestFile(t, filepath.Join(dir, "pg_wal", "000000010000000000000009"), "x")
			flipTestByte(t, filepath.Join(dir, tFile), 100)
			tsRel := uFile // pg_tblspc/<oid>/PG_15_.../<db>/<file>, through the symbolic link
			flipTestByte(t, filepath.Join(dir, tsRel), 8000)
			removeTestFile(t, filepath.Join(dir, "PG_VERSION"))
			writeTestFile(t, filepath.Join(dir, "global", "stray"), "x")
			writeTestFile(t, filepath.Join(dir, "pg_ident.conf"), "# shorter than it was\n")
			problems, out, err = verifyWithBoth(t, c, dir, m)
			if err == nil {
				t.Fatalf("pg_verifybackup accepted the damaged backup:\n%s", out)
			}
			want := []string{
				`"global/stray" is present on disk but not in the manifest`,
				`"pg_ident.conf" has size 22 on disk but size `,
				`"PG_VERSION" is present in the manifest but not on disk`,
				`checksum mismatch for file "` + tFile + `"`,
				`checksum mismatch for file "` + tsRel + `"`,
			}
			if len(problems) != len(want) {
				t.Errorf("walship found %d problems, want %d:\n%s", len(problems), len(want), strings.Join(problems, "\n"))
			}
			for _, w := range want {
				if !strings.Contains(strings.Join(problems, "\n"), w) {
					t.Errorf("walship does not report %s:\n%s", w, strings.Join(problems, "\n"))
				}
				if !strings.Contains(out, w) {
					t.Errorf("pg_verifybackup does not report %s:\n%s", w, out)
				}
			}
			t.Logf("walship:\n%s\npg_verifybackup:\n%s", strings.Join(problems, "\n"), out)
		})
	}
}

// TestVerifyDataDirOtherMajors checks manifests of PostgreSQL 13 (version
// 1, from pg_basebackup) and 17 and 18 (version 2; pg_basebackup 15
// refuses them, so the server writes the backup itself: BASE_BACKUP with
// TARGET 'server').
func TestVerifyDataDirOtherMajors(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	for _, major := range []int{13, 17, 18} {
		t.Run("pg"+strconv.Itoa(major), func(t *testing.T) {
			t.Parallel()
			c := pgtest.Start(t, pgtest.Options{Major: major})
			c.Psql(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; CHECKPOINT;")
			dir := pgtest.NewDir(t, "backup")
			if major < 15 {
				out, err := runClientTool(c, "pg_basebackup", "-d", c.ConnString(""), "-D", dir, "-Fp", "-X", "none",
					"-c", "fast", "--manifest-checksums=SHA384")
				if err != nil {
					t.Fatalf("pg_basebackup: %v\n%s", err, out)
				}
			} else {
				target := filepath.Join(pgtest.NewDir(t, "server"), "b")
				// psql passes the COPY messages that report progress on
				// to its output, and exits 1 after them: what counts is
				// what the server wrote.
				out, _ := runClientTool(c, "psql", "-X", "-d", c.ConnString("")+" replication=database", "-c",
					fmt.Sprintf("BASE_BACKUP (LABEL 'walship test', TARGET 'server', TARGET_DETAIL '%s', MANIFEST 'yes', MANIFEST_CHECKSUMS 'SHA512', CHECKPOINT 'fast')", target))
				manifest, err := os.ReadFile(filepath.Join(target, "backup_manifest"))
				if err != nil {
					t.Fatalf("BASE_BACKUP wrote no manifest: %v\n%q", err, out)
				}
				untarBaseBackup(t, filepath.Join(target, "base.tar"), dir)
				writeTestFile(t, filepath.Join(dir, "backup_manifest"), string(manifest))
			}
			data, err := os.ReadFile(filepath.Join(dir, "backup_manifest"))
			if err != nil {
				t.Fatal(err)
			}
			m, err := ParseManifest(data)
			if err != nil {
				t.Fatal(err)
			}
			wantVersion := 1
			if major >= 17 {
				wantVersion = 2
				sysID, err := strconv.ParseUint(c.Psql(t, "SELECT system_identifier FROM pg_control_system()"), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				if m.SystemIdentifier != sysID {
					t.Errorf("manifest system identifier %d, server's %d", m.SystemIdentifier, sysID)
				}
			}
			if m.Version != wantVersion || len(m.Files) < 500 || len(m.WALRanges) != 1 {
				t.Errorf("version %d, %d files, WAL ranges %+v", m.Version, len(m.Files), m.WALRanges)
			}
			if err := VerifyDataDir(context.Background(), dir, m); err != nil {
				t.Fatal(err)
			}
			if major < 17 {
				if out, err := runClientTool(c, "pg_verifybackup", "-n", dir); err != nil {
					t.Fatalf("pg_verifybackup: %v\n%s", err, out)
				}
			}
			rel := c.Psql(t, "SELECT pg_relation_filepath('t')")
			flipTestByte(t, filepath.Join(dir, rel), 42)
			got := mismatchProblems(t, VerifyDataDir(context.Background(), dir, m))
			want := fmt.Sprintf(`checksum mismatch for file %q`, rel)
			if len(got) != 1 || !strings.HasPrefix(got[0], want) {
				t.Fatalf("problems %q, want %s", got, want)
			}
		})
	}
}

// untar extracts a base.tar as PostgreSQL writes it.
func untarBaseBackup(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if target == dir {
			continue
		}
		if !strings.HasPrefix(target, dir+string(filepath.Separator)) {
			t.Fatalf("tar entry %q leaves the directory", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
				t.Fatal(err)
			}
			out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(out, tr); err != nil {
				t.Fatal(err)
			}
			if err := out.Close(); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("tar entry %q of type %q", hdr.Name, hdr.Typeflag)
		}
	}
}
