package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/wal"
)

// The least-privilege policies of the README, with BUCKET and PREFIX for
// the operator to fill in. The tests use exactly these texts.
const (
	// pusherPolicy: wal-push, wal-stream and backup-push. No listing,
	// no deleting.
	pusherPolicy = `{"Version": "2012-10-17", "Statement": [
  {"Sid": "WalshipPush", "Effect": "Allow",
   "Action": ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
   "Resource": "arn:aws:s3:::BUCKET/PREFIX/*"}
]}`
	// restorerPolicy: wal-fetch, backup-fetch, backup-list, wal-verify.
	restorerPolicy = `{"Version": "2012-10-17", "Statement": [
  {"Sid": "WalshipRead", "Effect": "Allow",
   "Action": "s3:GetObject", "Resource": "arn:aws:s3:::BUCKET/PREFIX/*"},
  {"Sid": "WalshipList", "Effect": "Allow",
   "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::BUCKET"}
]}`
	// retentionPolicy: backup-delete, wal-cleanup. Deleting asks
	// whether the bucket keeps versions; on a versioned bucket it
	// removes every version.
	retentionPolicy = `{"Version": "2012-10-17", "Statement": [
  {"Sid": "WalshipRetention", "Effect": "Allow",
   "Action": ["s3:GetObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
   "Resource": "arn:aws:s3:::BUCKET/PREFIX/*"},
  {"Sid": "WalshipList", "Effect": "Allow",
   "Action": ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketVersioning"],
   "Resource": "arn:aws:s3:::BUCKET"}
]}`
)

