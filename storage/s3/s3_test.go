package s3_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/s3"
	"github.com/walship/walship/storage/storagetest"
)

// useServer points the AWS SDK's standard chain at srv and nowhere else:
// no profile or shared file from the machine, and no EC2 metadata probe
// (the tests must not leave the machine).
func useServer(t *testing.T, srv *s3test.Server) {
	t.Helper()
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	for _, k := range []string{"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULTS_MODE"} {
		t.Setenv(k, "")
	}
}

func open(t *testing.T, srv *s3test.Server, o s3.Options) *s3.Storage {
	t.Helper()
	o.Endpoint = srv.Endpoint()
	o.PathStyle = true
	st, err := s3.New(t.Context(), o)
	if err != nil {
		t.Fatalf("s3.New(%+v): %v", o, err)
	}
	return st
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestS3(t *testing.T) {
	srv := s3test.Start(t)
	useServer(t, srv)

	for _, prefix := range []string{"archive/pg1", ""} {
		t.Run(fmt.Sprintf("Conformance/prefix=%q", prefix), func(t *testing.T) {
			storagetest.Run(t, func(t *testing.T) storage.Storage {
				return open(t, srv, s3.Options{Bucket: srv.NewBucket(t), Prefix: prefix})
			})
		})
	}

	t.Run("ReadBackWithMinIOClient", func(t *testing.T) { testReadBack(t, srv) })
	t.Run("ServerVerifiesChecksum", func(t *testing.T) { testServerVerifiesChecksum(t, srv) })
	t.Run("ConditionalPutRace", func(t *testing.T) { testConditionalPutRace(t, srv) })
	t.Run("DeleteBatchPrefix", func(t *testing.T) { testDeleteBatchPrefix(t, srv) })
	t.Run("RequestCounts", func(t *testing.T) { testRequestCounts(t, srv) })
	t.Run("WrongCredentials", func(t *testing.T) { testWrongCredentials(t, srv) })
	t.Run("MissingBucket", func(t *testing.T) { testMissingBucket(t, srv) })
	t.Run("String", func(t *testing.T) {
		for prefix, want := range map[string]string{
			"":                "s3://b1",
			"archive":         "s3://b1/archive",
			"/archive/pg1//":  "s3://b1/archive/pg1",
			"archive/pg1/wal": "s3://b1/archive/pg1/wal",
		} {
			st := open(t, srv, s3.Options{Bucket: "b1", Prefix: prefix})
			if got := st.String(); got != want {
				t.Errorf("String() with prefix %q = %q, want %q", prefix, got, want)
			}
			if strings.Contains(st.String(), srv.SecretKey()) || strings.Contains(st.String(), srv.AccessKey()) {
				t.Errorf("String() = %q names the credentials", st.String())
			}
		}
	})
}

// testReadBack checks with an independent client (minio-go) that walship
// stores the bytes, user metadata and CRC32C where an operator's bucket
// tools expect them.
func testReadBack(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "/archive/pg1/"})
	const key = "wal/000000010000000000000001.zst"
	data := randomBytes(1, 3<<20+17)
	meta := map[string]string{"walship-sha256": "0123abcd", "walship-codec": "zstd", "walship-size": "16777216"}
	if err := st.Put(t.Context(), key, bytes.NewReader(data), int64(len(data)), meta); err != nil {
		t.Fatal(err)
	}

	mc := srv.Client()
	const object = "archive/pg1/" + key
	var names []string
	for o := range mc.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		names = append(names, o.Key)
	}
	if len(names) != 1 || names[0] != object {
		t.Fatalf("bucket holds %q, want exactly [%q]", names, object)
	}

	info, err := mc.StatObject(t.Context(), bucket, object, minio.StatObjectOptions{Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != int64(len(data)) {
		t.Errorf("stored size %d, want %d", info.Size, len(data))
	}
	got := map[string]string{}
	for k, v := range info.UserMetadata {
		got[strings.ToLower(k)] = v
	}
	for k, v := range meta {
		if got[k] != v {
			t.Errorf("user metadata %s = %q, want %q (all: %v)", k, got[k], v, info.UserMetadata)
		}
	}
	if len(got) != len(meta) {
		t.Errorf("user metadata %v, want %v", got, meta)
	}
	sum := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
	if want := base64CRC(sum); info.ChecksumCRC32C != want {
		t.Errorf("stored CRC32C %q, want %q", info.ChecksumCRC32C, want)
	}

	obj, err := mc.GetObject(t.Context(), bucket, object, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	body, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, data) {
		t.Errorf("minio-go read %d bytes that differ from the %d walship wrote", len(body), len(data))
	}
}

// base64CRC is how S3 shows a CRC32C: base64 of its big-endian bytes.
func base64CRC(sum uint32) string {
	return base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, sum))
}

