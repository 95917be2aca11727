// Package storagetest is the conformance suite every storage backend must
// pass. It checks, through the storage.Storage interface only, the
// guarantees the archive relies on: atomic no-overwrite Put, exact round
// trips of content and metadata, ErrNotExist for missing objects, ordered
// and complete listings (past S3's 1000-keys-per-page limit), idempotent
// Delete, storage.DeleteAll of thousands of keys (bare and through
// storage.WithRetry: all gone, missing keys fine, nothing else touched),
// a single winner among concurrent Puts of one key (losers get
// ErrExist, or a retryable error whose retry gets ErrExist), and Puts
// that leave nothing behind when they fail or are cancelled. PutStream
// gets the same checks with streams of unknown length, from empty to
// 40 MiB (more than two S3 parts): round trips, no overwrite (also of a
// key stored while the stream is being read), nothing visible after the
// stream fails or the context is cancelled, one winner among concurrent
// streams.
//
// A backend's test calls Run with a constructor:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Storage {
//			s, err := fs.New(t.TempDir())
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/storage"
)

// Run runs the conformance suite as subtests of t.
//
// newStorage is called once per subtest, possibly from several subtests at
// the same time, and must return an empty storage that no other call shares
// (for S3: a fresh bucket or a fresh key prefix). It should register any
// cleanup with t.Cleanup and fail the test itself if it cannot connect.
//
// Keys used by the suite are valid everywhere: slash-separated, no empty
// components, no component starting with ".", and no key that is also the
// "directory" of another key.
func Run(t *testing.T, newStorage func(t *testing.T) storage.Storage) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Storage)
	}{
		{"PutGet", testPutGet},
		{"PutExisting", testPutExisting},
		{"NotExist", testNotExist},
		{"ZeroByte", testZeroByte},
		{"LargeBody", testLargeBody},
		{"KeyCharacters", testKeyCharacters},
		{"ListNested", testListNested},
		{"ListMany", testListMany},
		{"ListStop", testListStop},
		{"Delete", testDelete},
		{"DeleteAll", testDeleteAll},
		{"ConcurrentPut", testConcurrentPut},
		{"CancelledPut", testCancelledPut},
		{"ShortBody", testShortBody},
		{"PutStream", testPutStream},
		{"PutStreamExisting", testPutStreamExisting},
		{"PutStreamKeyTakenMidway", testPutStreamKeyTakenMidway},
		{"PutStreamReaderFails", testPutStreamReaderFails},
		{"PutStreamCancelled", testPutStreamCancelled},
		{"ConcurrentPutStream", testConcurrentPutStream},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStorage(t)
			if s == nil {
				t.Fatal("newStorage returned nil")
			}
			tc.fn(t, s)
		})
	}
}

// checksum is how the suite's metadata looks like the archive's: a
// walship-sha256 value over the content.
func checksum(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func metaFor(data []byte) map[string]string {
	return map[string]string{
		"walship-sha256": checksum(data),
		"walship-codec":  "zstd",
		"walship-size":   fmt.Sprint(len(data)),
		"walship-time":   "2024-05-01T03:00:00Z",
	}
}

// randomBytes returns n bytes that do not compress, from a fixed seed so a
// failure reproduces.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x77616c73686970))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, s storage.Storage, key string, data []byte, meta map[string]string) {
	t.Helper()
	if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data)), meta); err != nil {
		t.Fatalf("Put(%q, %d bytes) on %s: %v", key, len(data), s, err)
	}
}

// get reads the whole object and checks that Get's ObjectInfo agrees
// with what was read.
func get(t *testing.T, s storage.Storage, key string) ([]byte, storage.ObjectInfo) {
	t.Helper()
	rc, info, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q) on %s: %v", key, s, err)
	}
	data, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("Get(%q) on %s: reading body: %v", key, s, err)
	}
	if info.Key != key {
		t.Errorf("Get(%q): ObjectInfo.Key = %q", key, info.Key)
	}
	if !sameSize(s, info.Size, int64(len(data))) {
		t.Errorf("Get(%q): ObjectInfo.Size = %d, but the body has %d bytes", key, info.Size, len(data))
	}
	return data, info
}

