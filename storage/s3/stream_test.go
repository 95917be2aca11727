package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/s3"
)

// quick retries parts and requests of a stream without long waits.
func quick(ctx context.Context, attempts int) context.Context {
	return storage.ContextWithRetryOptions(ctx, storage.RetryOptions{
		Attempts: attempts, Timeout: time.Minute, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	})
}

// generated is n bytes from a generator seeded with seed, produced as it
// is read and hiding its length, like a pipe from a base backup.
func generated(seed uint64, n int64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return struct{ io.Reader }{io.LimitReader(rand.NewChaCha8(key), n)}
}

func generatedSum(seed uint64, n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, generated(seed, n))
	return [32]byte(h.Sum(nil))
}

// storedSum reads object (a bucket key) with minio-go, independently of
// walship, and returns its size and SHA-256.
func storedSum(t *testing.T, srv *s3test.Server, bucket, object string) (int64, [32]byte) {
	t.Helper()
	obj, err := srv.Client().GetObject(t.Context(), bucket, object, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	h := sha256.New()
	n, err := io.Copy(h, obj)
	if err != nil {
		t.Fatalf("reading %s with minio-go: %v", object, err)
	}
	return n, [32]byte(h.Sum(nil))
}

// incompleteUploads lists the multipart uploads left in bucket.
func incompleteUploads(t *testing.T, srv *s3test.Server, bucket string) []string {
	t.Helper()
	var keys []string
	for u := range srv.Client().ListIncompleteUploads(t.Context(), bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		keys = append(keys, u.Key)
	}
	return keys
}

func TestPutStream(t *testing.T) {
	srv := s3test.Start(t)
	useServer(t, srv)
	t.Run("MinIOHonoursConditionalComplete", func(t *testing.T) { testConditionalComplete(t, srv) })
	t.Run("MinIOVerifiesPartChecksums", func(t *testing.T) { testPartChecksum(t, srv) })
	t.Run("ReadBackWithMinIOClient", func(t *testing.T) { testStreamReadBack(t, srv) })
	t.Run("NoIncompleteUploadsLeft", func(t *testing.T) { testNoLeftovers(t, srv) })
	t.Run("MultipartRace", func(t *testing.T) { testMultipartRace(t, srv) })
	t.Run("LostReplies", func(t *testing.T) { testLostReplies(t, srv) })
}

// rawClient talks to srv with the SDK directly, to check the server
// behaviours the backend relies on without going through it.
func rawClient(t *testing.T) *awss3.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return awss3.NewFromConfig(cfg, func(o *awss3.Options) {
		o.UsePathStyle = true
		o.Retryer = aws.NopRetryer{}
	})
}

// uploadParts starts a multipart upload of parts and uploads them, with
// correct CRC32Cs.
func uploadParts(t *testing.T, c *awss3.Client, bucket, key string, parts ...[]byte) (string, []types.CompletedPart) {
	t.Helper()
	cr, err := c.CreateMultipartUpload(t.Context(), &awss3.CreateMultipartUploadInput{
		Bucket: aws.String(bucket), Key: aws.String(key), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
	})
	if err != nil {
		t.Fatal(err)
	}
	var done []types.CompletedPart
	for i, p := range parts {
		up, err := c.UploadPart(t.Context(), &awss3.UploadPartInput{
			Bucket: aws.String(bucket), Key: aws.String(key), UploadId: cr.UploadId, PartNumber: aws.Int32(int32(i + 1)),
			Body: bytes.NewReader(p), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c, ChecksumCRC32C: aws.String(crc32c(p)),
		})
		if err != nil {
			t.Fatal(err)
		}
		done = append(done, types.CompletedPart{PartNumber: aws.Int32(int32(i + 1)), ETag: up.ETag, ChecksumCRC32C: up.ChecksumCRC32C})
	}
	return aws.ToString(cr.UploadId), done
}