// role is an archive in a shared bucket seen with the credentials of
// one least-privilege policy; inspection (exists, keys) goes through the
// root user's client, behind walship's back.
func role(t *testing.T, srv *s3test.Server, bucket, prefix, policy string) (backend, *minio.Client) {
	t.Helper()
	text := strings.NewReplacer("BUCKET", bucket, "PREFIX", prefix).Replace(policy)
	cred := srv.Restricted(t, text)
	repo := "s3://" + bucket + "/" + prefix
	b := backend{
		name: "s3",
		repo: repo,
		env: append(srv.EnvWith(cred), "WALSHIP_REPO="+repo, "WALSHIP_S3_PATH_STYLE=true",
			// Its own cache, so that nothing another role learnt helps.
			"WALSHIP_CACHE_DIR="+pgtest.NewDir(t, "cache")),
		exists: func(t *testing.T, key string) bool {
			_, err := srv.Client().StatObject(context.Background(), bucket, prefix+"/"+key, minio.StatObjectOptions{})
			return err == nil
		},
		keys: func(t *testing.T) []string { return bucketKeys(t, srv.Client(), bucket, prefix) },
		srv:  srv,
	}
	c, err := minio.New(strings.TrimPrefix(srv.Endpoint(), "http://"), &minio.Options{
		Creds:  credentials.NewStaticV4(cred.AccessKey, cred.SecretKey, cred.SessionToken),
		Region: s3test.Region, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b, c
}

func bucketKeys(t *testing.T, c *minio.Client, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	for o := range c.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix + "/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, strings.TrimPrefix(o.Key, prefix+"/"))
	}
	sort.Strings(keys)
	return keys
}

// denied checks that a direct S3 call failed with AccessDenied.
func denied(t *testing.T, what string, err error) {
	t.Helper()
	if code := minio.ToErrorResponse(err).Code; code != "AccessDenied" {
		t.Errorf("%s: %v (code %q), want AccessDenied", what, err, code)
	}
}

// TestS3LeastPrivilege: each role works with only its policy's
// permissions. A primary archives (archive_command) and takes base
// backups with the pusher's credentials, which can neither list nor
// delete; wal-stream archives beside it with them too. A restore with
// the restorer's credentials (backup-fetch, then wal-fetch during
// recovery) ends with the primary's data, and backup-delete with the
// retention credentials removes the older backup.
func TestS3LeastPrivilege(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	const prefix = "cluster"
	pusher, pusherS3 := role(t, srv, bucket, prefix, pusherPolicy)
	restorer, restorerS3 := role(t, srv, bucket, prefix, restorerPolicy)
	retention, retentionS3 := role(t, srv, bucket, prefix, retentionPolicy)
	ctx := context.Background()

	// The first wal-push finds no identity (403 to the pusher: it may
	// not list) and records it with a conditional write.
	primary := primaryFor(t, pusher, 15, map[string]string{"wal_level": "replica"})
	primary.Psql(t, "CREATE TABLE feed (id int, note text)")
	primary.Pgbench(t, "-i", "-s", "2", "-q")
	waitArchived(t, primary)
	if !pusher.exists(t, "cluster.json") {
		t.Fatal("the pusher's first wal-push recorded no cluster identity")
	}

	// wal-stream beside archive_command: the segments both store are
	// found identical; its start cannot come from a listing.
	ws := startStream(t, pusher, primary, pgtest.NewDir(t, "spool"), streamFlags...)
	ws.waitStreaming(t)
	first := backupPush(t, pusher, primary)
	primary.Psql(t, "INSERT INTO feed SELECT g, 'after the first backup' FROM generate_series(1, 1000) g")
	primary.Pgbench(t, "-T", "2", "-c", "2")
	last := switchWAL(t, primary)
	ws.waitStatus(t, 2*time.Minute, "archived "+last, func(st streamStatus) bool { return st.Archived >= last })
	ws.stop(t)
	if log := ws.logText(); strings.Contains(log, "level=ERROR") || !strings.Contains(log, "not after the newest archived segment") {
		t.Errorf("wal-stream under the pusher's policy logged errors, or not that it could not list:\n%s", tail(log, 20))
	}
	second := backupPush(t, pusher, primary)
	primary.Psql(t, "INSERT INTO feed VALUES (-1, 'last')")
	tables := append([]string{"feed"}, pgbenchTables...)
	want := primary.TableChecksums(t, "", tables...)
	waitArchived(t, primary)

	// The pusher's credentials cannot list or delete, and walship's
	// retention run with them fails saying why.
	for o := range pusherS3.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix + "/", Recursive: true}) {
		denied(t, "list with the pusher's credentials", o.Err)
		break
	}
	denied(t, "delete with the pusher's credentials", pusherS3.RemoveObject(ctx, bucket, prefix+"/cluster.json", minio.RemoveObjectOptions{}))
	walship(t, t.TempDir(), pusher.env, "backup-delete", "--retain-full", "1", "--confirm").
		mustFail(t, "backup-delete with the pusher's credentials", 1, "s3:ListBucket")
	// Neither the restorer nor the retention job may write.
	for name, c := range map[string]*minio.Client{"restorer": restorerS3, "retention": retentionS3} {
		_, err := c.PutObject(ctx, bucket, prefix+"/wal/intruder", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
		denied(t, "put with the "+name+"'s credentials", err)
	}
	denied(t, "delete with the restorer's credentials", restorerS3.RemoveObject(ctx, bucket, prefix+"/cluster.json", minio.RemoveObjectOptions{}))

	// Restore with the restorer's credentials: recovery reads the WAL
	// with wal-fetch until it is told "not there" (exit 1: a 404, since
	// the restorer may list) and promotes with the primary's data.
	list := walship(t, t.TempDir(), restorer.env, "backup-list", "--json")
	list.mustSucceed(t, "backup-list with the restorer's credentials")
	if !strings.Contains(list.stdout, first) || !strings.Contains(list.stdout, second) {
		t.Fatalf("backup-list does not show %s and %s:\n%s", first, second, list.stdout)
	}
	walship(t, t.TempDir(), restorer.env, "wal-verify").mustSucceed(t, "wal-verify with the restorer's credentials")
	restored := startRestored(t, restorer, 15, backupFetch(t, restorer, first), nil)
	promoted(t, restored)
	if got := restored.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored with the restorer's credentials, the tables differ:\n got %v\nwant %v", got, want)
	}
	if n := countRestored(t, restored); n == 0 {
		t.Error("recovery restored no segment with wal-fetch")
	}

	// Retention with its own credentials.
	walship(t, t.TempDir(), retention.env, "backup-delete", "--retain-full", "1", "--confirm").
		mustSucceed(t, "backup-delete with the retention credentials")
	for _, key := range retention.keys(t) {
		if strings.HasPrefix(key, "basebackups/"+first+"/") {
			t.Fatalf("%s of the deleted backup is still stored", key)
		}
	}
	list = walship(t, t.TempDir(), restorer.env, "backup-list")
	list.mustSucceed(t, "backup-list after retention")
	if strings.Contains(list.stdout, first) || !strings.Contains(list.stdout, second) {
		t.Fatalf("after backup-delete --retain-full 1, backup-list shows:\n%s", list.stdout)
	}
}