// changingBody hands out other bytes once rewound to the start, like a
// source file rewritten while it is being uploaded.
type changingBody struct {
	r       *bytes.Reader
	changed []byte
}

func (b *changingBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *changingBody) Seek(off int64, whence int) (int64, error) {
	if whence == io.SeekStart && off == 0 && b.changed != nil {
		b.r, b.changed = bytes.NewReader(b.changed), nil
	}
	return b.r.Seek(off, whence)
}

// testServerVerifiesChecksum shows that the CRC32C header is checked by
// the server: bytes that differ from what was checksummed are refused and
// nothing is stored.
func testServerVerifiesChecksum(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	st := open(t, srv, s3.Options{Bucket: bucket})
	data := randomBytes(2, 1<<20)
	changed := bytes.Clone(data)
	changed[len(changed)/2] ^= 0x40
	body := &changingBody{r: bytes.NewReader(data), changed: changed}

	const key = "wal/000000010000000000000002"
	err := st.Put(t.Context(), key, body, int64(len(data)), nil)
	if err == nil {
		t.Fatal("Put of a body that changed after it was checksummed succeeded")
	}
	t.Logf("Put: %v", err)
	if storage.IsPermanent(err) {
		t.Errorf("a corrupted upload is worth retrying, but the error is permanent: %v", err)
	}
	if !strings.Contains(err.Error(), "checksum") {
		t.Errorf("error does not say the checksum did not match: %v", err)
	}
	if _, err := srv.Client().StatObject(t.Context(), bucket, key, minio.StatObjectOptions{}); minio.ToErrorResponse(err).Code != "NoSuchKey" {
		t.Errorf("after the refused Put, StatObject: %v, want NoSuchKey", err)
	}

	// The same content, unchanged, is accepted.
	if err := st.Put(t.Context(), key, bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
}

// testConditionalPutRace has many pushers race for one key: If-None-Match
// lets exactly one win; every other one learns the key exists (or, where a
// server reports the conflict as 409, gets a retryable error).
func testConditionalPutRace(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "race"})
	const pushers = 32
	const key = "wal/000000010000000000000003"
	bodies := make([][]byte, pushers)
	for i := range bodies {
		bodies[i] = randomBytes(uint64(100+i), 256<<10+i)
	}
	errs := make([]error, pushers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range pushers {
		wg.Go(func() {
			<-start
			errs[i] = st.Put(t.Context(), key, bytes.NewReader(bodies[i]), int64(len(bodies[i])), nil)
		})
	}
	close(start)
	wg.Wait()

	winner, exist, retryable := -1, 0, 0
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("pushers %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case errors.Is(err, storage.ErrExist):
			exist++
		case !storage.IsPermanent(err):
			retryable++
			t.Logf("pusher %d: %v", i, err)
		default:
			t.Errorf("pusher %d: %v, want ErrExist or a retryable error", i, err)
		}
	}
	t.Logf("%d pushers: 1 winner, %d × 412 (ErrExist), %d retryable", pushers, exist, retryable)
	if winner < 0 {
		t.Fatalf("no pusher succeeded: %v", errors.Join(errs...))
	}
	obj, err := srv.Client().GetObject(t.Context(), bucket, "race/"+key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	got, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bodies[winner]) {
		t.Errorf("stored object (%d bytes) is not the winner's (%d bytes)", len(got), len(bodies[winner]))
	}
}

