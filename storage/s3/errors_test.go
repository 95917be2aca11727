package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/s3"
)

// isolateAWS gives the SDK's standard chain nothing from the machine: no
// profile, no shared files, no EC2 metadata probe.
func isolateAWS(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, k := range []string{
		"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
		"AWS_DEFAULTS_MODE", "AWS_REGION", "AWS_DEFAULT_REGION",
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
	} {
		t.Setenv(k, "")
	}
}

// TestErrorAnswers checks how S3 error answers map to walship's error
// classes, for answers the MinIO used in the other tests never gives
// (409 conflicts, region redirects, throttling, old servers without
// conditional writes). The answers are canned; the SDK parses them as it
// parses AWS's.
func TestErrorAnswers(t *testing.T) {
	isolateAWS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")

	const (
		permanent = "permanent"
		retryable = "retryable"
		exist     = "ErrExist"
		notExist  = "ErrNotExist"
	)
	for _, tc := range []struct {
		op     string
		status int
		code   string
		header string // "Name: value"
		want   string
		hint   string
	}{
		{"put", 412, "PreconditionFailed", "", exist, ""},
		{"put", 409, "ConditionalRequestConflict", "", retryable, "another write of this key is in progress"},
		{"put", 503, "SlowDown", "", retryable, "busy"},
		{"put", 500, "InternalError", "", retryable, "busy or failing"},
		{"put", 502, "", "", retryable, "failed (502)"},
		{"put", 400, "RequestTimeout", "", retryable, ""},
		{"put", 400, "BadDigest", "", retryable, "does not match its checksum"},
		{"put", 400, "InvalidArgument", "", permanent, "rejected the request"},
		{"put", 400, "EntityTooLarge", "", permanent, "too large"},
		{"put", 501, "NotImplemented", "", permanent, "If-None-Match"},
		{"put", 301, "PermanentRedirect", "X-Amz-Bucket-Region: eu-west-1", permanent, "set AWS_REGION=eu-west-1"},
		{"put", 400, "AuthorizationHeaderMalformed", "", permanent, "another region"},
		{"put", 403, "AccessDenied", "", permanent, "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy"},
		{"put", 403, "RequestTimeTooSkewed", "", permanent, "NTP"},
		{"get", 400, "ExpiredToken", "", permanent, "refresh them"},
		{"get", 404, "NoSuchKey", "", notExist, ""},
		{"get", 404, "NoSuchBucket", "", permanent, "create it or fix --repo"},
		{"get", 400, "InvalidBucketName", "", permanent, "not a valid bucket name"},
		{"get", 503, "ServiceUnavailable", "", retryable, ""},
		{"stat", 403, "", "", permanent, "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy"},
		{"stat", 404, "", "", notExist, ""},
		{"stat", 503, "", "", retryable, ""},
		{"list", 404, "NoSuchBucket", "", permanent, "create it or fix --repo"},
		{"list", 403, "AccessDenied", "", permanent, "s3:ListBucket"},
		{"delete", 404, "NoSuchKey", "", "nil", ""},
		{"delete", 500, "InternalError", "", retryable, ""},
		{"deletebatch", 403, "AccessDenied", "", permanent, "s3:DeleteObject"},
		{"deletebatch", 503, "SlowDown", "", retryable, "busy"},
		{"deletebatch", 404, "NoSuchBucket", "", permanent, "create it or fix --repo"},
		{"deletebatch", 501, "NotImplemented", "", permanent, "does not implement"},
	} {
		t.Run(fmt.Sprintf("%s/%d%s", tc.op, tc.status, tc.code), func(t *testing.T) {
			var objectCalls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodHead && r.URL.Path == "/bucket" {
					return // HeadBucket: the bucket exists
				}
				if answerVersioning(w, r) {
					return // asked before the first delete
				}
				objectCalls.Add(1)
				if name, value, ok := strings.Cut(tc.header, ": "); ok {
					w.Header().Set(name, value)
				}
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(tc.status)
				if r.Method != http.MethodHead && tc.code != "" {
					fmt.Fprintf(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>canned</Message><RequestId>1</RequestId></Error>", tc.code)
				}
			}))
			defer srv.Close()
			st, err := s3.New(t.Context(), s3.Options{Bucket: "bucket", Prefix: "p", Endpoint: srv.URL, PathStyle: true})
			if err != nil {
				t.Fatal(err)
			}
			err = do(t.Context(), st, tc.op)
			t.Logf("%v", err)

			var got string
			switch {
			case err == nil:
				got = "nil"
			case errors.Is(err, storage.ErrExist):
				got = exist
			case errors.Is(err, storage.ErrNotExist):
				got = notExist
			case storage.IsPermanent(err):
				got = permanent
			default:
				got = retryable
			}
			if got != tc.want {
				t.Errorf("%s answered %d %s: got a %s error (%v), want %s", tc.op, tc.status, tc.code, got, err, tc.want)
			}
			if tc.hint != "" && (err == nil || !strings.Contains(err.Error(), tc.hint)) {
				t.Errorf("error %q does not contain %q", err, tc.hint)
			}
			if n := objectCalls.Load(); n != 1 {
				t.Errorf("%d requests for one call: the SDK must not retry on its own", n)
			}
		})
	}
}