// checkObject checks content and metadata of key through Get and Stat.
func checkObject(t *testing.T, s storage.Storage, key string, want []byte, wantMeta map[string]string) {
	t.Helper()
	data, info := get(t, s, key)
	if !bytes.Equal(data, want) {
		t.Errorf("Get(%q): content differs: got %d bytes (sha256 %s), want %d bytes (sha256 %s)",
			key, len(data), checksum(data), len(want), checksum(want))
	}
	checkMeta(t, "Get("+key+")", visible(s, info.Metadata), wantMeta)

	st, err := s.Stat(t.Context(), key)
	if err != nil {
		t.Fatalf("Stat(%q): %v", key, err)
	}
	if st.Key != key {
		t.Errorf("Stat(%q): Key = %q", key, st.Key)
	}
	if !sameSize(s, st.Size, int64(len(want))) {
		t.Errorf("Stat(%q): Size = %d, want %d", key, st.Size, len(want))
	}
	checkMeta(t, "Stat("+key+")", visible(s, st.Metadata), wantMeta)
	// A backend may not know modification times, but one it reports
	// must be plausible: retention and temp-file sweeping rely on them.
	if !st.ModTime.IsZero() && time.Since(st.ModTime).Abs() > 24*time.Hour {
		t.Errorf("Stat(%q): ModTime %v is more than a day away from now", key, st.ModTime)
	}
}

// Transforming is implemented by a storage under test that stores
// something else than it is given (an encrypting wrapper): the suite then
// does not compare stored sizes with content sizes, and ignores the
// metadata keys it adds.
type Transforming interface {
	storage.Storage
	AddedMetadata() []string
}

func sameSize(s storage.Storage, stored, content int64) bool {
	_, ok := s.(Transforming)
	return ok || stored == content
}

func visible(s storage.Storage, meta map[string]string) map[string]string {
	tr, ok := s.(Transforming)
	if !ok {
		return meta
	}
	m := maps.Clone(meta)
	for _, k := range tr.AddedMetadata() {
		delete(m, k)
	}
	return m
}

func checkMeta(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !maps.Equal(got, want) {
		t.Errorf("%s: metadata = %v, want %v", what, got, want)
	}
}

func checkNotExist(t *testing.T, s storage.Storage, key string) {
	t.Helper()
	rc, _, err := s.Get(t.Context(), key)
	if err == nil {
		rc.Close()
		t.Errorf("Get(%q) on %s succeeded, want an error matching storage.ErrNotExist", key, s)
	} else if !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Get(%q) on %s: %v, want an error matching storage.ErrNotExist", key, s, err)
	}
	if _, err := s.Stat(t.Context(), key); err == nil {
		t.Errorf("Stat(%q) on %s succeeded, want an error matching storage.ErrNotExist", key, s)
	} else if !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat(%q) on %s: %v, want an error matching storage.ErrNotExist", key, s, err)
	}
}

func list(t *testing.T, s storage.Storage, prefix string) []storage.ObjectInfo {
	t.Helper()
	var got []storage.ObjectInfo
	err := s.List(t.Context(), prefix, func(oi storage.ObjectInfo) error {
		got = append(got, oi)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q) on %s: %v", prefix, s, err)
	}
	return got
}

// checkList lists prefix and compares keys, order and sizes with objects
// (all objects in the storage, key → content).
func checkList(t *testing.T, s storage.Storage, prefix string, objects map[string][]byte) {
	t.Helper()
	var want []string
	for k := range objects {
		if strings.HasPrefix(k, prefix) {
			want = append(want, k)
		}
	}
	slices.Sort(want)
	got := list(t, s, prefix)
	keys := make([]string, len(got))
	for i, oi := range got {
		keys[i] = oi.Key
	}
	if !slices.Equal(keys, want) {
		t.Errorf("List(%q) on %s returned %d keys, want %d in lexical order\n got: %s\nwant: %s",
			prefix, s, len(keys), len(want), abbrev(keys), abbrev(want))
		return
	}
	for _, oi := range got {
		if n := int64(len(objects[oi.Key])); !sameSize(s, oi.Size, n) {
			t.Errorf("List(%q): %q has Size %d, want %d", prefix, oi.Key, oi.Size, n)
		}
	}
}

func abbrev(keys []string) string {
	if len(keys) > 12 {
		return fmt.Sprintf("%q … %q", keys[:6], keys[len(keys)-6:])
	}
	return fmt.Sprintf("%q", keys)
}

func testPutGet(t *testing.T, s storage.Storage) {
	data := randomBytes(1, 70_000)
	meta := metaFor(data)
	put(t, s, "wal/000000010000000000000001.zst", data, meta)
	checkObject(t, s, "wal/000000010000000000000001.zst", data, meta)

	// No metadata at all is allowed and comes back empty.
	put(t, s, "wal/000000010000000000000002.zst", data[:100], nil)
	checkObject(t, s, "wal/000000010000000000000002.zst", data[:100], nil)

	// Two Gets of one object may be open at once.
	r1, _, err := s.Get(t.Context(), "wal/000000010000000000000001.zst")
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, _, err := s.Get(t.Context(), "wal/000000010000000000000001.zst")
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	b1, err1 := io.ReadAll(r1)
	b2, err2 := io.ReadAll(r2)
	if err1 != nil || err2 != nil || !bytes.Equal(b1, data) || !bytes.Equal(b2, data) {
		t.Errorf("two concurrent Gets of one object: errors %v, %v; content equal %v, %v",
			err1, err2, bytes.Equal(b1, data), bytes.Equal(b2, data))
	}
}

