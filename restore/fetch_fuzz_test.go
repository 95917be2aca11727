package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// FuzzFetch stores arbitrary content as an archived WAL segment, history
// file or backup history file (compressed with one of the codecs, with a
// size and checksum that may lie) and fetches it as wal-fetch does.
// dest then holds exactly the content, checked; or it does not exist and
// no temporary file is left beside it. A recorded size larger than any
// such file can be is refused before anything is written.
func FuzzFetch(f *testing.F) {
	_, segment := waltest.Segment(testSysID, 1, 1, 1<<20, waltest.Compressible(1))
	history, err := os.ReadFile("../testdata/wal/00000002.history")
	if err != nil {
		f.Fatal(err)
	}
	backup, err := os.ReadFile("../testdata/wal/000000010000000000000004.00000028.backup")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(segment, byte(0), byte(0), int64(0), false)
	f.Add(segment[:8192], byte(1), byte(0), int64(0), false)
	f.Add(segment, byte(0), byte(0), int64(1)<<40, false)
	f.Add(history, byte(2), byte(1), int64(0), false)
	f.Add(history, byte(3), byte(1), int64(0), true)
	f.Add(backup, byte(0), byte(2), int64(0), false)
	f.Add(backup, byte(0), byte(2), int64(len(backup)-1), false)
	names := []string{"000000010000000000000001", "00000002.history", "000000010000000000000004.00000028.backup"}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte, codecIdx, kind byte, claimed int64, wrongSum bool) {
		ctx := context.Background()
		c := codec.All()[int(codecIdx)%len(codec.All())]
		name := names[int(kind)%len(names)]
		s := mem.New()
		putObject(t, s, archive.IdentityKey, []byte(`{"system_id":"`+strconv.FormatUint(testSysID, 10)+`","segment_size":1048576}`), nil)
		var stored bytes.Buffer
		zw, err := c.NewWriter(&stored)
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(content)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		size := int64(len(content))
		if claimed != 0 {
			size = claimed
		}
		sum := sha256.Sum256(content)
		if wrongSum {
			sum[0] ^= 1
		}
		putObject(t, s, archive.WALKey(name, c), stored.Bytes(), map[string]string{
			archive.MetaSHA256: hex.EncodeToString(sum[:]), archive.MetaSize: strconv.FormatInt(size, 10),
		})

		dest := filepath.Join(dir, "RECOVERYXLOG")
		os.Remove(dest)
		o := options(t)
		_, err = Fetch(ctx, s, name, dest, o)
		entries, rerr := os.ReadDir(dir)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			if len(entries) != 0 {
				t.Fatalf("fetch failed (%v) but left %s", err, entries[0].Name())
			}
			if size > wal.MaxSegmentSize && !errors.Is(err, archive.ErrCorrupt) {
				t.Fatalf("an object recorded as %d bytes: %v", size, err)
			}
			return
		}
		if wrongSum || size != int64(len(content)) {
			t.Fatalf("fetched an object whose checksum or size is wrong")
		}
		got, err := os.ReadFile(dest)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, content) || len(entries) != 1 {
			t.Fatalf("dest holds %d bytes of %d (%d files)", len(got), len(content), len(entries))
		}
	})
}

// putObject stores data under key with meta (none: the checksum and size
// of data).
func putObject(t *testing.T, s storage.Storage, key string, data []byte, meta map[string]string) {
	t.Helper()
	if meta == nil {
		sum := sha256.Sum256(data)
		meta = map[string]string{archive.MetaSHA256: hex.EncodeToString(sum[:]), archive.MetaSize: strconv.Itoa(len(data))}
	}
	if err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), meta); err != nil {
		t.Fatal(err)
	}
}
