package s3_test

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/s3"
)

// deleteRequest is the body of a DeleteObjects request.
type deleteRequest struct {
	Quiet   bool `xml:"Quiet"`
	Objects []struct {
		Key string `xml:"Key"`
	} `xml:"Object"`
}

// keyAnswer is one per-key entry of a canned DeleteObjects answer.
type keyAnswer struct{ key, code string }

// cannedDeletes is a server that answers DeleteObjects requests with
// answer's per-key errors and records what it was sent.
type cannedDeletes struct {
	t      *testing.T
	answer func(objects []string) []keyAnswer
	mu     sync.Mutex
	sent   [][]string // bucket keys, per request
	quiet  []bool
	header []http.Header
}

func (c *cannedDeletes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if answerVersioning(w, r) {
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/bucket" || !r.URL.Query().Has("delete") {
		c.t.Errorf("unexpected request %s %s", r.Method, r.URL)
		w.WriteHeader(http.StatusNotImplemented)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		c.t.Error(err)
		return
	}
	var req deleteRequest
	if err := xml.Unmarshal(body, &req); err != nil {
		c.t.Errorf("DeleteObjects body %q: %v", body, err)
	}
	var objects []string
	for _, o := range req.Objects {
		objects = append(objects, o.Key)
	}
	c.mu.Lock()
	c.sent = append(c.sent, objects)
	c.quiet = append(c.quiet, req.Quiet)
	c.header = append(c.header, r.Header.Clone())
	c.mu.Unlock()

	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n" + `<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">`)
	if c.answer != nil {
		for _, a := range c.answer(objects) {
			fmt.Fprintf(&b, "<Error><Key>%s</Key><Code>%s</Code><Message>canned %s</Message></Error>", a.key, a.code, a.code)
		}
	}
	b.WriteString("</DeleteResult>")
	w.Header().Set("Content-Type", "application/xml")
	io.WriteString(w, b.String())
}

// answerVersioning answers GetBucketVersioning, which the first delete
// of a Storage sends, for a bucket that was never versioned.
func answerVersioning(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet || !r.URL.Query().Has("versioning") {
		return false
	}
	w.Header().Set("Content-Type", "application/xml")
	io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></VersioningConfiguration>`)
	return true
}