// TestS3PusherContract: the archive's promises hold for a pusher that
// may not list: an identical re-push succeeds, different content and WAL
// of another cluster are refused, and nothing is overwritten.
func TestS3PusherContract(t *testing.T) {
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	pusher, _ := role(t, srv, bucket, "synthetic", pusherPolicy)
	restorer, _ := role(t, srv, bucket, "synthetic", restorerPolicy)
	dir := dataDir(t, false)
	const sysID = 7300000000000000777
	seg := makeSegment(sysID, 1, 1, segSize16, compressible(1))
	path := writeSegment(t, dir, seg)
	walship(t, dir, pusher.env, "wal-push", path).mustSucceed(t, "first wal-push")
	if r := walship(t, dir, pusher.env, "wal-push", path); r.code != 0 || !strings.Contains(r.stderr, "identical content") {
		t.Fatalf("identical re-push: exit %d\n%s", r.code, r.stderr)
	}
	other := makeSegment(sysID, 1, 1, segSize16, compressible(2))
	walship(t, dir, pusher.env, "wal-push", writeSegment(t, dir, other)).mustFail(t, "conflicting wal-push", 1, "split brain")
	foreign := makeSegment(sysID+1, 1, 2, segSize16, compressible(3))
	walship(t, dir, pusher.env, "wal-push", writeSegment(t, dir, foreign)).mustFail(t, "foreign wal-push", 1, "another cluster")
	history := filepath.Join(dir, "pg_wal", "00000002.history")
	if err := os.WriteFile(history, []byte("1\t0/2000000\tno recovery target specified\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	walship(t, dir, pusher.env, "wal-push", history).mustSucceed(t, "wal-push of a history file")

	walship(t, dir, restorer.env, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG").mustSucceed(t, "wal-fetch")
	if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), seg.data) {
		t.Fatal("the archived segment is not the first one pushed")
	}
	missing := wal.SegmentFileName(1, 9, segSize16)
	if r := walship(t, dir, restorer.env, "wal-fetch", missing, "pg_wal/RECOVERYXLOG"); r.code != 1 {
		t.Fatalf("wal-fetch of a missing segment with the restorer's credentials: exit %d, want 1\n%s", r.code, r.stderr)
	}
	// The pusher cannot tell a missing segment from a forbidden one: a
	// fetch with its credentials must stop recovery, never say "not there".
	if r := walship(t, dir, pusher.env, "wal-fetch", missing, "pg_wal/RECOVERYXLOG"); r.code <= 125 || !strings.Contains(r.stderr, "s3:ListBucket") {
		t.Fatalf("wal-fetch of a missing segment with the pusher's credentials: exit %d, want above 125 naming s3:ListBucket\n%s", r.code, r.stderr)
	}
}

// TestS3ServerSideEncryption: with --s3-sse, what wal-push stores is
// encrypted at rest (MinIO reports it to an independent client), and
// wal-fetch returns the pushed bytes; bad settings are usage errors.
func TestS3ServerSideEncryption(t *testing.T) {
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	srv := s3test.StartWith(t, s3test.Options{KMS: true})
	b := s3Backend(t, srv)
	dir := dataDir(t, false)
	const sysID = 7300000000000000888
	for i, tc := range []struct {
		flags []string
		want  string
	}{
		{nil, ""},
		{[]string{"--s3-sse", "AES256"}, "AES256"},
		{[]string{"--s3-sse", "aws:kms", "--s3-sse-kms-key-id", s3test.KMSKeyID}, "aws:kms"},
	} {
		seg := makeSegment(sysID, 1, wal.SegNo(1+i), segSize16, incompressible(uint64(i)))
		path := writeSegment(t, dir, seg)
		walship(t, dir, b.env, append(tc.flags, "wal-push", path)...).mustSucceed(t, fmt.Sprintf("wal-push %v", tc.flags))
		bucket, _, _ := strings.Cut(strings.TrimPrefix(b.repo, "s3://"), "/")
		info, err := srv.Client().StatObject(context.Background(), bucket, "cluster/wal/"+seg.name+".zst", minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Metadata.Get("X-Amz-Server-Side-Encryption"); got != tc.want {
			t.Errorf("wal-push %v stored %s with server-side encryption %q, want %q", tc.flags, seg.name, got, tc.want)
		}
		walship(t, dir, b.env, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG").mustSucceed(t, "wal-fetch "+seg.name)
		if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), seg.data) {
			t.Fatalf("wal-fetch %s returned other bytes than were pushed", seg.name)
		}
	}
	seg := makeSegment(sysID, 1, 9, segSize16, compressible(9))
	path := writeSegment(t, dir, seg)
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--s3-sse", "aes256"}, "use AES256 or aws:kms"},
		{[]string{"--s3-sse-kms-key-id", "k"}, "needs --s3-sse aws:kms"},
	} {
		walship(t, dir, b.env, append(tc.flags, "wal-push", path)...).mustFail(t, fmt.Sprint(tc.flags), 2, tc.want)
	}
	if b.exists(t, "wal/"+seg.name+".zst") {
		t.Error("a push with invalid encryption settings stored the segment")
	}
}

