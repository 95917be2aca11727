package basebackup

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walship/walship/internal/pgrepl"
	"github.com/walship/walship/internal/pgtest"
)

// tablespaceCluster is a running server with a tablespace ts holding a
// table t_ts of a few hundred rows.
type tablespaceCluster struct {
	*pgtest.Cluster
	location string // the tablespace's directory
	oid      uint32 // the tablespace's OID
	relPath  string // the table's file inside the tablespace archive
}

func startTablespaceCluster(t *testing.T, major int) *tablespaceCluster {
	t.Helper()
	// Made before the server so that it is removed after the server stops.
	location := pgtest.NewDir(t, "ts")
	c := pgtest.Start(t, pgtest.Options{Major: major})
	c.Psql(t, "CREATE TABLESPACE ts LOCATION '"+location+"'")
	c.Psql(t, "CREATE TABLE t_ts (id int, s text) TABLESPACE ts; "+
		"INSERT INTO t_ts SELECT i, repeat('x', 20) FROM generate_series(1, 100) i; CHECKPOINT")
	oid, err := strconv.ParseUint(c.Psql(t, "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'"), 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	// pg_tblspc/<oid>/PG_<major>_<catversion>/<db>/<relfilenode>; the
	// tablespace archive holds what follows pg_tblspc/<oid>/.
	filePath := c.Psql(t, "SELECT pg_relation_filepath('t_ts')")
	prefix := fmt.Sprintf("pg_tblspc/%d/", oid)
	if !strings.HasPrefix(filePath, prefix) {
		t.Fatalf("t_ts is in %s, not in tablespace %d", filePath, oid)
	}
	return &tablespaceCluster{Cluster: c, location: location, oid: uint32(oid), relPath: strings.TrimPrefix(filePath, prefix)}
}

// tarEntry is what a test wants to know of an archive member.
type tarEntry struct {
	typeflag byte
	linkname string
	size     int64
	content  []byte // for small files
}

// readTar reads a whole archive with archive/tar, which must reach a clean
// end, and returns its entries by name (directories without the trailing
// slash). It also checks that the raw bytes end with the two zero blocks
// that terminate a tar archive.
func readTar(t *testing.T, r io.Reader) (map[string]tarEntry, int64) {
	t.Helper()
	var raw countingTail
	tr := tar.NewReader(io.TeeReader(r, &raw))
	entries := make(map[string]tarEntry)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("archive/tar: %v", err)
		}
		e := tarEntry{typeflag: h.Typeflag, linkname: h.Linkname, size: h.Size}
		if h.Typeflag == tar.TypeReg && h.Size <= 4096 {
			if e.content, err = io.ReadAll(tr); err != nil {
				t.Fatalf("archive/tar: reading %s: %v", h.Name, err)
			}
		}
		entries[strings.TrimSuffix(h.Name, "/")] = e
	}
	// archive/tar stops after the terminator; read what may follow.
	if _, err := io.Copy(io.Discard, io.TeeReader(r, &raw)); err != nil {
		t.Fatal(err)
	}
	if raw.n%tarBlock != 0 || raw.n < 2*tarBlock || !isZeroBlock(raw.tail[:]) {
		t.Errorf("archive of %d bytes does not end with two zero blocks", raw.n)
	}
	return entries, raw.n
}

// countingTail counts the bytes written to it and keeps the last 1024.
type countingTail struct {
	n    int64
	tail [2 * tarBlock]byte
}

func (c *countingTail) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	if len(p) >= len(c.tail) {
		copy(c.tail[:], p[len(p)-len(c.tail):])
	} else {
		copy(c.tail[:], c.tail[len(p):])
		copy(c.tail[len(c.tail)-len(p):], p)
	}
	return len(p), nil
}

// backupRecord is what a handler saw of one backup.
type backupRecord struct {
	start      Start
	startCalls int
	order      []uint32 // OIDs in the order the archives came
	entries    map[uint32]map[string]tarEntry
	handed     map[uint32]int64 // bytes handed to the handler
	fromServer map[uint32]int64 // of which the server sent (from Progress)
	manifest   []byte
	progress   []int64
}

func recordingHandler(t *testing.T, rec *backupRecord) Handler {
	rec.entries = make(map[uint32]map[string]tarEntry)
	rec.handed = make(map[uint32]int64)
	rec.fromServer = make(map[uint32]int64)
	return Handler{
		Started: func(s Start) error {
			rec.start = s
			rec.startCalls++
			return nil
		},
		Archive: func(ts Tablespace, r io.Reader) error {
			before := int64(0)
			if n := len(rec.progress); n > 0 {
				before = rec.progress[n-1]
			}
			rec.order = append(rec.order, ts.OID)
			entries, n := readTar(t, r)
			rec.entries[ts.OID] = entries
			rec.handed[ts.OID] = n
			after := before
			if n := len(rec.progress); n > 0 {
				after = rec.progress[n-1]
			}
			rec.fromServer[ts.OID] = after - before
			return nil
		},
		Manifest: func(r io.Reader) error {
			var err error
			rec.manifest, err = io.ReadAll(r)
			return err
		},
		Progress: func(done int64) {
			if n := len(rec.progress); n > 0 && done < rec.progress[n-1] {
				t.Errorf("progress went back from %d to %d", rec.progress[n-1], done)
			}
			rec.progress = append(rec.progress, done)
		},
	}
}