// calls runs each operation of the interface once, for tests that expect
// all of them to fail the same way.
func calls(st storage.Storage) map[string]func(ctx context.Context) error {
	const key = "wal/000000010000000000000004"
	return map[string]func(ctx context.Context) error{
		"Put": func(ctx context.Context) error {
			return st.Put(ctx, key, bytes.NewReader([]byte("x")), 1, nil)
		},
		"PutStream": func(ctx context.Context) error {
			// One attempt, like every other call here: retries are
			// tested on their own.
			ctx = storage.ContextWithRetryOptions(ctx, storage.RetryOptions{Attempts: 1})
			_, err := st.PutStream(ctx, key, strings.NewReader("x"), nil)
			return err
		},
		"Get": func(ctx context.Context) error {
			rc, _, err := st.Get(ctx, key)
			if err == nil {
				rc.Close()
			}
			return err
		},
		"Stat": func(ctx context.Context) error {
			_, err := st.Stat(ctx, key)
			return err
		},
		"List": func(ctx context.Context) error {
			return st.List(ctx, "wal/", func(storage.ObjectInfo) error { return nil })
		},
		"Delete": func(ctx context.Context) error { return st.Delete(ctx, key) },
		"DeleteBatch": func(ctx context.Context) error {
			return st.(storage.BatchDeleter).DeleteBatch(ctx, []string{key, "wal/000000010000000000000005"})
		},
	}
}

func testWrongCredentials(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	for _, tc := range []struct {
		name, id, secret string
	}{
		{"UnknownAccessKey", "walship-nobody", srv.SecretKey()},
		{"WrongSecret", srv.AccessKey(), "not-the-secret-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("AWS_ACCESS_KEY_ID", tc.id)
			t.Setenv("AWS_SECRET_ACCESS_KEY", tc.secret)
			st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "archive"})
			for op, call := range calls(st) {
				start := time.Now()
				err := call(t.Context())
				took := time.Since(start)
				switch {
				case err == nil:
					t.Errorf("%s succeeded with wrong credentials", op)
				case errors.Is(err, storage.ErrNotExist) || errors.Is(err, storage.ErrExist):
					t.Errorf("%s: %v; wrong credentials must not pass for an answer", op, err)
				case !storage.IsPermanent(err):
					t.Errorf("%s: %v; want a permanent error", op, err)
				case !strings.Contains(err.Error(), "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"):
					t.Errorf("%s: %v; want a hint to check the credentials", op, err)
				case took > 5*time.Second:
					t.Errorf("%s took %v to fail", op, took)
				}
				if op == "Put" {
					t.Logf("%s (%v): %v", op, took.Round(time.Millisecond), err)
				}
			}
		})
	}
}

func testMissingBucket(t *testing.T, srv *s3test.Server) {
	st := open(t, srv, s3.Options{Bucket: "walship-no-such-bucket", Prefix: "archive"})
	for op, call := range calls(st) {
		err := call(t.Context())
		switch {
		case err == nil:
			t.Errorf("%s in a missing bucket succeeded", op)
		case errors.Is(err, storage.ErrNotExist):
			// wal-fetch would report "not in the archive" and let a
			// restore end early.
			t.Errorf("%s: %v; a missing bucket must not pass for a missing object", op, err)
		case !storage.IsPermanent(err):
			t.Errorf("%s: %v; want a permanent error", op, err)
		case !strings.Contains(err.Error(), "bucket walship-no-such-bucket does not exist") ||
			!strings.Contains(err.Error(), "create it or fix --repo"):
			t.Errorf("%s: %v; want it to say the bucket does not exist and what to do", op, err)
		}
		if op == "Stat" {
			t.Logf("%s: %v", op, err)
		}
	}
}

