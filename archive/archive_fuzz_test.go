package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// putRecord stores data under key with the checksum and size walship
// records, as a writer that knows the format would.
func putRecord(t testing.TB, s storage.Storage, key string, data []byte) {
	t.Helper()
	sum := sha256.Sum256(data)
	meta := map[string]string{MetaSHA256: hex.EncodeToString(sum[:]), MetaSize: strconv.Itoa(len(data))}
	if err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), meta); err != nil {
		t.Fatal(err)
	}
}

// FuzzReadIdentity reads arbitrary cluster.json records, correctly
// checksummed, and the same bytes as a local identity cache. A record is
// refused as corrupt or accepted with a system identifier and a valid
// segment size, and what is accepted is written back identically.
func FuzzReadIdentity(f *testing.F) {
	real, err := json.MarshalIndent(Identity{SystemID: 7710817639733050960, SegmentSize: 16 << 20, PGVersion: 15,
		Created: time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)}, "", "  ")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append(real, '\n'))
	for _, s := range []string{
		`{"system_id":"1","segment_size":16777216}`,
		`{"system_id":1,"segment_size":16777216}`,
		`{"system_id":"18446744073709551616","segment_size":16777216}`,
		`{"system_id":"-1","segment_size":1048576}`,
		`{"system_id":"7","segment_size":3}`,
		`{"system_id":"7","segment_size":1073741824,"created":"yesterday"}`,
		`{"system_id":"0","segment_size":16777216}`,
		`{"system_id":"7","system_id":"8","segment_size":16777216}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	cache := newIdentityCache(f.TempDir(), "file:///archive")
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		s := mem.New()
		putRecord(t, s, IdentityKey, data)
		id, err := ReadIdentity(ctx, s)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
		} else {
			if id.SystemID == 0 || wal.CheckSegmentSize(id.SegmentSize) != nil {
				t.Fatalf("accepted %+v", id)
			}
			back, err := json.Marshal(id)
			if err != nil {
				t.Fatal(err)
			}
			var again Identity
			if err := json.Unmarshal(back, &again); err != nil {
				t.Fatalf("%s does not read back: %v", back, err)
			}
			if again.SystemID != id.SystemID || again.SegmentSize != id.SegmentSize ||
				again.PGVersion != id.PGVersion || !again.Created.Equal(id.Created) {
				t.Fatalf("round trip: %+v became %+v", id, again)
			}
		}

		// The local cache trusts no more than the archive does.
		if err := os.WriteFile(cache.path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if cached, ok := cache.load(); ok && (cached.SystemID == 0 || wal.CheckSegmentSize(cached.SegmentSize) != nil) {
			t.Fatalf("cache accepted %+v", cached)
		}
	})
}

// TestReadSmallRefusesLargeRecords: a record whose recorded size is
// beyond the limit is refused before it is read, with an error that says
// so on one line.
func TestReadSmallRefusesLargeRecords(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	data := []byte(`{"system_id":"1","segment_size":16777216}`)
	sum := sha256.Sum256(data)
	for _, size := range []string{strconv.Itoa(MaxRecordSize + 1), "9223372036854775807"} {
		meta := map[string]string{MetaSHA256: hex.EncodeToString(sum[:]), MetaSize: size}
		if err := s.Delete(ctx, IdentityKey); err != nil && !errors.Is(err, storage.ErrNotExist) {
			t.Fatal(err)
		}
		if err := s.Put(ctx, IdentityKey, bytes.NewReader(data), int64(len(data)), meta); err != nil {
			t.Fatal(err)
		}
		_, err := ReadIdentity(ctx, s)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "more than the") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("size %s: %v", size, err)
		}
	}
}

// FuzzListPartials lists arbitrary keys below partial/ (one per line of
// keys) for a segment. Every snapshot found is a key that was stored,
// belongs to the segment, and is exactly the key PutPartial would give
// it; the list is in increasing size.
func FuzzListPartials(f *testing.F) {
	seg := "000000010000000000000006"
	f.Add(seg, strings.Join([]string{
		PartialKey(seg, 1<<20, codec.All()[0]),
		PartialKey(seg, 3<<20, codec.All()[0]),
		PartialKey(seg, 0x100, codec.All()[3]),
		PartialKey("000000010000000000000007", 1<<20, codec.All()[0]),
	}, "\n"))
	f.Add(seg, "partial/"+seg+".00abcdef.zst\npartial/"+seg+".+0000001\npartial/"+seg+".0000000G.gz\npartial/"+seg+".000000010.s2")
	f.Add(seg, "partial/"+seg+"..zst\npartial/"+seg+".00000001/x.zst\npartial/"+seg+"0.00000001")
	f.Add("00000002.history", "partial/00000002.history.00000001")
	f.Fuzz(func(t *testing.T, segment, keys string) {
		if _, err := wal.ParseFileName(segment); err != nil {
			return // callers pass the name of a WAL file only
		}
		ctx := context.Background()
		s := mem.New()
		stored := map[string]bool{}
		for _, key := range strings.Split(keys, "\n") {
			key = PartialPrefix + strings.TrimPrefix(key, PartialPrefix)
			if stored[key] {
				continue
			}
			stored[key] = true
			putRecord(t, s, key, nil)
		}
		got, err := ListPartials(ctx, s, segment)
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range got {
			if !stored[p.Key] {
				t.Fatalf("%q was never stored", p.Key)
			}
			_, c := codec.Split(p.Key)
			if want := PartialKey(segment, p.Bytes, c); want != p.Key {
				t.Fatalf("%q taken for the snapshot of %d bytes of %s, whose key is %q", p.Key, p.Bytes, segment, want)
			}
			if i > 0 && got[i-1].Bytes > p.Bytes {
				t.Fatalf("not in increasing size: %+v", got)
			}
		}
		// And every key PutPartial would write is found.
		var want []string
		for key := range stored {
			if base, c := codec.Split(strings.TrimPrefix(key, PartialPrefix+segment+".")); len(base) == 8 {
				if n, err := strconv.ParseUint(base, 16, 32); err == nil && PartialKey(segment, int64(n), c) == key {
					want = append(want, key)
				}
			}
		}
		var found []string
		for _, p := range got {
			found = append(found, p.Key)
		}
		slices.Sort(want)
		slices.Sort(found)
		if fmt.Sprint(want) != fmt.Sprint(found) {
			t.Fatalf("found %q, want %q", found, want)
		}
	})
}
