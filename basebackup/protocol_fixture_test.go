package basebackup

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/walship/walship/internal/pgrepl"
)

// The fixtures in testdata/basebackup are replies of real servers to
// BASE_BACKUP, cut down to a few kilobytes (see the README there). Refresh
// them with
//
//	go test ./basebackup -run TestRecordProtocolFixtures -update-protocol
//	go test ./basebackup -run TestDecodeFixtures -update-protocol
//
// The first needs the servers; the second rewrites the golden summaries.
var updateProtocol = flag.Bool("update-protocol", false, "re-record the base backup protocol fixtures and golden files in testdata/basebackup")

const fixtureDir = "../testdata/basebackup"

// fixtureLocation replaces the temporary directory of the recorded
// tablespace, so that fixtures do not change with every recording.
const fixtureLocation = "/srv/postgresql/tablespaces/ts"

// fixtureOptions are the options the fixtures were recorded with.
var fixtureOptions = Options{Label: "walship fixture", Fast: true, Progress: true, Manifest: true, Wait: true}

// fixtures lists the recorded majors; the protocol depends only on 13-14
// versus 15+.
var fixtures = []struct {
	major   int
	version int
}{{13, 130000}, {15, 150000}, {17, 170000}}

func fixturePath(major int, ext string) string {
	return filepath.Join(fixtureDir, fmt.Sprintf("pg%d.%s", major, ext))
}