// TestS3TLS: against MinIO serving HTTPS with a private certificate,
// walship fails at once with an error that names --s3-ca-file (no
// retries, no fallback to http), and round-trips a segment once the CA
// is given (flag, environment or config file). Other ways TLS can go
// wrong are refused as clearly.
func TestS3TLS(t *testing.T) {
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	srv := s3test.StartWith(t, s3test.Options{TLS: true})
	bucket := srv.NewBucket(t)
	env := append(srv.Env(), "WALSHIP_REPO=s3://"+bucket+"/cluster", "WALSHIP_S3_PATH_STYLE=true")
	dir := dataDir(t, false)
	seg := makeSegment(7300000000000000999, 1, 1, segSize16, compressible(1))
	path := writeSegment(t, dir, seg)

	r := walship(t, dir, env, "wal-push", path)
	r.mustFail(t, "wal-push without the CA", 1, "--s3-ca-file")
	if strings.Contains(r.stderr, "will retry") || r.took > 10*time.Second {
		t.Errorf("an untrusted certificate was retried (%v):\n%s", r.took, r.stderr)
	}
	if !strings.Contains(r.stderr, "authority") {
		t.Errorf("the error does not say the certificate's authority is unknown:\n%s", r.stderr)
	}

	walship(t, dir, env, "--s3-ca-file", srv.CAFile(), "wal-push", path).mustSucceed(t, "wal-push --s3-ca-file")
	walship(t, dir, append(env, "WALSHIP_S3_CA_FILE="+srv.CAFile()), "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG").
		mustSucceed(t, "wal-fetch with WALSHIP_S3_CA_FILE")
	if !bytes.Equal(readFile(t, filepath.Join(dir, "pg_wal", "RECOVERYXLOG")), seg.data) {
		t.Fatal("wal-fetch over TLS returned other bytes than were pushed")
	}
	conf := filepath.Join(t.TempDir(), "walship.conf")
	if err := os.WriteFile(conf, []byte("s3-ca-file = "+srv.CAFile()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := walship(t, dir, env, "--config", conf, "wal-push", path); r.code != 0 || !strings.Contains(r.stderr, "identical content") {
		t.Fatalf("wal-push with s3-ca-file in the config file: exit %d\n%s", r.code, r.stderr)
	}

	// The certificate names 127.0.0.1 only.
	port := srv.Endpoint()[strings.LastIndex(srv.Endpoint(), ":"):]
	walship(t, dir, env, "--s3-ca-file", srv.CAFile(), "--s3-endpoint", "https://localhost"+port, "wal-fetch", seg.name, "pg_wal/RECOVERYXLOG").
		mustFail(t, "wal-fetch from a host name the certificate does not name", 255, "not valid for host localhost")
	// An https endpoint that answers plain http is not used in clear.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request reached the plain http server: %s %s", r.Method, r.URL)
	}))
	defer plain.Close()
	walship(t, dir, env, "--s3-endpoint", "https://"+strings.TrimPrefix(plain.URL, "http://"), "wal-push", path).
		mustFail(t, "wal-push to an https endpoint that speaks http", 1, "does not answer TLS")
	// Plain http to another machine is refused before anything is sent.
	r = walship(t, dir, env, "--s3-endpoint", "http://192.0.2.10:9000", "wal-push", path)
	r.mustFail(t, "wal-push over plain http to another machine", 2, "--s3-allow-http")
	if r.took > 5*time.Second {
		t.Errorf("refusing plain http took %v: it must not try to connect", r.took)
	}
}
