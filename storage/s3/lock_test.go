package s3_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
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

// TestObjectLock runs against a real MinIO: what walship writes with
// ObjectLockDays carries the retention (checked with minio-go), deletes
// on versioned buckets remove every version, and a delete refused by
// Object Lock says until when.
func TestObjectLock(t *testing.T) {
	srv := s3test.Start(t)
	useServer(t, srv)
	t.Run("WritesCarryRetention", func(t *testing.T) { testWritesCarryRetention(t, srv) })
	t.Run("ExemptKeys", func(t *testing.T) { testLockExempt(t, srv) })
	t.Run("DeleteRefused", func(t *testing.T) { testDeleteRefused(t, srv) })
	t.Run("NoLockConfiguration", func(t *testing.T) { testNoLockConfiguration(t, srv) })
	t.Run("VersionedDelete", func(t *testing.T) { testVersionedDelete(t, srv) })
	t.Run("VersionedDeleteMany", func(t *testing.T) { testVersionedDeleteMany(t, srv) })
	t.Run("PlainBucketUnchanged", func(t *testing.T) { testPlainBucketUnchanged(t, srv) })
	// Every promise of the Storage interface holds on a versioned bucket
	// too: a deleted key is gone for Get, Stat, List and Put.
	t.Run("Conformance/versioned", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Storage {
			return open(t, srv, s3.Options{Bucket: srv.NewVersionedBucket(t), Prefix: "archive"})
		})
	})
}

// versions lists every version and delete marker of object (a bucket
// key) with minio-go, as "id" or "marker:id".
func versions(t *testing.T, srv *s3test.Server, bucket, object string) []string {
	t.Helper()
	var out []string
	for o := range srv.Client().ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Prefix: object, WithVersions: true, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if o.Key != object {
			continue
		}
		if o.IsDeleteMarker {
			out = append(out, "marker:"+o.VersionID)
		} else {
			out = append(out, o.VersionID)
		}
	}
	return out
}

// checkRetention fails unless every version of object is locked in mode
// until about days from now.
func checkRetention(t *testing.T, srv *s3test.Server, bucket, object string, mode minio.RetentionMode, days int) {
	t.Helper()
	vs := versions(t, srv, bucket, object)
	if len(vs) != 1 {
		t.Fatalf("%s has versions %q, want one", object, vs)
	}
	m, until, err := srv.Client().GetObjectRetention(t.Context(), bucket, object, vs[0])
	if err != nil {
		t.Fatalf("retention of %s: %v", object, err)
	}
	want := time.Now().Add(time.Duration(days) * 24 * time.Hour)
	if m == nil || *m != mode || until == nil || until.Sub(want).Abs() > 5*time.Minute {
		t.Fatalf("%s is locked %v until %v, want %s until about %v", object, m, until, mode, want)
	}
}