func openCanned(t *testing.T, c *cannedDeletes) *s3.Storage {
	t.Helper()
	isolateAWS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	c.t = t
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	st, err := s3.New(t.Context(), s3.Options{Bucket: "bucket", Prefix: "p", Endpoint: srv.URL, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestDeleteBatchRequest checks what one DeleteObjects request carries:
// the prefixed keys, Quiet, and the checksum S3 requires of it.
func TestDeleteBatchRequest(t *testing.T) {
	c := &cannedDeletes{}
	st := openCanned(t, c)
	keys := []string{"wal/000000010000000000000001", "wal/000000010000000000000002", "basebackups/b1/meta.json"}
	if err := st.DeleteBatch(t.Context(), keys); err != nil {
		t.Fatal(err)
	}
	if len(c.sent) != 1 {
		t.Fatalf("%d requests, want 1", len(c.sent))
	}
	want := []string{"p/wal/000000010000000000000001", "p/wal/000000010000000000000002", "p/basebackups/b1/meta.json"}
	if !slices.Equal(c.sent[0], want) {
		t.Errorf("sent keys %q, want %q", c.sent[0], want)
	}
	if !c.quiet[0] {
		t.Error("request without <Quiet>true</Quiet>: the answer would list every deleted key")
	}
	h := c.header[0]
	var sums []string
	for name := range h {
		if strings.HasPrefix(strings.ToLower(name), "x-amz-checksum-") || strings.EqualFold(name, "Content-Md5") {
			sums = append(sums, name+": "+h.Get(name))
		}
	}
	t.Logf("checksum headers: %q", sums)
	if len(sums) == 0 {
		t.Errorf("DeleteObjects without Content-MD5 or x-amz-checksum-*: S3 refuses it (headers %v)", h)
	}
}

// TestDeleteAllRequests: deleting 2,500 keys takes three requests.
func TestDeleteAllRequests(t *testing.T) {
	c := &cannedDeletes{}
	st := openCanned(t, c)
	keys := make([]string, 2500)
	for i := range keys {
		keys[i] = fmt.Sprintf("wal/%024X", i)
	}
	if err := storage.DeleteAll(t.Context(), storage.WithRetry(st, storage.RetryOptions{}), keys, nil); err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, s := range c.sent {
		sizes = append(sizes, len(s))
	}
	if !slices.Equal(sizes, []int{1000, 1000, 500}) {
		t.Errorf("DeleteObjects requests of %v keys, want [1000 1000 500]", sizes)
	}
}

// TestDeleteBatchKeyErrors maps the per-key errors of an answer, which
// MinIO cannot be made to give: AccessDenied (also Object Lock) is
// permanent, NoSuchKey is success, anything else is worth retrying.
func TestDeleteBatchKeyErrors(t *testing.T) {
	keys := []string{"wal/1", "wal/2", "wal/3", "wal/4"}
	for _, tc := range []struct {
		name      string
		codes     map[string]string // bucket key → error code
		failed    []string          // archive keys
		permanent bool
	}{
		{"None", nil, nil, false},
		{"NoSuchKey", map[string]string{"p/wal/2": "NoSuchKey"}, nil, false},
		{"AccessDenied", map[string]string{"p/wal/3": "AccessDenied"}, []string{"wal/3"}, true},
		{"Mixed", map[string]string{"p/wal/4": "AccessDenied", "p/wal/1": "InternalError", "p/wal/2": "NoSuchKey"}, []string{"wal/1", "wal/4"}, false},
		{"SlowDown", map[string]string{"p/wal/2": "SlowDown"}, []string{"wal/2"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &cannedDeletes{answer: func(objects []string) []keyAnswer {
				var out []keyAnswer
				// In the server's order, not the request's.
				for _, o := range slices.Backward(objects) {
					if code, ok := tc.codes[o]; ok {
						out = append(out, keyAnswer{o, code})
					}
				}
				return out
			}}
			st := openCanned(t, c)
			err := st.DeleteBatch(t.Context(), keys)
			t.Logf("%v", err)
			if len(tc.failed) == 0 {
				if err != nil {
					t.Errorf("DeleteBatch: %v, want nil", err)
				}
				return
			}
			var de *storage.DeleteError
			if !errors.As(err, &de) {
				t.Fatalf("DeleteBatch: %v, want a *storage.DeleteError", err)
			}
			var failed []string
			for _, f := range de.Failed {
				failed = append(failed, f.Key)
			}
			if !slices.Equal(failed, tc.failed) {
				t.Errorf("failed keys %q, want %q", failed, tc.failed)
			}
			if got := storage.IsPermanent(err); got != tc.permanent {
				t.Errorf("IsPermanent = %v, want %v", got, tc.permanent)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.failed[0]) {
				t.Errorf("error %q is not one line naming %s", msg, tc.failed[0])
			}
			for _, f := range de.Failed {
				if tc.codes["p/"+f.Key] == "AccessDenied" {
					for _, hint := range []string{"s3:DeleteObject", "Object Lock", "legal hold", "must end"} {
						if !strings.Contains(f.Err.Error(), hint) {
							t.Errorf("error for %s %q does not say %q", f.Key, f.Err, hint)
						}
					}
				}
			}
			if tc.name == "AccessDenied" && !strings.Contains(msg, "s3:DeleteObject") {
				t.Errorf("error %q does not carry the hint", msg)
			}
		})
	}
}

// TestDeleteBatchRetried: through WithRetry, only the keys that failed
// transiently are sent again; the one denied comes back.
func TestDeleteBatchRetried(t *testing.T) {
	calls := 0
	c := &cannedDeletes{answer: func(objects []string) []keyAnswer {
		calls++
		if calls == 1 {
			return []keyAnswer{{"p/wal/2", "AccessDenied"}, {"p/wal/3", "InternalError"}}
		}
		return nil
	}}
	st := openCanned(t, c)
	r := storage.WithRetry(st, fastRetry()).(storage.BatchDeleter)
	err := r.DeleteBatch(t.Context(), []string{"wal/1", "wal/2", "wal/3"})
	var de *storage.DeleteError
	if !errors.As(err, &de) || len(de.Failed) != 1 || de.Failed[0].Key != "wal/2" || !storage.IsPermanent(err) {
		t.Fatalf("DeleteBatch: %v, want a permanent *DeleteError for wal/2 alone", err)
	}
	if want := [][]string{{"p/wal/1", "p/wal/2", "p/wal/3"}, {"p/wal/3"}}; !slices.EqualFunc(c.sent, want, slices.Equal) {
		t.Errorf("requests %q, want %q", c.sent, want)
	}
}

func fastRetry() storage.RetryOptions {
	return storage.RetryOptions{Attempts: 3, MinBackoff: 1, MaxBackoff: 1}
}

func TestDeleteBatchRefuses(t *testing.T) {
	c := &cannedDeletes{}
	st := openCanned(t, c)
	for _, keys := range [][]string{
		{"wal/1", "../wal/2"},
		{"wal/1", ""},
		make([]string, storage.MaxBatch+1),
	} {
		if len(keys) > storage.MaxBatch {
			for i := range keys {
				keys[i] = fmt.Sprint("wal/", i)
			}
		}
		err := st.DeleteBatch(t.Context(), keys)
		t.Logf("%v", err)
		if !storage.IsPermanent(err) {
			t.Errorf("DeleteBatch of %d keys (%q…): %v, want a permanent error", len(keys), keys[:2], err)
		}
	}
	if len(c.sent) != 0 {
		t.Errorf("%d requests sent for refused batches", len(c.sent))
	}
}

// testDeleteBatchPrefix deletes through one prefix on a real server and
// checks with minio-go that the same keys under another prefix survive.
func testDeleteBatchPrefix(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	archive := open(t, srv, s3.Options{Bucket: bucket, Prefix: "archive"})
	other := open(t, srv, s3.Options{Bucket: bucket, Prefix: "other"})
	keys := []string{"wal/000000010000000000000001", "wal/000000010000000000000002", "basebackups/b1/meta.json"}
	for _, st := range []*s3.Storage{archive, other} {
		for _, k := range keys {
			if err := st.Put(t.Context(), k, strings.NewReader(k), int64(len(k)), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := archive.DeleteBatch(t.Context(), append(slices.Clone(keys), "wal/never-stored")); err != nil {
		t.Fatal(err)
	}
	var left []string
	for o := range srv.Client().ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		left = append(left, o.Key)
	}
	want := []string{"other/basebackups/b1/meta.json", "other/wal/000000010000000000000001", "other/wal/000000010000000000000002"}
	if !slices.Equal(left, want) {
		t.Errorf("bucket holds %q, want %q", left, want)
	}
}