func readFixture(t testing.TB, major int) []byte {
	t.Helper()
	b, err := os.ReadFile(fixturePath(major, "wire"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDecodeFixtures decodes each recorded reply and compares what the
// handlers saw with a golden summary.
func TestDecodeFixtures(t *testing.T) {
	for _, f := range fixtures {
		t.Run(fmt.Sprintf("PG%d", f.major), func(t *testing.T) {
			wire := readFixture(t, f.major)
			got := summarizeDecode(t, wire, f.version)
			golden := fixturePath(f.major, "golden")
			if *updateProtocol {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("decoding %s:\n%s\nwant (%s):\n%s", fixturePath(f.major, "wire"), got, golden, want)
			}
		})
	}
}

// summarizeDecode decodes a recorded reply, reading every archive with
// archive/tar, and describes what it saw.
func summarizeDecode(t *testing.T, wire []byte, version int) string {
	t.Helper()
	var b strings.Builder
	var progress []int64
	var lastProgress int64
	h := Handler{
		Started: func(s Start) error {
			fmt.Fprintf(&b, "start %s timeline %d\n", s.LSN, s.Timeline)
			for _, ts := range s.Tablespaces {
				fmt.Fprintf(&b, "tablespace %d %q size %d\n", ts.OID, ts.Location, ts.Size)
			}
			return nil
		},
		Archive: func(ts Tablespace, r io.Reader) error {
			before := lastProgress
			var raw countingTail
			tr := tar.NewReader(io.TeeReader(r, &raw))
			var names []string
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					return fmt.Errorf("archive/tar: %w", err)
				}
				desc := fmt.Sprintf("  %c %s %d", h.Typeflag, h.Name, h.Size)
				if h.Linkname != "" {
					desc += " -> " + h.Linkname
				}
				names = append(names, desc)
			}
			if _, err := io.Copy(io.Discard, io.TeeReader(r, &raw)); err != nil {
				return err
			}
			fmt.Fprintf(&b, "archive %s: %d bytes from the server, %d added, ends with two zero blocks: %v\n",
				archiveName(ts), lastProgress-before, raw.n-(lastProgress-before), isZeroBlock(raw.tail[:]))
			b.WriteString(strings.Join(names, "\n") + "\n")
			return nil
		},
		Manifest: func(r io.Reader) error {
			m, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			var v struct {
				Version int `json:"PostgreSQL-Backup-Manifest-Version"`
				Files   []struct{ Path string }
			}
			if err := json.Unmarshal(m, &v); err != nil {
				return fmt.Errorf("manifest: %w", err)
			}
			fmt.Fprintf(&b, "manifest version %d, %d bytes:\n", v.Version, len(m))
			for _, f := range v.Files {
				fmt.Fprintf(&b, "  %s\n", f.Path)
			}
			return nil
		},
		Progress: func(done int64) {
			progress = append(progress, done)
			lastProgress = done
		},
	}
	start, end, err := Decode(wireSource(wire), version, fixtureOptions, h)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	fmt.Fprintf(&b, "end %s timeline %d\n", end.LSN, end.Timeline)
	fmt.Fprintf(&b, "progress reports %d, last %d\n", len(progress), lastProgress)
	if len(start.Tablespaces) == 0 {
		t.Error("no tablespaces")
	}
	return b.String()
}

// TestRecordProtocolFixtures records the fixtures from real servers (only
// with -update-protocol).
func TestRecordProtocolFixtures(t *testing.T) {
	if !*updateProtocol {
		t.Skip("records fixtures only with -update-protocol")
	}
	for _, f := range fixtures {
		t.Run(fmt.Sprintf("PG%d", f.major), func(t *testing.T) {
			recordFixture(t, f.major)
		})
	}
}

func recordFixture(t *testing.T, major int) {
	c := startTablespaceCluster(t, major)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgrepl.Connect(ctx, c.ConnString(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	version, err := pgrepl.ServerVersion(conn)
	if err != nil {
		t.Fatal(err)
	}
	conn.Frontend().Send(&pgproto3.Query{String: Command(version, fixtureOptions)})
	if err := conn.Frontend().Flush(); err != nil {
		t.Fatal(err)
	}
	// Messages are only valid until the next one: keep their wire bytes.
	var wire []byte
	src := func() (pgproto3.BackendMessage, error) {
		m, err := conn.ReceiveMessage(ctx)
		if err == nil {
			wire, err = m.Encode(wire)
		}
		return m, err
	}
	if _, _, err := Decode(src, version, fixtureOptions, Handler{}); err != nil {
		t.Fatal(err)
	}
	msgs, err := readWire(wire)
	if err != nil {
		t.Fatal(err)
	}
	keep := func(name string) bool {
		switch strings.TrimSuffix(name, "/") {
		case "backup_label", "PG_VERSION", "global", "global/pg_control", "pg_tblspc",
			fmt.Sprintf("pg_tblspc/%d", c.oid):
			return true
		}
		// The tablespace archive: its directories and the table's file.
		return strings.HasPrefix(c.relPath, strings.TrimSuffix(name, "/"))
	}
	reduced := reduceRecording(t, msgs, version >= streamVersion, keep, c.location)
	// The cut-down reply must still decode.
	if _, _, err := Decode(wireSource(reduced), version, fixtureOptions, Handler{}); err != nil {
		t.Fatalf("the reduced recording does not decode: %v", err)
	}
	if err := os.MkdirAll(fixtureDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fixturePath(major, "wire"), reduced, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL %d: %d messages, %d bytes recorded; fixture of %d bytes", major, len(msgs), len(wire), len(reduced))
}

// reduceRecording cuts a recorded reply down: the framing messages stay as
// they were, in their order; each archive keeps only the entries keep
// wants (their bytes as the server sent them) and its terminator if the
// server sent one; the manifest keeps only the lines of those files; the
// tablespace location becomes fixtureLocation everywhere. Archive and
// manifest data are sent in CopyData messages of up to 2 kB, and the
// progress messages of an archive follow its data.
func reduceRecording(t *testing.T, msgs []pgproto3.BackendMessage, stream bool, keep func(string) bool, location string) []byte {
	t.Helper()
	var out []pgproto3.BackendMessage
	var seg []byte // data of the current archive or manifest
	var segProgress []pgproto3.BackendMessage
	inManifest, inSeg := false, false
	tablespaces, copies := 0, 0
	flush := func() {
		if !inSeg {
			return
		}
		var data []byte
		if inManifest {
			data = reduceManifest(t, seg, keep)
		} else {
			data = reduceTar(t, seg, keep, location)
		}
		for len(data) > 0 {
			n := min(len(data), 2048)
			chunk := data[:n]
			if stream {
				chunk = append([]byte{msgData}, chunk...)
			}
			out = append(out, &pgproto3.CopyData{Data: chunk})
			data = data[n:]
		}
		out = append(out, segProgress...)
		seg, segProgress, inSeg = nil, nil, false
	}
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) == 3 {
				tablespaces++
				if string(m.Values[1]) == location {
					m.Values[1] = []byte(fixtureLocation)
				}
			}
		case *pgproto3.CopyOutResponse:
			if !stream {
				copies++
				inSeg, inManifest = true, copies > tablespaces
			}
		case *pgproto3.CopyDone:
			flush()
		case *pgproto3.CopyData:
			if !stream {
				seg = append(seg, m.Data...)
				continue
			}
			switch m.Data[0] {
			case msgData:
				seg = append(seg, m.Data[1:]...)
				continue
			case msgProgress:
				segProgress = append(segProgress, m)
				continue
			case msgNewArchive:
				flush()
				inSeg, inManifest = true, false
				name, loc, _ := bytes.Cut(m.Data[1:], []byte{0})
				if string(bytes.TrimSuffix(loc, []byte{0})) == location {
					m.Data = []byte(string(msgNewArchive) + string(name) + "\x00" + fixtureLocation + "\x00")
				}
			case msgManifest:
				flush()
				inSeg, inManifest = true, true
			}
		}
		out = append(out, m)
	}
	return encodeWire(out...)
}

// reduceTar keeps the entries keep wants, byte for byte, except that a
// symlink to location is pointed at fixtureLocation.
func reduceTar(t *testing.T, archive []byte, keep func(string) bool, location string) []byte {
	t.Helper()
	var out []byte
	var framing tarFraming
	if err := framing.feed(archive); err != nil {
		t.Fatal(err)
	}
	for off := 0; off+tarBlock <= len(archive); {
		h := archive[off : off+tarBlock]
		if isZeroBlock(h) {
			break
		}
		size, err := tarEntryDataSize(h)
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		n := tarBlock + int((size+tarBlock-1)/tarBlock*tarBlock)
		entry := archive[off : off+n]
		off += n
		name := string(bytes.TrimRight(h[:100], "\x00"))
		if !keep(name) {
			continue
		}
		entry = bytes.Clone(entry)
		if h[156] == tar.TypeSymlink && string(bytes.TrimRight(h[157:257], "\x00")) == location {
			copy(entry[157:257], make([]byte, 100))
			copy(entry[157:257], fixtureLocation)
			setTarChecksum(entry[:tarBlock])
		}
		out = append(out, entry...)
	}
	if framing.done {
		out = append(out, make([]byte, 2*tarBlock)...)
	}
	return out
}

// setTarChecksum recomputes a header's checksum as tar writers do.
func setTarChecksum(h []byte) {
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// reduceManifest keeps the lines of the files keep wants (a manifest has
// one file per line) and fixes the commas between them. The manifest's own
// checksum no longer matches.
func reduceManifest(t *testing.T, manifest []byte, keep func(string) bool) []byte {
	t.Helper()
	lines := strings.SplitAfter(string(manifest), "\n")
	var out []string
	lastFile := -1
	for _, line := range lines {
		if i := strings.Index(line, `"Path": "`); i >= 0 {
			path, _, _ := strings.Cut(line[i+len(`"Path": "`):], `"`)
			tsPath, isTablespace := strings.CutPrefix(path, "pg_tblspc/")
			if isTablespace {
				_, tsPath, _ = strings.Cut(tsPath, "/")
			}
			if !keep(path) && !(isTablespace && keep(tsPath)) {
				continue
			}
			line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), ",") + ",\n"
			lastFile = len(out)
		}
		out = append(out, line)
	}
	if lastFile < 0 {
		t.Fatal("no file kept in the manifest")
	}
	out[lastFile] = strings.TrimSuffix(strings.TrimSuffix(out[lastFile], "\n"), ",") + "\n"
	return []byte(strings.Join(out, ""))
}