func crc32c(b []byte) string {
	return base64CRC(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

// testConditionalComplete shows what PutStream's no-overwrite rule rests
// on: CompleteMultipartUpload with If-None-Match: * is refused with 412
// when the key exists, leaves the stored object alone, and keeps the
// upload (which must then be aborted). Completing an upload a second
// time is refused the same way, which is why a retry after a lost reply
// must check whose object it ran into.
func testConditionalComplete(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	c := rawClient(t)
	const key = "basebackups/b1/base.tar"
	first := randomBytes(1, 5<<20)
	id, parts := uploadParts(t, c, bucket, key, first, []byte("tail"))
	complete := &awss3.CompleteMultipartUploadInput{
		Bucket: aws.String(bucket), Key: aws.String(key), UploadId: aws.String(id), IfNoneMatch: aws.String("*"),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	if _, err := c.CompleteMultipartUpload(t.Context(), complete); err != nil {
		t.Fatalf("conditional Complete of a new key: %v", err)
	}
	_, err := c.CompleteMultipartUpload(t.Context(), complete)
	t.Logf("Complete of the same upload again: %v", err)
	if code := apiErrorCode(err); code != "PreconditionFailed" {
		t.Errorf("Complete of the same upload again: %v, want 412 PreconditionFailed", err)
	}

	id2, parts2 := uploadParts(t, c, bucket, key, randomBytes(2, 5<<20), []byte("other"))
	_, err = c.CompleteMultipartUpload(t.Context(), &awss3.CompleteMultipartUploadInput{
		Bucket: aws.String(bucket), Key: aws.String(key), UploadId: aws.String(id2), IfNoneMatch: aws.String("*"),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts2},
	})
	t.Logf("conditional Complete over an existing key: %v", err)
	if code := apiErrorCode(err); code != "PreconditionFailed" {
		t.Fatalf("conditional Complete over an existing key: %v, want 412 PreconditionFailed; "+
			"this server would let PutStream overwrite objects", err)
	}
	if n, sum := storedSum(t, srv, bucket, key); n != int64(len(first))+4 || sum != sha256.Sum256(append(bytes.Clone(first), "tail"...)) {
		t.Errorf("the stored object changed after a refused Complete: %d bytes", n)
	}
	if got := incompleteUploads(t, srv, bucket); len(got) != 1 {
		t.Errorf("after a refused Complete the bucket holds incomplete uploads %q, want the refused one", got)
	}
	if _, err := c.AbortMultipartUpload(t.Context(), &awss3.AbortMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key), UploadId: aws.String(id2)}); err != nil {
		t.Fatal(err)
	}
	if got := incompleteUploads(t, srv, bucket); len(got) != 0 {
		t.Errorf("after the abort the bucket holds incomplete uploads %q", got)
	}
}