func testPutExisting(t *testing.T, s storage.Storage) {
	const key = "wal/000000010000000000000003"
	first := randomBytes(2, 4096)
	put(t, s, key, first, metaFor(first))

	for _, second := range [][]byte{randomBytes(3, 8192), first, nil} {
		err := s.Put(t.Context(), key, bytes.NewReader(second), int64(len(second)), metaFor(second))
		if !errors.Is(err, storage.ErrExist) {
			t.Errorf("second Put(%q) of %d bytes: %v, want an error matching storage.ErrExist", key, len(second), err)
		}
	}
	checkObject(t, s, key, first, metaFor(first))
}

func testNotExist(t *testing.T, s storage.Storage) {
	checkNotExist(t, s, "wal/000000010000000000000009")
	checkNotExist(t, s, "basebackups/never/meta.json")

	put(t, s, "basebackups/b1/meta.json", []byte("{}"), nil)
	checkNotExist(t, s, "basebackups/b1/other.json")
	// The "directory" above an object is not an object.
	checkNotExist(t, s, "basebackups/b1")
	checkNotExist(t, s, "basebackups")
	// Nor is a key that only shares a prefix.
	checkNotExist(t, s, "basebackups/b1/meta")
}

func testZeroByte(t *testing.T, s storage.Storage) {
	const key = "wal/00000002.history"
	meta := metaFor(nil)
	put(t, s, key, nil, meta)
	checkObject(t, s, key, nil, meta)
	checkList(t, s, "wal/", map[string][]byte{key: nil})

	// An empty object exists like any other.
	data := []byte("not empty")
	if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data)), nil); !errors.Is(err, storage.ErrExist) {
		t.Errorf("Put over a zero-byte object: %v, want an error matching storage.ErrExist", err)
	}
	checkObject(t, s, key, nil, meta)
}

func testLargeBody(t *testing.T, s storage.Storage) {
	const key = "basebackups/base_000000010000000000000004/base.tar.zst"
	// Past 8 MiB: larger than common single-request and multipart-part
	// thresholds, and not a multiple of any buffer size.
	data := randomBytes(4, 9<<20+4099)
	meta := metaFor(data)
	put(t, s, key, data, meta)
	checkObject(t, s, key, data, meta)
	checkList(t, s, "basebackups/", map[string][]byte{key: data})
}

func testKeyCharacters(t *testing.T, s storage.Storage) {
	objects := map[string][]byte{}
	for i, key := range []string{
		"wal/000000010000000000000005.partial",
		"wal/000000010000000000000005.00000028.backup.zst",
		"wal/0000000A.history.zst",
		"basebackups/base_00000001-2024-05-01T03.00.00Z/backup-label.json",
		"basebackups/base_00000001-2024-05-01T03.00.00Z/data/pg_tblspc-16385.tar.s2",
		"a-b.c_d",
		"x/y.z-1/-/_.-",
		"walship.archive.json",
	} {
		data := []byte(fmt.Sprintf("object %d: %s", i, key))
		objects[key] = data
		put(t, s, key, data, metaFor(data))
	}
	for key, data := range objects {
		checkObject(t, s, key, data, metaFor(data))
	}
	checkList(t, s, "", objects)
	checkList(t, s, "wal/000000010000000000000005.", objects)
	for key := range objects {
		if err := s.Delete(t.Context(), key); err != nil {
			t.Errorf("Delete(%q): %v", key, err)
		}
		checkNotExist(t, s, key)
	}
	checkList(t, s, "", nil)
}

func testListNested(t *testing.T, s storage.Storage) {
	// Chosen so that lexical key order differs from a naive directory
	// walk: '-' < '.' < '/' < '0'.
	keys := []string{
		"basebackups/x/meta.json",
		"basebackups/x/data/base.tar.zst",
		"basebackups/x/data/pg_wal.tar.zst",
		"basebackups/x/data0",
		"basebackups/x-y/meta.json",
		"basebackups/x.sentinel",
		"basebackups/x0/meta.json",
		"basebackups/y/meta.json",
		"basebackups/xa",
		"wal/000000010000000000000001",
		"wal/000000010000000000000002",
		"wal/00000002.history",
		"wal.json",
		"walship.json",
	}
	objects := map[string][]byte{}
	for i, key := range keys {
		data := bytes.Repeat([]byte{byte('a' + i)}, i*3)
		objects[key] = data
		put(t, s, key, data, nil)
	}
	for _, prefix := range []string{
		"",
		"b",
		"basebackups/",
		"basebackups/x",
		"basebackups/x/",
		"basebackups/x/data",
		"basebackups/x/data/",
		"basebackups/x/data/base",
		"basebackups/z",
		"wal",
		"wal/",
		"wal/0000000100",
		"wal/000000010000000000000002",
		"nothing/",
		"walship.json",
		"walship.json/",
	} {
		checkList(t, s, prefix, objects)
	}
	// List fills in what a listing knows, never metadata.
	for _, oi := range list(t, s, "basebackups/x/") {
		if len(oi.Metadata) != 0 {
			t.Errorf("List: %q has Metadata %v; List must leave it nil", oi.Key, oi.Metadata)
		}
	}
}

