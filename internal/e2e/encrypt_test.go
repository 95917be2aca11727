package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
)

// TestEncryption: an archive on MinIO that starts plain and is switched to
// client-side encryption while the primary runs. The pushing host holds
// only the public key; no object written after the switch holds the
// plaintext of a marker row (objects are stored uncompressed, so without
// encryption the marker would be there, as it is in the plain objects);
// the pushing host cannot decrypt, nor can a wrong key; a restore of the
// plain backup through mixed plain and encrypted WAL, and a restore of an
// encrypted backup, both give the primary's data.
func TestEncryption(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := s3Backend(t, s3test.Start(t))
	keys := pgtest.NewDir(t, "keys")
	keyFile := filepath.Join(keys, "archive.key")
	gen := walship(t, t.TempDir(), nil, "keygen", keyFile)
	gen.mustSucceed(t, "keygen")
	chownLikeParent(t, keyFile)
	pub := strings.TrimSpace(gen.stdout)
	if !strings.HasPrefix(pub, "age1") {
		t.Fatalf("keygen printed %q, not a public key", gen.stdout)
	}
	pubFile := filepath.Join(keys, "archive.pub")
	if err := os.WriteFile(pubFile, []byte(pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	chownLikeParent(t, pubFile)

	plainEnv := append(append([]string(nil), b.env...), "WALSHIP_COMPRESS=none")
	pusherEnv := append(append([]string(nil), plainEnv...), "WALSHIP_ENCRYPT=true", "WALSHIP_ENCRYPT_RECIPIENT_FILE="+pubFile)
	restorerEnv := append(append([]string(nil), b.env...), "WALSHIP_DECRYPT_IDENTITY_FILE="+keyFile)
	b.env = plainEnv

	// Phase 1: plain, as before encryption was turned on.
	primary := primaryFor(t, b, 15, nil)
	primary.Psql(t, "CREATE TABLE secrets (id int PRIMARY KEY, v text)")
	plainBackup := backupPush(t, b, primary)
	primary.Psql(t, "INSERT INTO secrets SELECT g, 'plain-marker-' || g FROM generate_series(1, 200) g")
	waitArchived(t, primary)
	plainKeys := map[string]bool{}
	for _, k := range b.keys(t) {
		plainKeys[k] = true
	}

	// Phase 2: the primary now pushes with the public key only.
	primary.Psql(t, fmt.Sprintf("ALTER SYSTEM SET archive_command = 'env WALSHIP_COMPRESS=none WALSHIP_ENCRYPT=true WALSHIP_ENCRYPT_RECIPIENT_FILE=%s %s wal-push %%p'", pubFile, walshipBin))
	primary.Psql(t, "SELECT pg_reload_conf()")
	// The archiver rereads its settings at its own pace: switch segments
	// until one arrives encrypted.
	waitUntil(t, time.Minute, "the archiver to use the new archive_command", func() bool {
		name := primary.Psql(t, "SELECT pg_walfile_name(pg_switch_wal())")
		primary.WaitFor(t, fmt.Sprintf("SELECT coalesce(last_archived_wal, '') >= '%s' FROM pg_stat_archiver", name), "t", time.Minute)
		return envelope(t, b, "wal/"+name) == "age"
	})
	encBackup := backupPush(t, withEnv(b, pusherEnv), primary)
	primary.Psql(t, "INSERT INTO secrets SELECT g, 'walship-secret-marker-' || g FROM generate_series(201, 400) g")
	primary.Pgbench(t, "-i", "-s", "1", "-q")
	want := primary.TableChecksums(t, "", append([]string{"secrets"}, pgbenchTables...)...)
	waitArchived(t, primary)

	// Raw objects, read with minio-go behind walship's back.
	var plainSeen, encrypted int
	for _, key := range b.keys(t) {
		body := rawObject(t, b, key)
		if plainKeys[key] {
			if bytes.Contains(body, []byte("plain-marker-")) {
				plainSeen++
			}
			continue
		}
		if bytes.Contains(body, []byte("walship-secret-marker")) {
			t.Errorf("%s holds the marker row in plaintext", key)
		}
		switch env := envelope(t, b, key); {
		case key == "cluster.json", strings.Contains(key, ".history"):
		case env == "age":
			encrypted++
		default:
			t.Errorf("%s was written after the switch but is not encrypted", key)
		}
	}
	if plainSeen == 0 {
		t.Fatal("no plain object shows the plain marker: the plaintext check proves nothing")
	}
	if encrypted < 5 {
		t.Fatalf("only %d encrypted objects", encrypted)
	}
	t.Logf("%d plain objects show their marker; %d encrypted objects show none", plainSeen, encrypted)

	// The pushing host cannot read what it pushed, nor can another key.
	seg := newestSegment(t, b)
	target := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	walship(t, t.TempDir(), pusherEnv, "wal-fetch", seg, target).mustFail(t, "wal-fetch with the public key only", 255, "--decrypt-identity-file")
	otherKey := filepath.Join(t.TempDir(), "other.key")
	walship(t, t.TempDir(), nil, "keygen", otherKey).mustSucceed(t, "keygen")
	other := strings.TrimSpace(string(readFile(t, otherKey)))
	other = other[strings.LastIndexByte(other, '\n')+1:]
	walship(t, t.TempDir(), append(append([]string(nil), b.env...), "WALSHIP_DECRYPT_IDENTITY="+other), "wal-fetch", seg, target).
		mustFail(t, "wal-fetch with another key", 255, "other keys")
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("a failed wal-fetch left %s: %v", target, err)
	}
	r := walship(t, t.TempDir(), pusherEnv, "backup-fetch", encBackup, filepath.Join(t.TempDir(), "data"))
	r.mustFail(t, "backup-fetch with the public key only", r.code, "--decrypt-identity-file")
	if r.code == 0 {
		t.Fatal("backup-fetch with the public key only succeeded")
	}

	// Restores with the key: the plain backup through plain and
	// encrypted WAL, and the encrypted backup.
	rb := withEnv(b, restorerEnv)
	for _, name := range []string{plainBackup, encBackup} {
		dir := backupFetch(t, rb, "--verify", name)
		restored := startRestored(t, rb, 15, dir, nil)
		promoted(t, restored)
		if got := restored.TableChecksums(t, "", append([]string{"secrets"}, pgbenchTables...)...); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("restore of %s differs from the primary:\n got %v\nwant %v", name, got, want)
		}
		restored.Stop(t)
	}
}

func withEnv(b backend, env []string) backend {
	b.env = env
	return b
}

// rawObject reads key's stored bytes with minio-go.
func rawObject(t *testing.T, b backend, key string) []byte {
	t.Helper()
	bucket, prefix, _ := strings.Cut(strings.TrimPrefix(b.repo, "s3://"), "/")
	obj, err := b.srv.Client().GetObject(context.Background(), bucket, prefix+"/"+key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	body, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// envelope is the encryption metadata of key ("" for a plain object).
func envelope(t *testing.T, b backend, key string) string {
	t.Helper()
	bucket, prefix, _ := strings.Cut(strings.TrimPrefix(b.repo, "s3://"), "/")
	st, err := b.srv.Client().StatObject(context.Background(), bucket, prefix+"/"+key, minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return st.UserMetadata["Walship-Envelope"]
}

// newestSegment is the newest archived WAL segment's name.
func newestSegment(t *testing.T, b backend) string {
	t.Helper()
	var last string
	for _, k := range b.keys(t) {
		name := strings.TrimPrefix(k, "wal/")
		if len(name) == 24 && name != k {
			last = name
		}
	}
	if last == "" {
		t.Fatal("no segment archived")
	}
	return last
}