func apiErrorCode(err error) string {
	var ae interface{ ErrorCode() string }
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// testPartChecksum: a part whose bytes do not match its CRC32C header is
// refused, and nothing of it is kept.
func testPartChecksum(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	c := rawClient(t)
	const key = "basebackups/b1/base.tar"
	cr, err := c.CreateMultipartUpload(t.Context(), &awss3.CreateMultipartUploadInput{
		Bucket: aws.String(bucket), Key: aws.String(key), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.AbortMultipartUpload(context.WithoutCancel(t.Context()), &awss3.AbortMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key), UploadId: cr.UploadId})
	part := randomBytes(3, 5<<20)
	changed := bytes.Clone(part)
	changed[len(changed)/3] ^= 0x10
	_, err = c.UploadPart(t.Context(), &awss3.UploadPartInput{
		Bucket: aws.String(bucket), Key: aws.String(key), UploadId: cr.UploadId, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(changed), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c, ChecksumCRC32C: aws.String(crc32c(part)),
	})
	t.Logf("UploadPart with a CRC32C that does not match: %v", err)
	if code := apiErrorCode(err); code != "XAmzContentChecksumMismatch" && code != "BadDigest" {
		t.Fatalf("UploadPart with a wrong CRC32C: %v, want it refused (XAmzContentChecksumMismatch or BadDigest)", err)
	}
	lp, err := c.ListParts(t.Context(), &awss3.ListPartsInput{Bucket: aws.String(bucket), Key: aws.String(key), UploadId: cr.UploadId})
	if err != nil {
		t.Fatal(err)
	}
	if len(lp.Parts) != 0 {
		t.Errorf("the refused part was kept: %d parts", len(lp.Parts))
	}
}

// testStreamReadBack checks with minio-go what a multipart PutStream
// leaves in the bucket: the bytes, the metadata, a composite CRC32C of
// three parts, and no upload still open.
func testStreamReadBack(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "archive/pg1"})
	const key = "basebackups/b1/base.tar.zst"
	const size = 2*s3.DefaultPartSize + 12345
	meta := map[string]string{"walship-codec": "zstd", "walship-backup": "b1"}
	n, err := st.PutStream(t.Context(), key, generated(1, size), meta)
	if err != nil || n != size {
		t.Fatalf("PutStream: %d bytes, %v", n, err)
	}
	const object = "archive/pg1/" + key
	info, err := srv.Client().StatObject(t.Context(), bucket, object, minio.StatObjectOptions{Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stored: %d bytes, ETag %s, CRC32C %s, metadata %v", info.Size, info.ETag, info.ChecksumCRC32C, info.UserMetadata)
	if !strings.HasSuffix(info.ChecksumCRC32C, "-3") || !strings.HasSuffix(info.ETag, "-3") {
		t.Errorf("stored object has CRC32C %q and ETag %q, want those of a 3-part upload", info.ChecksumCRC32C, info.ETag)
	}
	for k, v := range meta {
		if got := info.UserMetadata[http.CanonicalHeaderKey(k)]; got != v {
			t.Errorf("user metadata %s = %q, want %q (all: %v)", k, got, v, info.UserMetadata)
		}
	}
	if n, sum := storedSum(t, srv, bucket, object); n != size || sum != generatedSum(1, size) {
		t.Errorf("minio-go read %d bytes that differ from the %d streamed", n, size)
	}
	if got := incompleteUploads(t, srv, bucket); len(got) != 0 {
		t.Errorf("incomplete uploads left after a successful PutStream: %q", got)
	}
}

// testNoLeftovers: every failure of a multipart PutStream aborts the
// upload, so no parts stay billed in the bucket.
func testNoLeftovers(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	st := open(t, srv, s3.Options{Bucket: bucket, PartSize: 5 << 20})
	broken := errors.New("replication connection lost")
	cases := map[string]func(key string) error{
		"ReaderFails": func(key string) error {
			r := io.MultiReader(generated(1, 12<<20), iotestErrReader{broken})
			_, err := st.PutStream(t.Context(), key, r, nil)
			return err
		},
		"Cancelled": func(key string) error {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			r := io.MultiReader(generated(2, 12<<20), readerFunc(func([]byte) (int, error) {
				cancel()
				return 0, nil
			}), generated(3, 12<<20))
			_, err := st.PutStream(ctx, key, r, nil)
			return err
		},
		"KeyTaken": func(key string) error {
			r := io.MultiReader(generated(4, 12<<20), readerFunc(func([]byte) (int, error) {
				if err := st.Put(t.Context(), key, bytes.NewReader([]byte("first")), 5, nil); err != nil {
					t.Error(err)
				}
				return 0, io.EOF
			}), generated(5, 1<<20))
			_, err := st.PutStream(t.Context(), key, r, nil)
			return err
		},
	}
	for name, run := range cases {
		t.Run(name, func(t *testing.T) {
			key := "basebackups/" + name + "/base.tar"
			err := run(key)
			t.Logf("PutStream: %v", err)
			if err == nil {
				t.Fatal("PutStream succeeded")
			}
			if got := incompleteUploads(t, srv, bucket); len(got) != 0 {
				t.Errorf("a failed PutStream left incomplete uploads %q", got)
			}
		})
	}
}

// uploadedBytes adds up the parts of the incomplete uploads in bucket.
func uploadedBytes(t *testing.T, srv *s3test.Server, bucket string) int64 {
	t.Helper()
	core := minio.Core{Client: srv.Client()}
	var total int64
	for u := range srv.Client().ListIncompleteUploads(t.Context(), bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		res, err := core.ListObjectParts(t.Context(), bucket, u.Key, u.UploadID, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range res.ObjectParts {
			total += p.Size
		}
	}
	return total
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// testMultipartRace has several multipart streams of one key race to
// complete: If-None-Match on CompleteMultipartUpload lets exactly one
// win, and the losers' uploads are aborted.
func testMultipartRace(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	st := open(t, srv, s3.Options{Bucket: bucket, PartSize: 5 << 20})
	const writers = 4
	const key = "basebackups/b1/base.tar"
	size := func(i int) int64 { return 11<<20 + int64(i)*1000 }
	errs := make([]error, writers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			<-start
			_, errs[i] = st.PutStream(quick(t.Context(), 3), key, generated(uint64(10+i), size(i)), nil)
		})
	}
	close(start)
	wg.Wait()
	winner, exist := -1, 0
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("streams %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case errors.Is(err, storage.ErrExist):
			exist++
		default:
			t.Errorf("stream %d: %v, want ErrExist", i, err)
		}
	}
	t.Logf("%d multipart streams of one key: 1 winner, %d refused with ErrExist", writers, exist)
	if winner < 0 {
		t.Fatalf("no stream succeeded: %v", errors.Join(errs...))
	}
	if n, sum := storedSum(t, srv, bucket, key); n != size(winner) || sum != generatedSum(uint64(10+winner), size(winner)) {
		t.Errorf("stored object (%d bytes) is not the winner's", n)
	}
	if got := incompleteUploads(t, srv, bucket); len(got) != 0 {
		t.Errorf("the losers left incomplete uploads %q", got)
	}
}

