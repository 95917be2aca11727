package s3test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"
)

// TestServerWithTLSAndKMS: a server started with TLS answers only HTTPS
// with a certificate that CAFile makes trusted; with KMS it encrypts an
// object at rest when asked; Restricted credentials get only what their
// policy allows.
func TestServerWithTLSAndKMS(t *testing.T) {
	s := StartWith(t, Options{TLS: true, KMS: true})
	if !strings.HasPrefix(s.Endpoint(), "https://127.0.0.1:") || s.CAFile() == "" {
		t.Fatalf("Endpoint() = %q, CAFile() = %q: want https and a CA file", s.Endpoint(), s.CAFile())
	}
	// Without the CA, the certificate is not trusted.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(s.Endpoint() + "/minio/health/live"); err == nil {
		resp.Body.Close()
		t.Fatal("an HTTPS client without the test CA accepted the server's certificate")
	}

	bucket := s.NewBucket(t)
	c := s.Client()
	_, err := c.PutObject(t.Context(), bucket, "p/k", bytes.NewReader([]byte("secret")), 6,
		minio.PutObjectOptions{ServerSideEncryption: encrypt.NewSSE()})
	if err != nil {
		t.Fatalf("put with SSE-S3: %v", err)
	}
	st, err := c.StatObject(t.Context(), bucket, "p/k", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Metadata.Get("X-Amz-Server-Side-Encryption"); got != "AES256" {
		t.Errorf("stored object: X-Amz-Server-Side-Encryption %q, want AES256", got)
	}

	cred := s.Restricted(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::`+bucket+`/p/*"]}]}`)
	rc, err := minio.New(strings.TrimPrefix(s.Endpoint(), "https://"), &minio.Options{
		Creds: credentials.NewStaticV4(cred.AccessKey, cred.SecretKey, cred.SessionToken), Secure: true,
		Transport: s.transport(), Region: Region, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, rc, bucket, "p/k"); got != "secret" {
		t.Errorf("restricted read: %q", got)
	}
	_, err = rc.PutObject(t.Context(), bucket, "p/other", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
	if code := minio.ToErrorResponse(err).Code; code != "AccessDenied" {
		t.Errorf("restricted put beyond the policy: %v (code %q), want AccessDenied", err, code)
	}
}
