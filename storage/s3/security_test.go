package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/s3"
)

// TestTransportRules: plain http only to this machine unless allowed;
// server-side encryption settings are checked before anything is sent.
func TestTransportRules(t *testing.T) {
	isolateAWS(t)
	for _, tc := range []struct {
		o    s3.Options
		want string // "" = accepted
	}{
		{s3.Options{Endpoint: "http://127.0.0.1:9000"}, ""},
		{s3.Options{Endpoint: "http://127.8.9.10:9000"}, ""},
		{s3.Options{Endpoint: "http://localhost:9000"}, ""},
		{s3.Options{Endpoint: "http://[::1]:9000"}, ""},
		{s3.Options{Endpoint: "https://s3.example.net"}, ""},
		{s3.Options{Endpoint: "http://192.0.2.10:9000"}, "plain http to another machine"},
		{s3.Options{Endpoint: "http://minio.example.net"}, "--s3-allow-http"},
		{s3.Options{Endpoint: "http://minio.example.net", AllowHTTP: true}, ""},
		{s3.Options{Endpoint: "https://s3.example.net", SSE: s3.SSEAES256}, ""},
		{s3.Options{Endpoint: "https://s3.example.net", SSE: s3.SSEKMS, SSEKMSKeyID: "alias/walship"}, ""},
		{s3.Options{Endpoint: "https://s3.example.net", SSE: "aes256"}, "use AES256 or aws:kms"},
		{s3.Options{Endpoint: "https://s3.example.net", SSE: "AES256", SSEKMSKeyID: "k"}, "needs --s3-sse aws:kms"},
		{s3.Options{Endpoint: "https://s3.example.net", SSE: "aws:kms", SSEKMSKeyID: "a key"}, "white space"},
	} {
		tc.o.Bucket = "b"
		_, err := s3.New(t.Context(), tc.o)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("New(%+v): %v, want it accepted", tc.o, err)
		case tc.want != "" && (!storage.IsPermanent(err) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("New(%+v): %v, want a permanent error saying %q", tc.o, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("New(%+v): error of several lines: %q", tc.o, err)
		}
	}
}

// writeCA stores the certificate of a TLS test server as PEM.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTLSFailures: each way TLS can fail is a permanent error that names
// the fix, and nothing is ever sent in clear instead.
func TestTLSFailures(t *testing.T) {
	isolateAWS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")

	var plainHits atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plainHits.Add(1)
		http.Error(w, "", http.StatusNotFound)
	}))
	defer plain.Close()
	// A TLS server that knows the key, and sends everything else to
	// plain http with a redirect that keeps the method.
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/known") {
			w.Header().Set("Content-Length", "0")
			return
		}
		http.Redirect(w, r, plain.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	ca := writeCA(t, tlsSrv)
	port := tlsSrv.URL[strings.LastIndex(tlsSrv.URL, ":"):]

	stat := func(o s3.Options, key string) error {
		o.Bucket, o.PathStyle = "b", true
		st, err := s3.New(t.Context(), o)
		if err != nil {
			t.Fatalf("New(%+v): %v", o, err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		_, err = st.Stat(ctx, key)
		return err
	}

	if err := stat(s3.Options{Endpoint: tlsSrv.URL, CAFile: ca}, "known"); err != nil {
		t.Fatalf("with the CA file: %v", err)
	}
	for _, tc := range []struct {
		name string
		o    s3.Options
		key  string
		want string
	}{
		{"unknown CA", s3.Options{Endpoint: tlsSrv.URL}, "known", "--s3-ca-file"},
		{"wrong host name", s3.Options{Endpoint: "https://localhost" + port, CAFile: ca}, "known", "not valid for host localhost"},
		{"https to a plain server", s3.Options{Endpoint: "https://" + strings.TrimPrefix(plain.URL, "http://")}, "known", "does not answer TLS"},
		{"redirect to http", s3.Options{Endpoint: tlsSrv.URL, CAFile: ca}, "other", "redirected to plain http"},
	} {
		err := stat(tc.o, tc.key)
		if !storage.IsPermanent(err) || errors.Is(err, storage.ErrNotExist) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a permanent error saying %q", tc.name, err, tc.want)
		}
	}
	if n := plainHits.Load(); n != 0 {
		t.Errorf("%d requests reached the plain http server", n)
	}
}

// TestServerSideEncryption: with SSE set, objects stored by Put and by a
// multipart PutStream are encrypted at rest (as MinIO reports to an
// independent client) and read back unchanged.
func TestServerSideEncryption(t *testing.T) {
	srv := s3test.StartWith(t, s3test.Options{KMS: true})
	useServer(t, srv)
	bucket := srv.NewBucket(t)
	small := randomBytes(1, 1000)
	for _, tc := range []struct {
		o    s3.Options
		want string
	}{
		{s3.Options{Prefix: "none"}, ""},
		{s3.Options{Prefix: "aes", SSE: s3.SSEAES256}, "AES256"},
		{s3.Options{Prefix: "kms", SSE: s3.SSEKMS, SSEKMSKeyID: s3test.KMSKeyID}, "aws:kms"},
	} {
		tc.o.Bucket, tc.o.PartSize = bucket, 5<<20
		st := open(t, srv, tc.o)
		ctx := quick(t.Context(), 3)
		if err := st.Put(ctx, "small", bytes.NewReader(small), int64(len(small)), nil); err != nil {
			t.Fatalf("%s: put: %v", tc.o.Prefix, err)
		}
		const size = 11 << 20 // three parts
		if _, err := st.PutStream(ctx, "stream", generated(2, size), nil); err != nil {
			t.Fatalf("%s: put stream: %v", tc.o.Prefix, err)
		}
		for _, key := range []string{"small", "stream"} {
			info, err := srv.Client().StatObject(ctx, bucket, tc.o.Prefix+"/"+key, minio.StatObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Metadata.Get("X-Amz-Server-Side-Encryption"); got != tc.want {
				t.Errorf("%s/%s: stored with server-side encryption %q, want %q", tc.o.Prefix, key, got, tc.want)
			}
			if tc.o.SSEKMSKeyID != "" {
				if got := info.Metadata.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"); !strings.HasSuffix(got, tc.o.SSEKMSKeyID) {
					t.Errorf("%s/%s: KMS key %q, want %s", tc.o.Prefix, key, got, tc.o.SSEKMSKeyID)
				}
			}
		}
		checkContent(t, st, "small", small)
		rc, _, err := st.Get(ctx, "stream")
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil || [32]byte(h.Sum(nil)) != generatedSum(2, size) {
			t.Errorf("%s: the stream reads back different (%v)", tc.o.Prefix, err)
		}
	}
}

// pusherPolicy allows what a pushing host gets under least privilege:
// read and write objects under the prefix, no listing, no deleting.
const pusherPolicy = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
"Action":["s3:PutObject","s3:GetObject","s3:AbortMultipartUpload"],"Resource":["arn:aws:s3:::BUCKET/p/*"]}]}`

// TestWithoutListBucket: without s3:ListBucket, S3 answers a missing key
// with 403, not 404. Get and Stat must then fail loudly (never "not
// found"), while writing still works: Put and PutStream (whose early
// existence check sees the 403) store new keys and refuse existing ones.
func TestWithoutListBucket(t *testing.T) {
	srv := s3test.Start(t)
	useServer(t, srv)
	bucket := srv.NewBucket(t)
	cred := srv.Restricted(t, strings.ReplaceAll(pusherPolicy, "BUCKET", bucket))
	t.Setenv("AWS_ACCESS_KEY_ID", cred.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", cred.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", cred.SessionToken)
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p", PartSize: 5 << 20})
	ctx := quick(t.Context(), 3)

	// AWS answers both with 403; MinIO answers a GET with 404 when
	// s3:GetObject is granted, which is true, and a HEAD with 403.
	if _, err := st.Stat(ctx, "missing"); errors.Is(err, storage.ErrNotExist) || !storage.IsPermanent(err) || !strings.Contains(err.Error(), "s3:ListBucket") {
		t.Errorf("stat of a missing key without s3:ListBucket: %v, want a permanent error naming s3:ListBucket", err)
	}
	if _, _, err := st.Get(ctx, "missing"); !errors.Is(err, storage.ErrNotExist) && !(storage.IsPermanent(err) && strings.Contains(err.Error(), "s3:ListBucket")) {
		t.Errorf("get of a missing key without s3:ListBucket: %v, want ErrNotExist or a permanent error naming s3:ListBucket", err)
	}
	if err := st.List(ctx, "", func(storage.ObjectInfo) error { return nil }); !storage.IsPermanent(err) || !strings.Contains(err.Error(), "s3:ListBucket") {
		t.Errorf("list: %v, want a permanent error naming s3:ListBucket", err)
	}

	data := randomBytes(3, 100)
	if err := st.Put(ctx, "k", bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := st.Put(ctx, "k", bytes.NewReader(data), int64(len(data)), nil); !errors.Is(err, storage.ErrExist) {
		t.Fatalf("second put: %v, want ErrExist", err)
	}
	checkContent(t, st, "k", data)
	const size = 7 << 20
	if _, err := st.PutStream(ctx, "stream", generated(4, size), nil); err != nil {
		t.Fatalf("put stream of a new key: %v", err)
	}
	if _, err := st.PutStream(ctx, "stream", generated(4, size), nil); !errors.Is(err, storage.ErrExist) {
		t.Fatalf("put stream of an existing key: %v, want ErrExist", err)
	}
	if n, sum := storedSum(t, srv, bucket, "p/stream"); n != size || sum != generatedSum(4, size) {
		t.Errorf("stored stream: %d bytes, want %d, or its content differs", n, size)
	}
	if err := st.Delete(ctx, "k"); !storage.IsPermanent(err) || errors.Is(err, storage.ErrNotExist) {
		t.Errorf("delete without s3:DeleteObject: %v, want a permanent error", err)
	}
	checkContent(t, st, "k", data)
}