// faultProxy stands between walship and MinIO and breaks the requests a
// test picks: it cuts the connection before MinIO sees the request, or
// after MinIO has acted on it, so that the answer is lost.
type faultProxy struct {
	target *url.URL
	proxy  *httputil.ReverseProxy
	decide func(r *http.Request) fault // called from many goroutines
}

type fault int

const (
	pass fault = iota
	cutBefore
	loseAnswer
)

func newFaultProxy(t *testing.T, srv *s3test.Server, decide func(r *http.Request) fault) *httptest.Server {
	target, err := url.Parse(srv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{target: target, proxy: httputil.NewSingleHostReverseProxy(target), decide: decide}
	ps := httptest.NewServer(p)
	t.Cleanup(ps.Close)
	return ps
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p.decide(r) {
	case cutBefore:
		panic(http.ErrAbortHandler)
	case loseAnswer:
		// The request keeps the Host walship signed.
		out := r.Clone(r.Context())
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host = p.target.Scheme, p.target.Host
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		panic(http.ErrAbortHandler)
	}
	p.proxy.ServeHTTP(w, r)
}

// requestKind names the S3 request r is.
func requestKind(r *http.Request) string {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPut && q.Has("partNumber"):
		return "UploadPart " + q.Get("partNumber")
	case r.Method == http.MethodPost && q.Has("uploadId"):
		return "CompleteMultipartUpload"
	case r.Method == http.MethodPost && q.Has("uploads"):
		return "CreateMultipartUpload"
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		return "AbortMultipartUpload"
	case r.Method == http.MethodPut:
		return "PutObject"
	case r.Method == http.MethodHead:
		return "HeadObject"
	}
	return r.Method
}