// manyKeys is past S3's page size of 1000 keys.
const manyKeys = 1500

func testListMany(t *testing.T, s storage.Storage) {
	objects := map[string][]byte{}
	var keys []string
	for i := range manyKeys {
		// WAL segment names of timeline 1 with 16 MiB segments.
		key := fmt.Sprintf("wal/%08X%08X%08X", 1, i/256, i%256)
		keys = append(keys, key)
		objects[key] = bytes.Repeat([]byte{'w'}, i%7)
	}
	for _, key := range []string{"wal.json", "walship.json", "basebackups/b/meta.json"} {
		keys = append(keys, key)
		objects[key] = []byte(key)
	}
	// Store in a shuffled order with a few workers, so the listing cannot
	// lean on insertion order and the suite stays quick on a real server.
	rand.New(rand.NewPCG(5, 5)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	putAll(t, s, keys, func(key string) []byte { return objects[key] })

	checkList(t, s, "wal/", objects)
	checkList(t, s, "", objects)
	checkList(t, s, "wal/0000000100000000000000", objects) // 256 keys
	checkList(t, s, "wal/00000001000000000000000", objects)
	checkList(t, s, "wal/000000010000000500000000", objects)
}

func testListStop(t *testing.T, s storage.Storage) {
	for i := range 20 {
		put(t, s, fmt.Sprintf("wal/%024X", i), []byte{byte(i)}, nil)
	}
	stop := errors.New("enough")
	var seen []string
	err := s.List(t.Context(), "wal/", func(oi storage.ObjectInfo) error {
		seen = append(seen, oi.Key)
		if len(seen) == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Errorf("List whose callback returned an error: %v, want that error", err)
	}
	if len(seen) != 5 {
		t.Errorf("List called its callback %d times after it returned an error at call 5", len(seen))
	}
}

func testDelete(t *testing.T, s storage.Storage) {
	const key = "basebackups/b2/data/base.tar"
	const sibling = "basebackups/b2/meta.json"
	put(t, s, key, []byte("base"), nil)
	put(t, s, sibling, []byte("meta"), nil)

	if err := s.Delete(t.Context(), key); err != nil {
		t.Fatalf("Delete(%q): %v", key, err)
	}
	checkNotExist(t, s, key)
	checkList(t, s, "", map[string][]byte{sibling: []byte("meta")})
	checkObject(t, s, sibling, []byte("meta"), nil)

	if err := s.Delete(t.Context(), key); err != nil {
		t.Errorf("second Delete(%q): %v, want nil", key, err)
	}
	if err := s.Delete(t.Context(), "wal/never-stored"); err != nil {
		t.Errorf("Delete of a key never stored: %v, want nil", err)
	}

	// A deleted key can be stored again.
	put(t, s, key, []byte("again"), metaFor([]byte("again")))
	checkObject(t, s, key, []byte("again"), metaFor([]byte("again")))

	if err := s.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(t.Context(), sibling); err != nil {
		t.Fatal(err)
	}
	checkList(t, s, "", nil)
	put(t, s, key, []byte("third"), nil)
	checkObject(t, s, key, []byte("third"), nil)
}

// deleteAllKeys is past two of S3's DeleteObjects batches of 1000 keys.
const deleteAllKeys = 2500

func testDeleteAll(t *testing.T, s storage.Storage) {
	var keys []string
	for i := range deleteAllKeys {
		keys = append(keys, fmt.Sprintf("wal/%08X%08X%08X", 1, i/256, i%256))
	}
	// Neighbours of the deleted keys, which must survive. Every object
	// holds its own key.
	kept := map[string][]byte{}
	for _, key := range []string{"wal.json", "wal/000000020000000000000000", "wal/00000001000000000000000", "basebackups/b/meta.json"} {
		kept[key] = []byte(key)
	}
	putAll(t, s, append(slices.Clone(keys), slices.Collect(maps.Keys(kept))...), func(key string) []byte { return []byte(key) })

	// deleteAll deletes some keys and checks that progress counted all
	// of them, in order, ending with the total.
	deleteAll := func(s storage.Storage, keys []string) {
		t.Helper()
		var reported []int
		err := storage.DeleteAll(t.Context(), s, keys, func(done int) { reported = append(reported, done) })
		if err != nil {
			t.Fatalf("DeleteAll of %d keys on %s: %v", len(keys), s, err)
		}
		if !slices.IsSorted(reported) || len(reported) == 0 || reported[len(reported)-1] != len(keys) {
			t.Errorf("DeleteAll of %d keys reported progress %v, want increasing counts ending at %d", len(keys), abbrevInts(reported), len(keys))
		}
	}

	// Bare, with keys never stored among the ones to delete: missing
	// keys are not an error.
	first := slices.Clone(keys[:1300])
	for i := range 5 {
		first = slices.Insert(first, i*250, fmt.Sprintf("wal/never-stored-%d", i))
	}
	deleteAll(s, first)
	for _, key := range []string{keys[0], keys[1299]} {
		checkNotExist(t, s, key)
	}
	checkObject(t, s, keys[1300], []byte(keys[1300]), nil)

	// Through the retry wrapper, with the keys already deleted once more.
	deleteAll(storage.WithRetry(s, storage.RetryOptions{}), keys)
	checkList(t, s, "", kept)
	for key, data := range kept {
		checkObject(t, s, key, data, nil)
	}

	// Nothing to delete, and a third time everything: both are fine.
	if err := storage.DeleteAll(t.Context(), s, nil, nil); err != nil {
		t.Errorf("DeleteAll of no keys: %v", err)
	}
	if err := storage.DeleteAll(t.Context(), s, keys, nil); err != nil {
		t.Errorf("DeleteAll of %d deleted keys: %v", len(keys), err)
	}
	checkList(t, s, "", kept)
}

func abbrevInts(n []int) string {
	if len(n) > 12 {
		return fmt.Sprintf("%d … %d (%d calls)", n[:6], n[len(n)-6:], len(n))
	}
	return fmt.Sprint(n)
}

func testConcurrentPut(t *testing.T, s storage.Storage) {
	const writers = 8
	for round := range 3 {
		key := fmt.Sprintf("wal/0000000100000000000000%02X", round)
		bodies := make([][]byte, writers)
		for i := range bodies {
			// Different sizes, so a mix of two bodies cannot pass for one.
			bodies[i] = randomBytes(uint64(100*round+i), 64<<10+i*1000)
		}
		start := make(chan struct{})
		errs := make([]error, writers)
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				<-start
				errs[i] = s.Put(t.Context(), key, bytes.NewReader(bodies[i]), int64(len(bodies[i])), metaFor(bodies[i]))
			})
		}
		close(start)
		wg.Wait()

		winner := -1
		var conflicts []int
		for i, err := range errs {
			switch {
			case err == nil && winner < 0:
				winner = i
			case err == nil:
				t.Errorf("round %d: Puts %d and %d of %q both succeeded; exactly one may", round, winner, i, key)
			case errors.Is(err, storage.ErrExist):
			case !storage.IsPermanent(err):
				// S3 may answer a write racing another one with 409
				// ConditionalRequestConflict, to be retried.
				conflicts = append(conflicts, i)
			default:
				t.Errorf("round %d: losing Put %d of %q: %v, want an error matching storage.ErrExist", round, i, key, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: none of %d concurrent Puts of %q succeeded: %v", round, writers, key, errors.Join(errs...))
		}
		// A loser told to retry must learn on retry that the key exists.
		for _, i := range conflicts {
			err := s.Put(t.Context(), key, bytes.NewReader(bodies[i]), int64(len(bodies[i])), metaFor(bodies[i]))
			if !errors.Is(err, storage.ErrExist) {
				t.Errorf("round %d: Put %d of %q failed with a retryable error (%v), and its retry: %v, want an error matching storage.ErrExist",
					round, i, key, errs[i], err)
			}
		}
		checkObject(t, s, key, bodies[winner], metaFor(bodies[winner]))
	}
}

// cancellingReader cancels a context once it has handed out some bytes,
// like an operator's Ctrl-C or a deadline arriving mid-upload.
type cancellingReader struct {
	r      *bytes.Reader
	after  int64
	cancel context.CancelFunc
	read   int64
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	if c.read >= c.after {
		c.cancel()
	}
	if int64(len(p)) > 32<<10 {
		p = p[:32<<10]
	}
	n, err := c.r.Read(p)
	c.read += int64(n)
	return n, err
}

func (c *cancellingReader) Seek(off int64, whence int) (int64, error) {
	n, err := c.r.Seek(off, whence)
	c.read = n
	return n, err
}

func testCancelledPut(t *testing.T, s storage.Storage) {
	data := randomBytes(6, 4<<20)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	const before = "wal/000000010000000000000010"
	if err := s.Put(ctx, before, bytes.NewReader(data), int64(len(data)), nil); err == nil {
		t.Errorf("Put(%q) with a cancelled context succeeded, want an error", before)
	}
	checkNotExist(t, s, before)

	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	const during = "wal/000000010000000000000011"
	body := &cancellingReader{r: bytes.NewReader(data), after: 256 << 10, cancel: cancel}
	if err := s.Put(ctx, during, body, int64(len(data)), nil); err == nil {
		t.Errorf("Put(%q) whose context was cancelled mid-body succeeded, want an error", during)
	}
	checkNotExist(t, s, during)
	checkList(t, s, "", nil)

	// The key stays usable.
	put(t, s, during, data[:1000], nil)
	checkObject(t, s, during, data[:1000], nil)
}

func testShortBody(t *testing.T, s storage.Storage) {
	const key = "wal/000000010000000000000012"
	data := randomBytes(7, 10_000)
	// A body that ends early (a file truncated under us) must not be
	// stored as a shorter object.
	if err := s.Put(t.Context(), key, bytes.NewReader(data[:6000]), int64(len(data)), nil); err == nil {
		t.Errorf("Put(%q) of size %d with a body of 6000 bytes succeeded, want an error", key, len(data))
	}
	checkNotExist(t, s, key)
	checkList(t, s, "", nil)
}

// bigStream is longer than two parts of the S3 backend's default 16 MiB
// multipart upload, and not a multiple of any buffer size.
const bigStream = 40<<20 + 4099

// midStream is where failures strike in long streams: past the first
// S3 part, so that parts are stored by the time the stream fails.
const midStream = 20<<20 + 5

// streamOf returns a stream of n bytes from a generator seeded with seed.
// Like a pipe from pg_basebackup, it cannot Seek, has no Len, and hands
// out reads of uneven sizes; it is produced as it is read, so a long
// stream is never held by the test.
func streamOf(seed uint64, n int64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return &unevenReader{
		r:     io.LimitReader(rand.NewChaCha8(key), n),
		sizes: rand.New(rand.NewPCG(seed, 3)),
	}
}

type unevenReader struct {
	r     io.Reader
	sizes *rand.Rand
}

func (u *unevenReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1+u.sizes.IntN(min(len(p), 100_000))]
	}
	return u.r.Read(p)
}