// testLockExempt: keys the exemption names are stored without a lock
// and can be replaced (deleted and written again); the others are locked.
func testLockExempt(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewLockedBucket(t)
	ctx := t.Context()
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p", ObjectLockDays: 2,
		ObjectLockExempt: func(key string) bool { return strings.HasPrefix(key, "partial/") }})
	for _, key := range []string{"partial/snap", "wal/locked"} {
		if err := st.Put(ctx, key, strings.NewReader("x"), 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	checkRetention(t, srv, bucket, "p/wal/locked", minio.Compliance, 2)
	vs := versions(t, srv, bucket, "p/partial/snap")
	if len(vs) != 1 {
		t.Fatalf("p/partial/snap has versions %q, want one", vs)
	}
	if m, _, err := srv.Client().GetObjectRetention(ctx, bucket, "p/partial/snap", vs[0]); err == nil && m != nil {
		t.Fatalf("an exempt key is locked (%v)", *m)
	}
	if err := st.Delete(ctx, "partial/snap"); err != nil {
		t.Fatalf("deleting an exempt key: %v", err)
	}
	if vs := versions(t, srv, bucket, "p/partial/snap"); len(vs) != 0 {
		t.Fatalf("the exempt key left versions %q", vs)
	}
	if err := st.Delete(ctx, "wal/locked"); err == nil {
		t.Fatal("a locked key was deleted")
	}
}

func testWritesCarryRetention(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewLockedBucket(t)
	ctx := t.Context()
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p", ObjectLockDays: 2, PartSize: 5 << 20})
	if err := st.Put(ctx, "wal/a", strings.NewReader("segment a"), 9, nil); err != nil {
		t.Fatal(err)
	}
	checkRetention(t, srv, bucket, "p/wal/a", minio.Compliance, 2)

	// A short stream is one PutObject, a long one a multipart upload.
	if _, err := st.PutStream(ctx, "basebackups/b/small", strings.NewReader("small"), nil); err != nil {
		t.Fatal(err)
	}
	checkRetention(t, srv, bucket, "p/basebackups/b/small", minio.Compliance, 2)
	big := randomBytes(7, 11<<20)
	if _, err := st.PutStream(ctx, "basebackups/b/base.tar", bytes.NewReader(big), nil); err != nil {
		t.Fatalf("multipart upload with Object Lock: %v", err)
	}
	checkRetention(t, srv, bucket, "p/basebackups/b/base.tar", minio.Compliance, 2)
	checkContent(t, st, "basebackups/b/base.tar", big)

	gov := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p", ObjectLockDays: 1, ObjectLockMode: "governance"})
	if err := gov.Put(ctx, "wal/g", strings.NewReader("g"), 1, nil); err != nil {
		t.Fatal(err)
	}
	checkRetention(t, srv, bucket, "p/wal/g", minio.Governance, 1)

	// No overwrite: a second write of the key is refused, and adds no
	// version.
	err := st.Put(ctx, "wal/a", strings.NewReader("other a"), 7, nil)
	if !errors.Is(err, storage.ErrExist) {
		t.Fatalf("overwriting a locked object: %v, want ErrExist", err)
	}
	if _, err := st.PutStream(ctx, "basebackups/b/base.tar", bytes.NewReader(big[:1<<20]), nil); !errors.Is(err, storage.ErrExist) {
		t.Fatalf("overwriting a locked stream: %v, want ErrExist", err)
	}
	if vs := versions(t, srv, bucket, "p/wal/a"); len(vs) != 1 {
		t.Fatalf("after a refused overwrite, versions %q", vs)
	}
}

func testDeleteRefused(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewLockedBucket(t)
	ctx := t.Context()
	locked := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p", ObjectLockDays: 1})
	// Writes without retention on the same bucket, for objects that may go.
	free := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p"})
	for _, k := range []string{"wal/1", "wal/3"} {
		if err := free.Put(ctx, k, strings.NewReader(k), int64(len(k)), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"wal/2", "wal/4"} {
		if err := locked.Put(ctx, k, strings.NewReader(k), int64(len(k)), nil); err != nil {
			t.Fatal(err)
		}
	}
	until := time.Now().Add(24 * time.Hour)

	// The Storage without ObjectLockDays finds out that the bucket is
	// versioned by itself.
	err := free.Delete(ctx, "wal/2")
	t.Logf("Delete: %v", err)
	var re *storage.RetentionError
	if !errors.As(err, &re) || !storage.IsPermanent(err) {
		t.Fatalf("Delete of a locked object: %v, want a permanent *storage.RetentionError", err)
	}
	if re.Mode != "compliance" || re.Until.Sub(until).Abs() > 5*time.Minute || re.LegalHold {
		t.Errorf("retention %+v, want compliance until about %v", re, until)
	}
	if msg := err.Error(); !strings.Contains(msg, "p/wal/2") || !strings.Contains(msg, "under Object Lock retention until "+re.Until.Format(time.RFC3339)+" (compliance)") {
		t.Errorf("error %q does not name the object and its retention", msg)
	}
	if vs := versions(t, srv, bucket, "p/wal/2"); len(vs) != 1 || strings.HasPrefix(vs[0], "marker:") {
		t.Fatalf("after a refused delete, wal/2 has versions %q: want the one object, no delete marker", vs)
	}

	err = storage.DeleteAll(ctx, storage.WithRetry(locked, fastRetry()), []string{"wal/1", "wal/2", "wal/3", "wal/4"}, nil)
	var de *storage.DeleteError
	if !errors.As(err, &de) {
		t.Fatalf("DeleteAll: %v, want a *storage.DeleteError", err)
	}
	var failed []string
	for _, f := range de.Failed {
		failed = append(failed, f.Key)
	}
	if !slices.Equal(failed, []string{"wal/2", "wal/4"}) || !storage.IsPermanent(err) {
		t.Fatalf("refused %q (permanent %v), want wal/2 and wal/4, permanently", failed, storage.IsPermanent(err))
	}
	if !errors.As(de.Failed[0].Err, &re) {
		t.Errorf("the first refusal %v is no *storage.RetentionError", de.Failed[0].Err)
	}
	for _, k := range []string{"p/wal/1", "p/wal/3"} {
		if vs := versions(t, srv, bucket, k); len(vs) != 0 {
			t.Errorf("%s was deleted, but versions %q are left", k, vs)
		}
	}
	for _, k := range []string{"wal/2", "wal/4"} {
		checkContent(t, locked, k, []byte(k))
	}

	// Even with the bypass header, compliance retention holds.
	vs := versions(t, srv, bucket, "p/wal/2")
	err = srv.Client().RemoveObject(ctx, bucket, "p/wal/2", minio.RemoveObjectOptions{VersionID: vs[0], GovernanceBypass: true})
	if err == nil {
		t.Fatal("minio-go deleted a version under compliance retention")
	}
}

func testNoLockConfiguration(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	st := open(t, srv, s3.Options{Bucket: bucket, ObjectLockDays: 1, PartSize: 5 << 20})
	want := "bucket " + bucket + " has no Object Lock configuration: create it with object locking, or drop --object-lock-days"
	err := st.Put(t.Context(), "wal/a", strings.NewReader("a"), 1, nil)
	t.Logf("Put: %v", err)
	if err == nil || !storage.IsPermanent(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("Put into a bucket without Object Lock: %v, want a permanent error saying %q", err, want)
	}
	_, err = st.PutStream(t.Context(), "basebackups/b/base.tar", bytes.NewReader(randomBytes(1, 6<<20)), nil)
	t.Logf("PutStream: %v", err)
	if err == nil || !storage.IsPermanent(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("PutStream into a bucket without Object Lock: %v, want a permanent error saying %q", err, want)
	}
	if n := len(incompleteUploads(t, srv, bucket)); n != 0 {
		t.Errorf("%d incomplete uploads left", n)
	}
}

// testVersionedDelete: on a versioned bucket (no Object Lock), Delete and
// DeleteBatch leave no version and no delete marker of the keys, and
// leave keys that merely share a prefix alone.
func testVersionedDelete(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewVersionedBucket(t)
	ctx := t.Context()
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p"})
	keys := []string{"wal/a", "wal/ab", "wal/b", "wal/c", "wal/ca"}
	for _, k := range keys {
		if err := st.Put(ctx, k, strings.NewReader(k), int64(len(k)), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Another version of wal/b and a delete marker on wal/c, behind
	// walship's back.
	if _, err := srv.Client().PutObject(ctx, bucket, "p/wal/b", strings.NewReader("again"), 5, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Client().RemoveObject(ctx, bucket, "p/wal/c", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, "wal/a"); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteBatch(ctx, []string{"wal/c", "wal/b", "wal/never"}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"wal/a", "wal/b", "wal/c"} {
		if vs := versions(t, srv, bucket, "p/"+k); len(vs) != 0 {
			t.Errorf("%s deleted, but versions %q are left", k, vs)
		}
	}
	for _, k := range []string{"wal/ab", "wal/ca"} {
		checkContent(t, st, k, []byte(k))
	}
}

// testVersionedDeleteMany: batches of neighbouring keys with more
// versions than one listing page holds.
func testVersionedDeleteMany(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewVersionedBucket(t)
	ctx := t.Context()
	st := open(t, srv, s3.Options{Bucket: bucket, Prefix: "p"})
	const n = 1100
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("wal/%024X", i)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for i, k := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			copies := 1 + i%2 // every other key has two versions
			for range copies {
				if _, err := srv.Client().PutObject(ctx, bucket, "p/"+k, strings.NewReader(k), int64(len(k)), minio.PutObjectOptions{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Keep the first and last ten.
	if err := storage.DeleteAll(ctx, storage.WithRetry(st, fastRetry()), keys[10:n-10], nil); err != nil {
		t.Fatal(err)
	}
	var left []string
	for o := range srv.Client().ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "p/", WithVersions: true, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		left = append(left, strings.TrimPrefix(o.Key, "p/"))
	}
	slices.Sort(left)
	left = slices.Compact(left)
	if want := append(slices.Clone(keys[:10]), keys[n-10:]...); !slices.Equal(left, want) {
		t.Fatalf("%d keys have versions left, want the %d kept: %q", len(left), len(want), left)
	}
	t.Logf("requests: %v", st.Requests())
}

// testPlainBucketUnchanged: without ObjectLockDays, on a bucket without
// versioning, objects carry no retention, and a run's deletes ask about
// versioning once and then are plain deletes.
func testPlainBucketUnchanged(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewBucket(t)
	ctx := t.Context()
	st := open(t, srv, s3.Options{Bucket: bucket})
	for _, k := range []string{"wal/a", "wal/b", "wal/c"} {
		if err := st.Put(ctx, k, strings.NewReader(k), int64(len(k)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := srv.Client().GetObjectRetention(ctx, bucket, "wal/a", ""); err == nil {
		t.Error("an object written without ObjectLockDays has a retention")
	}
	if err := st.Delete(ctx, "wal/a"); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteBatch(ctx, []string{"wal/b", "wal/c"}); err != nil {
		t.Fatal(err)
	}
	got := st.Requests()
	want := map[string]int64{"PUT": 3, "GET": 1, "DELETE": 1, "POST": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requests %v, want %v (one GetBucketVersioning, then plain deletes)", got, want)
	}
	var left []string
	for o := range srv.Client().ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		left = append(left, o.Key)
	}
	if len(left) != 0 {
		t.Errorf("left %q", left)
	}
}