// testLostReplies breaks the network at the worst moments: a part's
// connection is cut (the part is sent again), and the answer to the
// request that makes the object visible is lost after the server acted.
// The retry then finds the key taken, and must recognise the object as
// its own rather than report ErrExist for a stream it stored.
func testLostReplies(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	var mu sync.Mutex // the proxy's handlers run in goroutines of their own
	var seen []string
	broken := map[string]fault{"UploadPart 2": cutBefore, "CompleteMultipartUpload": loseAnswer, "PutObject": loseAnswer}
	ps := newFaultProxy(t, srv, func(r *http.Request) fault {
		mu.Lock()
		defer mu.Unlock()
		kind := requestKind(r)
		seen = append(seen, kind)
		f := broken[kind]
		delete(broken, kind) // once each
		return f
	})
	st, err := s3.New(t.Context(), s3.Options{Bucket: bucket, Endpoint: ps.URL, PathStyle: true, PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		size int64
	}{
		{"basebackups/b1/base.tar", 12<<20 + 3},
		{"basebackups/b1/backup_manifest", 100_000},
	} {
		mu.Lock()
		seen = nil
		mu.Unlock()
		n, err := st.PutStream(quick(t.Context(), 3), tc.key, generated(7, tc.size), nil)
		mu.Lock()
		t.Logf("requests: %v", seen)
		mu.Unlock()
		if err != nil || n != tc.size {
			t.Fatalf("PutStream(%q) through a flaky network: %d bytes, %v", tc.key, n, err)
		}
		if got, sum := storedSum(t, srv, bucket, tc.key); got != tc.size || sum != generatedSum(7, tc.size) {
			t.Errorf("stored %d bytes that differ from the %d streamed", got, tc.size)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(broken) != 0 {
		t.Errorf("faults never triggered: %v", broken)
	}
	if got := incompleteUploads(t, srv, bucket); len(got) != 0 {
		t.Errorf("incomplete uploads left: %q", got)
	}
}

// TestPutStreamStall freezes the server in the middle of a stream. No
// deadline is on the context: the stall timeout alone must end every
// part's attempts, and the error must say what happened, including that
// the parts could not be removed.
func TestPutStreamStall(t *testing.T) {
	srv := s3test.Start(t)
	useServer(t, srv)
	bucket := srv.NewBucket(t)
	const stall = time.Second
	st := open(t, srv, s3.Options{Bucket: bucket, StallTimeout: stall, PartSize: 5 << 20})
	const key = "basebackups/b1/base.tar"
	paused := false
	r := io.MultiReader(generated(1, 12<<20), readerFunc(func([]byte) (int, error) {
		srv.Pause(t)
		paused = true
		return 0, io.EOF
	}), generated(2, 40<<20))
	defer func() {
		if paused {
			srv.Resume(t)
		}
	}()
	start := time.Now()
	_, err := st.PutStream(quick(context.Background(), 2), key, r, nil)
	took := time.Since(start)
	t.Logf("PutStream against a server frozen mid-stream failed after %v: %v", took.Round(time.Millisecond), err)
	switch {
	case err == nil:
		t.Fatal("PutStream to a frozen server succeeded")
	case storage.IsPermanent(err):
		t.Errorf("a stalled server is worth trying again later, but the error is permanent: %v", err)
	case !strings.Contains(err.Error(), "no answer from"):
		t.Errorf("error does not say the server stopped answering: %v", err)
	case !strings.Contains(err.Error(), "AbortIncompleteMultipartUpload"):
		t.Errorf("error does not say the parts could not be removed: %v", err)
	}
	// Two attempts of a part, three of the abort, each ended by the stall
	// timeout, plus backoff.
	if limit := 12 * stall; took > limit {
		t.Errorf("PutStream took %v to give up, want at most %v", took, limit)
	}
	srv.Resume(t)
	paused = false
	if _, err := st.Stat(t.Context(), key); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("after the failed stream, Stat: %v, want ErrNotExist", err)
	}
	t.Logf("incomplete uploads left for the bucket's lifecycle rule: %q", incompleteUploads(t, srv, bucket))
}

const killHelperEnv = "WALSHIP_S3_KILL_HELPER_BUCKET"

// TestKillHelper is the process TestKillDuringPutStream kills; it does
// nothing in a normal test run.
func TestKillHelper(t *testing.T) {
	bucket := os.Getenv(killHelperEnv)
	if bucket == "" {
		t.Skip("helper process for TestKillDuringPutStream")
	}
	st, err := s3.New(t.Context(), s3.Options{Bucket: bucket, PathStyle: true, PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// Endless and slow: the parent kills it with parts stored.
	r := readerFunc(func(p []byte) (int, error) {
		time.Sleep(time.Millisecond)
		return len(p[:min(len(p), 64<<10)]), nil
	})
	_, err = st.PutStream(t.Context(), "basebackups/b1/base.tar", r, nil)
	t.Fatalf("endless PutStream returned: %v", err)
}

// A process killed during a PutStream leaves no object, only an
// incomplete upload that List, Get and Stat do not see (the bucket's
// lifecycle rule removes it).
func TestKillDuringPutStream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	srv := s3test.Start(t)
	useServer(t, srv)
	bucket := srv.NewBucket(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillHelper$")
	cmd.Env = append(os.Environ(), killHelperEnv+"="+bucket)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	var parts int64
	for parts < 10<<20 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		parts = uploadedBytes(t, srv, bucket)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	t.Logf("killed after %v with %d MiB of parts stored", time.Since(deadline.Add(-30*time.Second)).Round(time.Millisecond), parts>>20)
	if parts == 0 {
		t.Fatal("the helper stored no part before the deadline")
	}
	st := open(t, srv, s3.Options{Bucket: bucket})
	if _, err := st.Stat(t.Context(), "basebackups/b1/base.tar"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat after the kill: %v, want ErrNotExist", err)
	}
	var keys []string
	if err := st.List(t.Context(), "", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("List after the kill shows %q", keys)
	}
	if got := incompleteUploads(t, srv, bucket); len(got) != 1 {
		t.Errorf("incomplete uploads after the kill: %q, want the killed one", got)
	}
}

// TestPutStreamMemory streams 200 MiB and samples the heap meanwhile: it
// must stay near four parts, whatever the length of the stream.
func TestPutStreamMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 200 MiB")
	}
	if raceEnabled {
		t.Skip("heap figures under the race detector say nothing; run without -race")
	}
	srv := s3test.Start(t)
	useServer(t, srv)
	st := open(t, srv, s3.Options{Bucket: srv.NewBucket(t)})
	const size = 200 << 20

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak uint64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	n, err := st.PutStream(t.Context(), "basebackups/b1/base.tar", generated(1, size), nil)
	took := time.Since(start)
	close(done)
	<-sampled
	if err != nil || n != size {
		t.Fatalf("PutStream: %d bytes, %v", n, err)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := peak - before.HeapAlloc
	t.Logf("streamed %d MiB in %v (%.0f MiB/s); heap before %d MiB, peak %d MiB (+%d MiB, part size %d MiB); %d MiB allocated in all",
		size>>20, took.Round(time.Millisecond), float64(size>>20)/took.Seconds(),
		before.HeapAlloc>>20, peak>>20, grew>>20, s3.DefaultPartSize>>20, (after.TotalAlloc-before.TotalAlloc)>>20)
	// Four parts live, and room for garbage the collector has not taken
	// yet; a stream held whole would be 200 MiB.
	if limit := uint64(8 * s3.DefaultPartSize); grew > limit {
		t.Errorf("heap grew by %d MiB while streaming %d MiB, want at most %d MiB", grew>>20, size>>20, limit>>20)
	}
}