// streamSum is the SHA-256 of streamOf(seed, n).
func streamSum(t *testing.T, seed uint64, n int64) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, streamOf(seed, n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// streamMeta is metadata as a base backup might give it, known before the
// stream starts.
func streamMeta(name string) map[string]string {
	return map[string]string{"walship-codec": "zstd", "walship-backup": name}
}

// failingReader delivers a stream and then fails, like a replication
// connection lost in the middle of a base backup.
type failingReader struct {
	r     io.Reader
	after int64
	err   error
	read  int64
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.read >= f.after {
		return 0, f.err
	}
	if int64(len(p)) > f.after-f.read {
		p = p[:f.after-f.read]
	}
	n, err := f.r.Read(p)
	f.read += int64(n)
	return n, err
}

// hookReader calls hook once, when the stream has handed out at bytes.
type hookReader struct {
	r    io.Reader
	at   int64
	hook func()
	read int64
}

func (h *hookReader) Read(p []byte) (int, error) {
	if h.hook != nil && h.read >= h.at {
		h.hook()
		h.hook = nil
	}
	if h.hook != nil && int64(len(p)) > h.at-h.read {
		p = p[:h.at-h.read]
	}
	n, err := h.r.Read(p)
	h.read += int64(n)
	return n, err
}

// checkStreamObject checks through Get, Stat and List that key holds
// streamOf(seed, n) and meta.
func checkStreamObject(t *testing.T, s storage.Storage, key string, seed uint64, n int64, meta map[string]string) {
	t.Helper()
	rc, info, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q) on %s: %v", key, s, err)
	}
	h := sha256.New()
	got, err := io.Copy(h, rc)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("Get(%q) on %s: reading body: %v", key, s, err)
	}
	if sum, want := hex.EncodeToString(h.Sum(nil)), streamSum(t, seed, n); got != n || sum != want {
		t.Errorf("Get(%q): %d bytes with sha256 %s, want the %d streamed bytes with sha256 %s", key, got, sum, n, want)
	}
	if !sameSize(s, info.Size, n) {
		t.Errorf("Get(%q): ObjectInfo.Size = %d, want %d", key, info.Size, n)
	}
	checkMeta(t, "Get("+key+")", visible(s, info.Metadata), meta)
	st, err := s.Stat(t.Context(), key)
	if err != nil {
		t.Fatalf("Stat(%q): %v", key, err)
	}
	if !sameSize(s, st.Size, n) {
		t.Errorf("Stat(%q): Size = %d, want %d", key, st.Size, n)
	}
	checkMeta(t, "Stat("+key+")", visible(s, st.Metadata), meta)
	found := false
	for _, oi := range list(t, s, key) {
		if oi.Key == key {
			found = true
			if !sameSize(s, oi.Size, n) {
				t.Errorf("List(%q): Size = %d, want %d", key, oi.Size, n)
			}
		}
	}
	if !found {
		t.Errorf("List(%q) does not show the object", key)
	}
}

