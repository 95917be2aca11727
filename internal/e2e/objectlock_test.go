package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
	"github.com/walship/walship/wal"
)

// TestObjectLock: an archive written with --object-lock-days into a
// bucket with Object Lock, by a real PostgreSQL and walship backup-push.
// Every object carries the retention (read back with minio-go); a
// backup-delete of a backup under retention is refused with one line that
// says until when and leaves the archive as it was, and the backup still
// lists, verifies and restores to the primary's data; deleting a version
// with minio-go is refused too, and so is a different segment pushed
// under an archived name. Settings that cannot work are refused with a
// clear error, and without --object-lock-days nothing changes.
func TestObjectLock(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	srv := s3test.Start(t)
	t.Run("locked archive", func(t *testing.T) { lockedArchive(t, srv) })
	t.Run("settings", func(t *testing.T) { lockSettings(t, srv) })
	t.Run("without object lock", func(t *testing.T) { withoutLock(t, srv) })
}

// bucketBackend is an archive under prefix cluster/ of bucket, set up
// through a config file holding conf besides the repository settings.
func bucketBackend(t *testing.T, srv *s3test.Server, bucket, conf string) backend {
	path := filepath.Join(pgtest.NewDir(t, "conf"), "walship.conf")
	text := "repo = s3://" + bucket + "/cluster\ns3-endpoint = " + srv.Endpoint() + "\ns3-path-style = true\n" + conf
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	chownLikeParent(t, path)
	client := srv.Client()
	return backend{
		name: "s3",
		repo: "s3://" + bucket + "/cluster",
		env:  append(srv.Env(), "WALSHIP_CONFIG="+path),
		keys: func(t *testing.T) []string {
			var keys []string
			for o := range client.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: "cluster/", Recursive: true}) {
				if o.Err != nil {
					t.Fatal(o.Err)
				}
				keys = append(keys, strings.TrimPrefix(o.Key, "cluster/"))
			}
			slices.Sort(keys)
			return keys
		},
		srv: srv,
	}
}

// objectVersions lists every version and delete marker under cluster/,
// as "key version" or "key marker", sorted.
func objectVersions(t *testing.T, srv *s3test.Server, bucket string) []string {
	t.Helper()
	var out []string
	for o := range srv.Client().ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: "cluster/", Recursive: true, WithVersions: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		v := o.VersionID
		if o.IsDeleteMarker {
			v = "marker"
		}
		out = append(out, strings.TrimPrefix(o.Key, "cluster/")+" "+v)
	}
	slices.Sort(out)
	return out
}

// versionsOfKeys keeps the entries of after ("key version") whose key is
// one of before's: the primary goes on archiving new segments meanwhile,
// which is not what a comparison is about.
func versionsOfKeys(after, before []string) []string {
	keys := map[string]bool{}
	for _, e := range before {
		k, _, _ := strings.Cut(e, " ")
		keys[k] = true
	}
	var out []string
	for _, e := range after {
		if k, _, _ := strings.Cut(e, " "); keys[k] {
			out = append(out, e)
		}
	}
	return out
}

// lockOf reads the Object Lock retention of key's current version.
func lockOf(t *testing.T, srv *s3test.Server, bucket, key string) (string, time.Time) {
	t.Helper()
	mode, until, err := srv.Client().GetObjectRetention(context.Background(), bucket, "cluster/"+key, "")
	if err != nil {
		t.Fatalf("retention of %s: %v", key, err)
	}
	if mode == nil || until == nil {
		t.Fatalf("%s has no retention", key)
	}
	return string(*mode), *until
}