func do(ctx context.Context, st storage.Storage, op string) error {
	const key = "wal/000000010000000000000001"
	switch op {
	case "put":
		return st.Put(ctx, key, bytes.NewReader([]byte("data")), 4, nil)
	case "get":
		rc, _, err := st.Get(ctx, key)
		if err == nil {
			rc.Close()
		}
		return err
	case "stat":
		_, err := st.Stat(ctx, key)
		return err
	case "list":
		return st.List(ctx, "", func(storage.ObjectInfo) error { return nil })
	case "delete":
		return st.Delete(ctx, key)
	case "deletebatch":
		return st.(storage.BatchDeleter).DeleteBatch(ctx, []string{key, "wal/000000010000000000000002"})
	}
	panic("unknown op " + op)
}

// TestNoCredentials: with nothing in the credential chain the first call
// fails at once, permanently, and says where credentials come from.
func TestNoCredentials(t *testing.T) {
	isolateAWS(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request sent without credentials: %s %s", r.Method, r.URL)
	}))
	defer srv.Close()
	st, err := s3.New(t.Context(), s3.Options{Bucket: "bucket", Endpoint: srv.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = do(t.Context(), st, "put")
	t.Logf("%v (%v)", err, time.Since(start))
	if !storage.IsPermanent(err) || !strings.Contains(err.Error(), "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") {
		t.Errorf("Put without credentials: %v, want a permanent error that says how to provide them", err)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	isolateAWS(t)
	for _, tc := range []struct {
		o    s3.Options
		hint string
	}{
		{s3.Options{}, "invalid S3 bucket name"},
		{s3.Options{Bucket: "a/b"}, "invalid S3 bucket name"},
		{s3.Options{Bucket: "b", Prefix: "a//b"}, "empty path element"},
		{s3.Options{Bucket: "b", Endpoint: "127.0.0.1:9000"}, "want http://host:port"},
		{s3.Options{Bucket: "b", Endpoint: "ftp://host"}, "want http://host:port"},
		{s3.Options{Bucket: "b"}, "set AWS_REGION"},
		{s3.Options{Bucket: "b", Region: "us-east-1", CAFile: filepath.Join(t.TempDir(), "missing.pem")}, "CA file"},
		{s3.Options{Bucket: "b", Region: "us-east-1", PartSize: 1 << 20}, "part size"},
		{s3.Options{Bucket: "b", Region: "us-east-1", PartSize: 6 << 30}, "part size"},
	} {
		_, err := s3.New(t.Context(), tc.o)
		if !storage.IsPermanent(err) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("New(%+v): %v, want a permanent error containing %q", tc.o, err, tc.hint)
		}
	}

	// With an endpoint and no region anywhere, us-east-1 is assumed.
	if _, err := s3.New(t.Context(), s3.Options{Bucket: "b", Endpoint: "http://127.0.0.1:9"}); err != nil {
		t.Errorf("New with an endpoint and no region: %v", err)
	}
}