func putStream(t *testing.T, s storage.Storage, key string, r io.Reader, meta map[string]string) int64 {
	t.Helper()
	n, err := s.PutStream(t.Context(), key, r, meta)
	if err != nil {
		t.Fatalf("PutStream(%q) on %s: %v", key, s, err)
	}
	return n
}

func testPutStream(t *testing.T, s storage.Storage) {
	objects := map[string][]byte{}
	for i, n := range []int64{0, 1, 5000, bigStream} {
		key := fmt.Sprintf("basebackups/base_%d/base.tar.zst", i)
		meta := streamMeta(fmt.Sprint(i))
		start := time.Now()
		if got := putStream(t, s, key, streamOf(uint64(i), n), meta); !sameSize(s, got, n) {
			t.Errorf("PutStream(%q) of %d bytes returned %d", key, n, got)
		}
		if n > 1<<20 {
			t.Logf("PutStream of %d MiB: %v", n>>20, time.Since(start).Round(time.Millisecond))
		}
		checkStreamObject(t, s, key, uint64(i), n, meta)
		objects[key] = make([]byte, n)
	}
	checkList(t, s, "basebackups/", objects)

	// A pipe, as from a compressor writing in its own goroutine, without
	// metadata.
	const key = "basebackups/base_pipe/base.tar"
	pr, pw := io.Pipe()
	go func() {
		_, err := io.Copy(pw, streamOf(9, 70_000))
		pw.CloseWithError(err)
	}()
	if got := putStream(t, s, key, pr, nil); !sameSize(s, got, 70_000) {
		t.Errorf("PutStream(%q) from a pipe returned %d, want 70000", key, got)
	}
	checkStreamObject(t, s, key, 9, 70_000, nil)
}