func lockedArchive(t *testing.T, srv *s3test.Server) {
	bucket := srv.NewLockedBucket(t)
	// From the config file, as an operator would set it for every host.
	b := bucketBackend(t, srv, bucket, "object-lock-days = 1\n")
	run := func(args ...string) result { return walship(t, t.TempDir(), b.env, args...) }

	start := time.Now()
	primary := primaryFor(t, b, 15, nil)
	primary.Psql(t, "CREATE TABLE feed (id int)")
	primary.Pgbench(t, "-i", "-s", "2", "-q")
	first := backupPush(t, b, primary)
	primary.Psql(t, "INSERT INTO feed VALUES (1)")
	primary.Pgbench(t, "-T", "2", "-c", "2")
	waitArchived(t, primary)
	second := backupPush(t, b, primary)
	primary.Psql(t, "INSERT INTO feed VALUES (2)")
	waitArchived(t, primary)
	tables := append([]string{"feed"}, pgbenchTables...)
	want := primary.TableChecksums(t, "", tables...)

	// Every object is locked in compliance mode for a day from its upload.
	keys := b.keys(t)
	var segs int
	for _, key := range keys {
		mode, until := lockOf(t, srv, bucket, key)
		if mode != "COMPLIANCE" || until.Before(start.Add(24*time.Hour-time.Minute)) || until.After(time.Now().Add(24*time.Hour+time.Minute)) {
			t.Errorf("%s is locked %s until %v, want COMPLIANCE for a day from its upload", key, mode, until)
		}
		if strings.HasPrefix(key, "wal/") && len(key) == len("wal/")+24+len(".zst") {
			segs++
		}
	}
	if segs < 3 || !slices.Contains(keys, "basebackups/"+first+"/backup.json") || !slices.Contains(keys, "cluster.json") {
		t.Fatalf("archive holds %v", keys)
	}
	versionsBefore := objectVersions(t, srv, bucket)

	// Retention would delete the first backup: Object Lock refuses.
	r := run("backup-delete", "--retain-full", "1", "--confirm")
	_, metaUntil := lockOf(t, srv, bucket, "basebackups/"+first+"/backup.json")
	var objects int
	for _, key := range keys {
		if strings.HasPrefix(key, "basebackups/"+first+"/") {
			objects++
		}
	}
	wantMsg := fmt.Sprintf("backup %s: %d objects are under Object Lock retention until %s (compliance); delete after that", first, objects, metaUntil.UTC().Format(time.RFC3339))
	r.mustFail(t, "backup-delete of a locked backup", 1, wantMsg)
	t.Logf("backup-delete: %s", strings.TrimSpace(r.stderr))
	if after := versionsOfKeys(objectVersions(t, srv, bucket), versionsBefore); !slices.Equal(after, versionsBefore) {
		t.Fatalf("a refused backup-delete changed the archive (a delete marker hides an object without freeing it):\nbefore %v\nafter  %v", versionsBefore, after)
	}

	// wal-cleanup is refused the same way for the WAL before the backups.
	newest := ""
	for _, key := range keys {
		if strings.HasPrefix(key, "wal/") && len(key) == len("wal/")+24+len(".zst") {
			newest = strings.TrimSuffix(strings.TrimPrefix(key, "wal/"), ".zst")
		}
	}
	r = run("wal-cleanup", newest)
	r.mustFail(t, "wal-cleanup of locked WAL", 1, "under Object Lock retention until")
	// Older than the first backup's start: WAL it needs is kept anyway.
	if !regexp.MustCompile(`removed 0 of (\d+) WAL files older than 0000000100000000000000\w\w; (\d+) are refused: 0000000100000000000000\w\w is under`).MatchString(r.stderr) {
		t.Errorf("wal-cleanup does not say what stays:\n%s", r.stderr)
	}
	if after := versionsOfKeys(objectVersions(t, srv, bucket), versionsBefore); !slices.Equal(after, versionsBefore) {
		t.Fatalf("a refused wal-cleanup changed the archive:\nbefore %v\nafter  %v", versionsBefore, after)
	}

	// The backup is still whole: listed, no gap, and it restores.
	list := run("backup-list", "--json")
	list.mustSucceed(t, "backup-list")
	var backups []struct{ Name string }
	if err := json.Unmarshal([]byte(list.stdout), &backups); err != nil {
		t.Fatalf("backup-list --json: %v\n%s", err, list.stdout)
	}
	if len(backups) != 2 || backups[0].Name != first || backups[1].Name != second {
		t.Fatalf("backup-list after the refused delete: %s", list.stdout)
	}
	run("wal-verify").mustSucceed(t, "wal-verify after the refused delete")
	restored := startRestored(t, b, 15, backupFetch(t, b, "--verify", first), nil)
	promoted(t, restored)
	if got := restored.TableChecksums(t, "", tables...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s restored after the refused delete differs from the primary:\n got %v\nwant %v", first, got, want)
	}

	// Deleting a version directly is refused too, even asking to bypass
	// governance retention.
	meta := "cluster/basebackups/" + first + "/backup.json"
	var version string
	for o := range srv.Client().ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: meta, WithVersions: true}) {
		version = o.VersionID
	}
	err := srv.Client().RemoveObject(context.Background(), bucket, meta, minio.RemoveObjectOptions{VersionID: version, GovernanceBypass: true})
	if err == nil {
		t.Fatalf("minio-go deleted version %s of %s under compliance retention", version, meta)
	}
	t.Logf("minio-go delete of a version: %v", err)

	// A different segment under an archived name is refused, and stores
	// no new version.
	sysID, err := strconv.ParseUint(primary.Psql(t, "SELECT system_identifier FROM pg_control_system()"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	fn, err := wal.ParseFileName(newest)
	if err != nil {
		t.Fatal(err)
	}
	segNo, err := fn.SegNo(segSize16)
	if err != nil {
		t.Fatal(err)
	}
	dir := dataDir(t, false)
	other := makeSegment(sysID, fn.TLI, segNo, segSize16, incompressible(42))
	walship(t, dir, b.env, "wal-push", writeSegment(t, dir, other)).mustFail(t, "wal-push of a different segment", 1, "split brain")
	if after := versionsOfKeys(objectVersions(t, srv, bucket), versionsBefore); !slices.Equal(after, versionsBefore) {
		t.Fatalf("a refused overwrite changed the archive:\nbefore %v\nafter  %v", versionsBefore, after)
	}
}

// lockSettings: the environment variables work; a file:// archive, a
// bucket without Object Lock and an unknown mode are refused clearly.
func lockSettings(t *testing.T, srv *s3test.Server) {
	const sysID = 7300000000000000002
	dir := dataDir(t, false)
	seg := makeSegment(sysID, 1, 1, segSize16, compressible(1))
	path := writeSegment(t, dir, seg)

	file := fileBackend(t)
	walship(t, dir, file.env, "--object-lock-days", "1", "wal-push", path).
		mustFail(t, "Object Lock on a file archive", 2, "a file:// archive cannot lock objects")

	plain := bucketBackend(t, srv, srv.NewBucket(t), "")
	walship(t, dir, append(plain.env, "WALSHIP_OBJECT_LOCK_DAYS=1"), "wal-push", path).
		mustFail(t, "Object Lock on a bucket without it", 1, "has no Object Lock configuration: create it with object locking, or drop --object-lock-days")
	if keys := plain.keys(t); len(keys) != 0 {
		t.Fatalf("a refused push stored %v", keys)
	}
	walship(t, dir, plain.env, "--object-lock-days", "1", "--object-lock-mode", "strict", "wal-push", path).
		mustFail(t, "unknown Object Lock mode", 2, `strict\": use compliance or governance`)

	bucket := srv.NewLockedBucket(t)
	locked := bucketBackend(t, srv, bucket, "")
	walship(t, dir, append(locked.env, "WALSHIP_OBJECT_LOCK_DAYS=2", "WALSHIP_OBJECT_LOCK_MODE=governance"), "wal-push", path).
		mustSucceed(t, "wal-push with Object Lock from the environment")
	mode, until := lockOf(t, srv, bucket, "wal/"+seg.name+".zst")
	if mode != "GOVERNANCE" || until.Sub(time.Now().Add(48*time.Hour)).Abs() > 5*time.Minute {
		t.Fatalf("pushed segment locked %s until %v, want GOVERNANCE for two days", mode, until)
	}
	// PostgreSQL retries a push after a crash: the same segment again
	// succeeds.
	walship(t, dir, append(locked.env, "WALSHIP_OBJECT_LOCK_DAYS=2"), "wal-push", path).mustSucceed(t, "identical re-push")
}

// withoutLock: without --object-lock-days, objects carry no retention;
// wal-cleanup frees what it removes, on a plain bucket and on a versioned
// one (where it removes every version, not just hides the objects).
func withoutLock(t *testing.T, srv *s3test.Server) {
	const sysID = 7300000000000000003
	for _, versioned := range []bool{false, true} {
		bucket := srv.NewBucket(t)
		if versioned {
			bucket = srv.NewVersionedBucket(t)
		}
		b := bucketBackend(t, srv, bucket, "")
		dir := dataDir(t, false)
		var names []string
		for n := 1; n <= 4; n++ {
			seg := makeSegment(sysID, 1, wal.SegNo(n), segSize16, compressible(uint64(n)))
			walship(t, dir, b.env, "wal-push", writeSegment(t, dir, seg)).mustSucceed(t, "wal-push")
			names = append(names, seg.name)
		}
		if _, _, err := srv.Client().GetObjectRetention(context.Background(), bucket, "cluster/wal/"+names[0]+".zst", ""); err == nil {
			t.Errorf("an object pushed without --object-lock-days has a retention")
		}
		walship(t, dir, b.env, "wal-cleanup", names[2]).mustSucceed(t, "wal-cleanup")
		var left []string
		for _, v := range objectVersions(t, srv, bucket) {
			key, _, _ := strings.Cut(v, " ")
			left = append(left, key)
		}
		want := []string{"cluster.json", "wal/" + names[2] + ".zst", "wal/" + names[3] + ".zst"}
		if !slices.Equal(left, want) {
			t.Errorf("versioned %v: after wal-cleanup %s the bucket holds versions of %v, want %v", versioned, names[2], left, want)
		}
	}
}