func TestRunAgainstPostgreSQL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	for _, major := range []int{13, 15, 17} {
		t.Run(fmt.Sprintf("PG%d", major), func(t *testing.T) {
			t.Parallel()
			testRunAgainst(t, major)
		})
	}
}

func testRunAgainst(t *testing.T, major int) {
	begin := time.Now()
	c := startTablespaceCluster(t, major)
	t.Logf("server started in %v", time.Since(begin).Round(time.Millisecond))
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
	if version/10000 != major {
		t.Fatalf("ServerVersion = %d on PostgreSQL %d", version, major)
	}
	sys, err := pgrepl.IdentifySystem(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Psql(t, "SELECT system_identifier FROM pg_control_system()"); strconv.FormatUint(sys.SystemID, 10) != want {
		t.Errorf("IdentifySystem: system identifier %d, want %s", sys.SystemID, want)
	}
	if sys.Timeline != 1 || sys.XLogPos == 0 || sys.DBName != "" {
		t.Errorf("IdentifySystem = %+v", sys)
	}

	// A quote in the label checks the quoting; Wait with archiving off
	// makes 15 and 17 send a NOTICE in the middle of the reply.
	const label = "walship's test"
	o := Options{Label: label, Fast: true, Progress: true, Manifest: true, Wait: major != 13}
	if major == 17 {
		o.ManifestChecksums = "SHA256"
	}
	var rec backupRecord
	began := time.Now()
	start, end, err := Run(ctx, conn, version, o, recordingHandler(t, &rec))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("backup of %d bytes in %v: start %s, end %s", rec.progress[len(rec.progress)-1],
		time.Since(began).Round(time.Millisecond), start.LSN, end.LSN)

	// Positions.
	if start.LSN == 0 || end.LSN < start.LSN || start.Timeline != 1 || end.Timeline != 1 {
		t.Errorf("start %s on %d, end %s on %d", start.LSN, start.Timeline, end.LSN, end.Timeline)
	}
	if rec.startCalls != 1 || rec.start.LSN != start.LSN || len(rec.start.Tablespaces) != len(start.Tablespaces) {
		t.Errorf("Started called %d times with %+v; Run returned %+v", rec.startCalls, rec.start, start)
	}

	// The tablespace list, and archives in its order.
	if len(start.Tablespaces) != 2 {
		t.Fatalf("tablespaces %+v, want ts and the main data directory", start.Tablespaces)
	}
	for i, ts := range start.Tablespaces {
		if i >= len(rec.order) || rec.order[i] != ts.OID {
			t.Errorf("archives came in OID order %v; the tablespace list is %+v", rec.order, start.Tablespaces)
		}
		switch ts.OID {
		case 0:
			if ts.Location != "" || ts.Size < 1<<20 {
				t.Errorf("main data directory %+v", ts)
			}
		case c.oid:
			if ts.Location != c.location || ts.Size <= 0 {
				t.Errorf("tablespace %+v, want location %s", ts, c.location)
			}
		default:
			t.Errorf("unknown tablespace %+v", ts)
		}
	}
	t.Logf("tablespace list order (OIDs): %v", rec.order)
	if rec.order[len(rec.order)-1] != 0 {
		t.Errorf("the main data directory is not last: %v", rec.order)
	}

	// The main archive.
	main := rec.entries[0]
	for _, name := range []string{"PG_VERSION", "global/pg_control", "backup_label"} {
		if e, ok := main[name]; !ok || e.typeflag != tar.TypeReg {
			t.Errorf("main archive: no file %s", name)
		}
	}
	if v := strings.TrimSpace(string(main["PG_VERSION"].content)); v != strconv.Itoa(major) {
		t.Errorf("PG_VERSION %q", v)
	}
	backupLabel := string(main["backup_label"].content)
	if !strings.Contains(backupLabel, "LABEL: "+label+"\n") ||
		!strings.Contains(backupLabel, "START WAL LOCATION: "+start.LSN.String()+" ") {
		t.Errorf("backup_label:\n%s", backupLabel)
	}
	link := fmt.Sprintf("pg_tblspc/%d", c.oid)
	if e, ok := main[link]; !ok || e.typeflag != tar.TypeSymlink || e.linkname != c.location {
		t.Errorf("main archive: %s is %+v, want a symlink to %s", link, e, c.location)
	}
	if _, ok := main["tablespace_map"]; ok {
		t.Error("main archive has a tablespace_map; none was requested")
	}
	for name := range main {
		if strings.HasPrefix(name, "pg_wal/") && name != "pg_wal/archive_status" {
			t.Errorf("main archive has WAL: %s", name)
		}
	}

	// The tablespace archive.
	if e, ok := rec.entries[c.oid][c.relPath]; !ok || e.typeflag != tar.TypeReg || e.size < 8192 {
		t.Errorf("tablespace archive: %s is %+v, want the table's file", c.relPath, e)
	}

	// Terminators: what the server sent and what Run added.
	for _, oid := range rec.order {
		added := rec.handed[oid] - rec.fromServer[oid]
		t.Logf("archive %s: %d bytes from the server, %d zero bytes added", archiveName(Tablespace{OID: oid}),
			rec.fromServer[oid], added)
		if want := map[bool]int64{true: 1024, false: 0}[major < 15]; added != want {
			t.Errorf("archive of tablespace %d: %d zero bytes added, want %d", oid, added, want)
		}
	}

	// The manifest.
	var manifest struct {
		Version *int `json:"PostgreSQL-Backup-Manifest-Version"`
		Files   []struct {
			Path              string
			Size              int64
			ChecksumAlgorithm string `json:"Checksum-Algorithm"`
		}
	}
	if err := json.Unmarshal(rec.manifest, &manifest); err != nil || manifest.Version == nil {
		t.Fatalf("manifest (%d bytes) is not a backup manifest: %v", len(rec.manifest), err)
	}
	paths := make(map[string]string)
	for _, f := range manifest.Files {
		paths[f.Path] = f.ChecksumAlgorithm
	}
	for _, p := range []string{"backup_label", "global/pg_control", "pg_tblspc/" + strconv.Itoa(int(c.oid)) + "/" + c.relPath} {
		if _, ok := paths[p]; !ok {
			t.Errorf("manifest does not list %s", p)
		}
	}
	if want := map[bool]string{true: "SHA256", false: "CRC32C"}[major == 17]; paths["backup_label"] != want {
		t.Errorf("manifest checksum algorithm %q, want %s", paths["backup_label"], want)
	}

	// Progress: often, and up to every byte the server sent.
	var total int64
	for _, n := range rec.fromServer {
		total += n
	}
	if len(rec.progress) < 10 || rec.progress[len(rec.progress)-1] != total {
		t.Errorf("%d progress reports, last %v, want many up to %d", len(rec.progress), rec.progress[len(rec.progress)-1:], total)
	}

	// The connection is ready for another command.
	if _, err := pgrepl.IdentifySystem(ctx, conn); err != nil {
		t.Errorf("IDENTIFY_SYSTEM after the backup: %v", err)
	}

	// A server error comes back with the server's words, and leaves the
	// connection usable.
	_, _, err = Run(ctx, conn, version, Options{Label: strings.Repeat("x", 2000)}, Handler{})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.Contains(err.Error(), "backup label too long") {
		t.Errorf("Run with a 2000-byte label: %v, want the server's error", err)
	}
	if conn.IsClosed() {
		t.Error("the connection was closed after a server error")
	} else if _, err := pgrepl.IdentifySystem(ctx, conn); err != nil {
		t.Errorf("IDENTIFY_SYSTEM after a server error: %v", err)
	}

	// A handler error aborts the backup: the connection is closed, and
	// the server takes the next backup.
	stop := errors.New("storage is full")
	_, _, err = Run(ctx, conn, version, Options{Fast: true}, Handler{
		Archive: func(ts Tablespace, r io.Reader) error {
			_, _ = io.CopyN(io.Discard, r, 1000)
			return stop
		},
	})
	if !errors.Is(err, stop) {
		t.Errorf("Run with a failing handler: %v, want %v", err, stop)
	}
	if !conn.IsClosed() {
		t.Error("the connection is still open after a handler error")
	}
	// Cancelling ctx in the middle of a backup stops Run at once.
	conn3, err := pgrepl.Connect(ctx, c.ConnString(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn3.Close(context.Background())
	cctx, ccancel := context.WithCancel(ctx)
	_, _, err = Run(cctx, conn3, version, Options{Fast: true}, Handler{
		Archive: func(ts Tablespace, r io.Reader) error {
			ccancel()
			_, err := io.Copy(io.Discard, r)
			return err
		},
	})
	ccancel()
	if !errors.Is(err, context.Canceled) || !conn3.IsClosed() {
		t.Errorf("Run with ctx cancelled: %v (connection closed: %v), want context.Canceled", err, conn3.IsClosed())
	}

	conn2, err := pgrepl.Connect(ctx, c.ConnString(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(context.Background())
	var archives int
	_, end2, err := Run(ctx, conn2, version, Options{Fast: true}, Handler{
		Archive: func(Tablespace, io.Reader) error { archives++; return nil },
	})
	if err != nil || archives != 2 || end2.LSN <= end.LSN {
		t.Errorf("backup after an aborted one: %d archives, end %s, %v", archives, end2.LSN, err)
	}
	t.Logf("PostgreSQL %d done in %v", major, time.Since(begin).Round(time.Millisecond))
}