func testPutStreamExisting(t *testing.T, s storage.Storage) {
	const key = "basebackups/b1/base.tar.zst"
	first := randomBytes(10, 4096)
	put(t, s, key, first, metaFor(first))
	for _, n := range []int64{0, 3000, midStream} {
		_, err := s.PutStream(t.Context(), key, streamOf(11, n), streamMeta("second"))
		if !errors.Is(err, storage.ErrExist) {
			t.Errorf("PutStream(%q) of %d bytes over a stored object: %v, want an error matching storage.ErrExist", key, n, err)
		}
	}
	checkObject(t, s, key, first, metaFor(first))

	// An object stored by PutStream blocks Put and PutStream alike.
	const streamed = "basebackups/b2/base.tar.zst"
	putStream(t, s, streamed, streamOf(12, 5000), streamMeta("b2"))
	if err := s.Put(t.Context(), streamed, bytes.NewReader(first), int64(len(first)), nil); !errors.Is(err, storage.ErrExist) {
		t.Errorf("Put(%q) over a streamed object: %v, want an error matching storage.ErrExist", streamed, err)
	}
	if _, err := s.PutStream(t.Context(), streamed, streamOf(13, 5000), nil); !errors.Is(err, storage.ErrExist) {
		t.Errorf("PutStream(%q) over a streamed object: %v, want an error matching storage.ErrExist", streamed, err)
	}
	checkStreamObject(t, s, streamed, 12, 5000, streamMeta("b2"))
	checkList(t, s, "", map[string][]byte{key: first, streamed: make([]byte, 5000)})
}

// testPutStreamKeyTakenMidway stores the key while the stream is being
// read, after any check a backend makes up front: only the final,
// atomic step can refuse it, and it must.
func testPutStreamKeyTakenMidway(t *testing.T, s storage.Storage) {
	for i, n := range []int64{3000, bigStream} {
		key := fmt.Sprintf("basebackups/b%d/base.tar.zst", i)
		other := randomBytes(uint64(20+i), 1000)
		r := &hookReader{r: streamOf(uint64(30+i), n), at: n / 2, hook: func() {
			put(t, s, key, other, metaFor(other))
		}}
		_, err := s.PutStream(t.Context(), key, r, streamMeta("late"))
		if !errors.Is(err, storage.ErrExist) {
			t.Errorf("PutStream(%q) of %d bytes whose key was stored after %d bytes: %v, want an error matching storage.ErrExist", key, n, n/2, err)
		}
		if r.hook != nil {
			t.Fatalf("PutStream(%q) did not read the stream as far as %d bytes", key, n/2)
		}
		checkObject(t, s, key, other, metaFor(other))
	}
	checkList(t, s, "", map[string][]byte{"basebackups/b0/base.tar.zst": make([]byte, 1000), "basebackups/b1/base.tar.zst": make([]byte, 1000)})
}

