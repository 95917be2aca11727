package e2e

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/s3test"
)

// backend is an archive under test, with the means to inspect and damage
// what walship stored there without going through walship.
type backend struct {
	name string
	repo string
	// env configures walship (and a PostgreSQL server running it) for
	// this archive; credentials travel only here, never on a command line.
	env []string
	// args are global flags to put before the command.
	args []string
	// corrupt replaces the stored (compressed) body of key.
	corrupt func(t *testing.T, key string, mutate func([]byte) []byte)
	// exists reports whether key is stored.
	exists func(t *testing.T, key string) bool
	// keys lists every stored key, sorted.
	keys func(t *testing.T) []string
	// remove deletes key behind walship's back.
	remove func(t *testing.T, key string)
	srv    *s3test.Server
}

// fileBackend is a file:// archive in a directory the PostgreSQL server
// user can write.
func fileBackend(t *testing.T) backend {
	dir := pgtest.NewDir(t, "archive")
	return backend{
		name: "file",
		repo: "file://" + dir,
		env:  []string{"WALSHIP_REPO=file://" + dir},
		corrupt: func(t *testing.T, key string, mutate func([]byte) []byte) {
			path := filepath.Join(dir, filepath.FromSlash(key))
			raw := readFile(t, path)
			i := bytes.IndexByte(raw, '\n') + 1
			out := append(append([]byte(nil), raw[:i]...), mutate(append([]byte(nil), raw[i:]...))...)
			if err := os.WriteFile(path, out, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		exists: func(t *testing.T, key string) bool {
			_, err := os.Stat(filepath.Join(dir, filepath.FromSlash(key)))
			return err == nil
		},
		keys: func(t *testing.T) []string {
			var keys []string
			err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				rel, _ := filepath.Rel(dir, path)
				keys = append(keys, filepath.ToSlash(rel))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			sort.Strings(keys)
			return keys
		},
		remove: func(t *testing.T, key string) {
			if err := os.Remove(filepath.Join(dir, filepath.FromSlash(key))); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// s3Backend is a fresh bucket on srv, configured through a config file
// (as an operator would) plus credentials in the environment.
func s3Backend(t *testing.T, srv *s3test.Server) backend {
	bucket := srv.NewBucket(t)
	conf := filepath.Join(pgtest.NewDir(t, "conf"), "walship.conf")
	text := "# walship settings\nrepo = s3://" + bucket + "/cluster\ns3-endpoint = " + srv.Endpoint() + "\ns3-path-style = true\n"
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	chownLikeParent(t, conf)
	client := srv.Client()
	objectKey := func(key string) string { return "cluster/" + key }
	return backend{
		name: "s3",
		repo: "s3://" + bucket + "/cluster",
		env:  append(srv.Env(), "WALSHIP_CONFIG="+conf),
		corrupt: func(t *testing.T, key string, mutate func([]byte) []byte) {
			ctx := context.Background()
			obj, err := client.GetObject(ctx, bucket, objectKey(key), minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(obj)
			if err != nil {
				t.Fatal(err)
			}
			st, err := obj.Stat()
			if err != nil {
				t.Fatal(err)
			}
			body = mutate(body)
			// Overwrite behind walship's back, keeping its metadata.
			_, err = client.PutObject(ctx, bucket, objectKey(key), bytes.NewReader(body), int64(len(body)),
				minio.PutObjectOptions{UserMetadata: st.UserMetadata})
			if err != nil {
				t.Fatal(err)
			}
		},
		exists: func(t *testing.T, key string) bool {
			_, err := client.StatObject(context.Background(), bucket, objectKey(key), minio.StatObjectOptions{})
			if err != nil && minio.ToErrorResponse(err).StatusCode != 404 {
				t.Fatal(err)
			}
			return err == nil
		},
		keys: func(t *testing.T) []string {
			var keys []string
			for o := range client.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: "cluster/", Recursive: true}) {
				if o.Err != nil {
					t.Fatal(o.Err)
				}
				keys = append(keys, strings.TrimPrefix(o.Key, "cluster/"))
			}
			sort.Strings(keys)
			return keys
		},
		remove: func(t *testing.T, key string) {
			if err := client.RemoveObject(context.Background(), bucket, objectKey(key), minio.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		},
		srv: srv,
	}
}

// chownLikeParent gives path the owner of its directory, so a server
// running as another user can read what the test wrote there.
func chownLikeParent(t *testing.T, path string) {
	st, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if uid, gid, ok := owner(st); ok {
		if err := os.Lchown(path, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}

// backends returns the archives every scenario runs against.
func backends() []func(t *testing.T) backend {
	return []func(t *testing.T) backend{
		fileBackend,
		func(t *testing.T) backend { return s3Backend(t, s3test.Start(t)) },
	}
}
