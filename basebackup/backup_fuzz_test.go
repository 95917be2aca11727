package basebackup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// storeRecord stores data under key, checksummed as putRecord does.
func storeRecord(t testing.TB, s storage.Storage, key string, data []byte) {
	t.Helper()
	sum := sha256.Sum256(data)
	meta := map[string]string{archive.MetaSHA256: hex.EncodeToString(sum[:]), archive.MetaSize: strconv.Itoa(len(data))}
	if err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), meta); err != nil {
		t.Fatal(err)
	}
}

// realRecords are a backup.json and a started.json as backup-push writes
// them (the backup of the PostgreSQL 15 fixture, see testdata/wal).
func realRecords(t testing.TB) (meta, started []byte) {
	start := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	b := Backup{
		Name: "base_20261122T030000Z", Timeline: 1, StopTimeline: 1, StartLSN: 0x4000028, StopLSN: 0x4000100,
		StartWAL: "000000010000000000000004", StopWAL: "000000010000000000000004",
		StartTime: start, FinishTime: start.Add(90 * time.Second), Size: 23522048, StoredSize: 3145728,
		PGVersion: 150018, SystemID: "7710817639733050960", SegmentSize: 16 << 20, Codec: "zstd",
		Label:       "walship base_20261122T030000Z",
		Tablespaces: []Tablespace{{OID: 16384, Location: "/srv/postgresql/tablespaces/ts", Size: 18432}, {OID: 0, Size: 23489536}},
		Files: []File{
			{Key: "16384.tar.zst", TablespaceOID: 16384, Digest: archive.Digest{SHA256: "3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Size: 10752}, StoredSize: 2048},
			{Key: "base.tar.zst", Digest: archive.Digest{SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Size: 23489536}, StoredSize: 3140000},
		},
		Manifest: &File{Key: "backup_manifest.zst", Digest: archive.Digest{SHA256: "a3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Size: 826}, StoredSize: 500},
	}
	meta, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	s := Backup{Name: b.Name, Timeline: 1, StartLSN: b.StartLSN, StartWAL: b.StartWAL, StartTime: start,
		PGVersion: b.PGVersion, SystemID: b.SystemID, SegmentSize: b.SegmentSize, Codec: b.Codec, Label: b.Label}
	started, err = json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(meta, '\n'), append(started, '\n')
}

// FuzzBackupRecords reads arbitrary backup.json and started.json records
// (correctly checksummed, so only walship's checks stand between them and
// its readers) through Read, Scan and Choose. A record is refused as
// corrupt or accepted with the backup's own name, start and stop segment
// names, and object keys that stay inside the backup; an accepted record
// is written back identically.
func FuzzBackupRecords(f *testing.F) {
	meta, started := realRecords(f)
	f.Add(meta, started, false)
	f.Add(meta, []byte(nil), true)
	f.Add([]byte(nil), started, false)
	for _, s := range []string{
		`{"name":"base_20261122T030000Z","start_wal":"000000010000000000000004","stop_wal":"000000010000000000000005"}`,
		`{"name":"base_20261122T030000Z","start_wal":"","stop_wal":""}`,
		`{"name":"base_20261122T030000Z","start_wal":"0000","stop_wal":"000000010000000000000005"}`,
		`{"name":"other","start_wal":"000000010000000000000004","stop_wal":"000000010000000000000005"}`,
		`{"name":"base_20261122T030000Z","start_wal":"000000010000000000000004","stop_wal":"000000010000000000000005","files":[{"key":"../../cluster.json"}]}`,
		`{"name":"base_20261122T030000Z","start_wal":"000000010000000000000004","stop_wal":"000000010000000000000005","manifest":{"key":".hidden","size":-1}}`,
		`{"name":"base_20261122T030000Z","start_wal":"000000010000000000000004","stop_wal":"000000010000000000000005","tablespaces":[{"OID":5,"Location":"relative"}]}`,
		`{"name":"base_20261122T030000Z","start_lsn":"0/XYZ"}`,
		`{"name":"base_20261122T030000Z","finish_time":"tomorrow"}`,
	} {
		f.Add([]byte(s), []byte(s), false)
	}
	const name = "base_20261122T030000Z"
	f.Fuzz(func(t *testing.T, meta, started []byte, permanent bool) {
		ctx := context.Background()
		s := mem.New()
		if meta != nil {
			storeRecord(t, s, Prefix+name+"/"+metaName, meta)
		}
		if started != nil {
			storeRecord(t, s, Prefix+name+"/"+startedName, started)
		}
		if permanent {
			storeRecord(t, s, Prefix+name+"/"+permanentName, []byte("kept\n"))
		}

		b, err := Read(ctx, s, name)
		switch {
		case meta == nil && !errors.Is(err, ErrNotFound):
			t.Fatalf("no backup.json: %v, want ErrNotFound", err)
		case meta != nil && err != nil && !errors.Is(err, archive.ErrCorrupt):
			t.Fatalf("error %v is not ErrCorrupt", err)
		case err == nil:
			checkAccepted(t, b, name, metaName)
			if b.Permanent != permanent {
				t.Fatalf("permanent %v, marked %v", b.Permanent, permanent)
			}
			var again Backup
			first, _ := json.Marshal(b)
			if err := json.Unmarshal(first, &again); err != nil {
				t.Fatalf("%s does not read back: %v", first, err)
			}
			if second, _ := json.Marshal(again); !bytes.Equal(first, second) {
				t.Fatalf("round trip:\n%s\nbecame\n%s", first, second)
			}
			if _, err := tablespaceTargets(b, nil); err != nil && errors.Is(err, archive.ErrCorrupt) {
				t.Fatalf("tablespaceTargets: %v", err)
			}
		}

		inv, scanErr := Scan(ctx, s)
		if scanErr != nil && !errors.Is(scanErr, archive.ErrCorrupt) {
			t.Fatalf("Scan: %v is not ErrCorrupt", scanErr)
		}
		if meta != nil && (scanErr == nil) != (err == nil) {
			t.Fatalf("Read says %v, Scan says %v", err, scanErr)
		}
		for _, in := range inv.Incomplete {
			if in.Started != nil {
				checkAccepted(t, *in.Started, name, startedName)
			}
		}
		for _, target := range []Target{{}, {LSN: 0x4000000}, {Time: time.Date(2026, 11, 22, 3, 1, 0, 0, time.UTC)}} {
			if c, err := Choose(ctx, s, "LATEST", target); err == nil {
				checkAccepted(t, c, name, metaName)
			}
		}
	})
}

// checkAccepted fails unless b, read from record, is what the readers of
// records rely on.
func checkAccepted(t *testing.T, b Backup, name, record string) {
	t.Helper()
	if b.Name != name {
		t.Fatalf("%s of %s accepted for backup %q", record, name, b.Name)
	}
	walNames := []string{b.StartWAL}
	if record == metaName {
		walNames = append(walNames, b.StopWAL)
	}
	for _, w := range walNames {
		if fn, err := wal.ParseFileName(w); err != nil || fn.Kind != wal.KindSegment {
			t.Fatalf("%s accepted with WAL segment %q", record, w)
		}
	}
	files := b.Files
	if b.Manifest != nil {
		files = append(files[:len(files):len(files)], *b.Manifest)
	}
	for _, f := range files {
		if !validKey(f.Key) || f.Key == ".." || f.Key == "." {
			t.Fatalf("%s accepted with object key %q", record, f.Key)
		}
	}
}