func testPutStreamReaderFails(t *testing.T, s storage.Storage) {
	broken := errors.New("replication connection lost")
	for i, after := range []int64{0, 1000, midStream} {
		key := fmt.Sprintf("basebackups/b%d/base.tar.zst", i)
		r := &failingReader{r: streamOf(uint64(40+i), bigStream), after: after, err: broken}
		n, err := s.PutStream(t.Context(), key, r, streamMeta("broken"))
		if err == nil {
			t.Errorf("PutStream(%q) of a stream failing after %d bytes succeeded (%d bytes)", key, after, n)
		} else if !errors.Is(err, broken) {
			t.Errorf("PutStream(%q) of a stream failing after %d bytes: %v, want an error matching the reader's", key, after, err)
		}
		checkNotExist(t, s, key)
	}
	checkList(t, s, "", nil)

	// The key stays usable.
	const key = "basebackups/b2/base.tar.zst"
	putStream(t, s, key, streamOf(49, 3000), nil)
	checkStreamObject(t, s, key, 49, 3000, nil)
}

func testPutStreamCancelled(t *testing.T, s storage.Storage) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	const before = "basebackups/b1/base.tar.zst"
	if _, err := s.PutStream(ctx, before, streamOf(50, 5000), nil); err == nil {
		t.Errorf("PutStream(%q) with a cancelled context succeeded, want an error", before)
	}
	checkNotExist(t, s, before)

	for i, at := range []int64{2000, midStream} {
		key := fmt.Sprintf("basebackups/c%d/base.tar.zst", i)
		ctx, cancel := context.WithCancel(t.Context())
		r := &hookReader{r: streamOf(uint64(51+i), bigStream), at: at, hook: cancel}
		_, err := s.PutStream(ctx, key, r, nil)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("PutStream(%q) whose context was cancelled after %d bytes: %v, want an error matching context.Canceled", key, at, err)
		}
		checkNotExist(t, s, key)
	}
	checkList(t, s, "", nil)

	putStream(t, s, before, streamOf(55, 3000), nil)
	checkStreamObject(t, s, before, 55, 3000, nil)
}

func testConcurrentPutStream(t *testing.T, s storage.Storage) {
	const writers = 6
	const key = "basebackups/b1/base.tar.zst"
	// Different sizes, so a mix of two streams cannot pass for one.
	size := func(i int) int64 { return int64(64<<10 + i*1000) }
	start := make(chan struct{})
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			<-start
			_, errs[i] = s.PutStream(t.Context(), key, streamOf(uint64(60+i), size(i)), streamMeta(fmt.Sprint(i)))
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	var conflicts []int
	for i, err := range errs {
		switch {
		case err == nil && winner < 0:
			winner = i
		case err == nil:
			t.Errorf("PutStreams %d and %d of %q both succeeded; exactly one may", winner, i, key)
		case errors.Is(err, storage.ErrExist):
		case !storage.IsPermanent(err):
			conflicts = append(conflicts, i)
		default:
			t.Errorf("losing PutStream %d of %q: %v, want an error matching storage.ErrExist", i, key, err)
		}
	}
	if winner < 0 {
		t.Fatalf("none of %d concurrent PutStreams of %q succeeded: %v", writers, key, errors.Join(errs...))
	}
	for _, i := range conflicts {
		if _, err := s.PutStream(t.Context(), key, streamOf(uint64(60+i), size(i)), nil); !errors.Is(err, storage.ErrExist) {
			t.Errorf("PutStream %d of %q failed with a retryable error (%v), and its retry: %v, want an error matching storage.ErrExist", i, key, errs[i], err)
		}
	}
	checkStreamObject(t, s, key, uint64(60+winner), size(winner), streamMeta(fmt.Sprint(winner)))
}

// putAll stores data(key) under every key, 16 at a time, and fails the
// test on any error.
func putAll(t *testing.T, s storage.Storage, keys []string, data func(key string) []byte) {
	t.Helper()
	work := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range 16 {
		wg.Go(func() {
			for key := range work {
				b := data(key)
				if err := s.Put(t.Context(), key, bytes.NewReader(b), int64(len(b)), nil); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("Put(%q): %w", key, err))
					mu.Unlock()
				}
			}
		})
	}
	for _, key := range keys {
		work <- key
	}
	close(work)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}