// TestOutage takes the server away under walship: killed, then frozen.
// Failures must be quick, retryable and never look like a missing object,
// and the storage must work again once the server is back.
func TestOutage(t *testing.T) {
	srv := s3test.Start(t)
	useServer(t, srv)
	bucket := srv.NewBucket(t)
	const stall = time.Second
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "archive", StallTimeout: stall})
	const stored = "wal/000000010000000000000001"
	if err := st.Put(t.Context(), stored, bytes.NewReader([]byte("before")), 6, nil); err != nil {
		t.Fatal(err)
	}
	// expectOutage runs every call against the unavailable server.
	expectOutage := func(t *testing.T, ctx context.Context, limit time.Duration) {
		t.Helper()
		for op, call := range calls(st) {
			start := time.Now()
			err := call(ctx)
			took := time.Since(start)
			t.Logf("%s (%v): %v", op, took.Round(time.Millisecond), err)
			switch {
			case err == nil:
				t.Errorf("%s succeeded against a server that is down", op)
			case storage.IsPermanent(err):
				t.Errorf("%s: %v; an unreachable server is worth retrying, want a non-permanent error", op, err)
			case took > limit:
				t.Errorf("%s took %v to fail, want at most %v", op, took, limit)
			}
		}
	}

	t.Run("Stopped", func(t *testing.T) {
		srv.Stop(t)
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		expectOutage(t, ctx, 4*time.Second)

		srv.Restart(t)
		data := randomBytes(3, 100_000)
		if err := st.Put(t.Context(), "wal/000000010000000000000002", bytes.NewReader(data), int64(len(data)), nil); err != nil {
			t.Fatalf("Put after restart: %v", err)
		}
		checkContent(t, st, stored, []byte("before"))
		checkContent(t, st, "wal/000000010000000000000002", data)
	})

	t.Run("Frozen", func(t *testing.T) {
		// No deadline on the context: the stall timeout alone must end
		// every call.
		srv.Pause(t)
		expectOutage(t, context.Background(), stall+3*time.Second)
		srv.Resume(t)
		checkContent(t, st, stored, []byte("before"))
	})

	t.Run("FrozenMidDownload", func(t *testing.T) {
		// Larger than what the kernel's socket buffers and MinIO can have
		// in flight, so the download really stops.
		const key = "basebackups/b1/base.tar"
		data := randomBytes(4, 48<<20)
		if err := st.Put(t.Context(), key, bytes.NewReader(data), int64(len(data)), nil); err != nil {
			t.Fatal(err)
		}
		rc, _, err := st.Get(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		srv.Pause(t)
		defer srv.Resume(t)
		start := time.Now()
		n, err := io.Copy(io.Discard, rc)
		took := time.Since(start)
		t.Logf("read %d more bytes in %v: %v", n, took.Round(time.Millisecond), err)
		switch {
		case err == nil:
			t.Errorf("download from a frozen server completed (%d more bytes)", n)
		case took > stall+3*time.Second:
			t.Errorf("stalled download failed only after %v", took)
		case !strings.Contains(err.Error(), "no data from"):
			t.Errorf("error does not say the download stalled: %v", err)
		}
	})
}

func checkContent(t *testing.T, st storage.Storage, key string, want []byte) {
	t.Helper()
	rc, _, err := st.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Get(%q): %d bytes that differ from the %d stored", key, len(got), len(want))
	}
}

// testRequestCounts: one Put is one PUT, one Get one GET, one Stat one
// HEAD, a listing of a few keys one LIST.
func testRequestCounts(t *testing.T, srv *s3test.Server) {
	st := open(t, srv, s3.Options{Bucket: srv.NewBucket(t)})
	ctx := context.Background()
	if err := st.Put(ctx, "wal/a", bytes.NewReader([]byte("x")), 1, nil); err != nil {
		t.Fatal(err)
	}
	rc, _, err := st.Get(ctx, "wal/a")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	if _, err := st.Stat(ctx, "wal/a"); err != nil {
		t.Fatal(err)
	}
	if err := st.List(ctx, "wal/", func(storage.ObjectInfo) error { return nil }); err != nil {
		t.Fatal(err)
	}
	got := st.Requests()
	want := map[string]int64{"PUT": 1, "GET": 1, "HEAD": 1, "LIST": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("requests %v, want %v", got, want)
	}
}
