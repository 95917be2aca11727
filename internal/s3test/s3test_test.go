package s3test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

func TestServer(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Endpoint(), "http://127.0.0.1:") {
		t.Errorf("Endpoint() = %q, want http://127.0.0.1:PORT", s.Endpoint())
	}
	env := strings.Join(s.Env(), "\n")
	for _, want := range []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey(),
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey(),
		"AWS_REGION=us-east-1",
		"AWS_ENDPOINT_URL=" + s.Endpoint(),
		"AWS_EC2_METADATA_DISABLED=true",
	} {
		if !strings.Contains(env, want+"\n") && !strings.HasSuffix(env, want) {
			t.Errorf("Env() lacks %s:\n%s", want, env)
		}
	}

	b1, b2 := s.NewBucket(t), s.NewBucket(t)
	if b1 == b2 {
		t.Fatalf("NewBucket returned %q twice", b1)
	}
	c := s.Client()
	if _, err := c.PutObject(t.Context(), b1, "k", bytes.NewReader([]byte("kept")), 4, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	hc := &http.Client{Timeout: time.Second}
	s.Stop(t)
	if s.healthy(hc) {
		t.Fatal("server still answers after Stop")
	}
	s.Stop(t) // stopping a stopped server is a no-op

	s.Restart(t)
	if got := read(t, c, b1, "k"); got != "kept" {
		t.Errorf("after Restart the object holds %q, want %q", got, "kept")
	}

	s.Pause(t)
	if s.healthy(&http.Client{Timeout: 300 * time.Millisecond}) {
		t.Error("a paused server answered")
	}
	s.Resume(t)
	if !s.healthy(hc) {
		t.Error("a resumed server does not answer")
	}
}

func read(t *testing.T, c *minio.Client, bucket, key string) string {
	t.Helper()
	obj, err := c.GetObject(t.Context(), bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMinIOPath(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "minio")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WALSHIP_MINIO", notExec)
	if _, err := minioPath(); err == nil || errors.Is(err, errNoMinIO) {
		t.Errorf("WALSHIP_MINIO naming a non-executable file: %v, want an error that names it", err)
	}
	if err := os.Chmod(notExec, 0o755); err != nil {
		t.Fatal(err)
	}
	if p, err := minioPath(); err != nil || p != notExec {
		t.Errorf("minioPath() = %q, %v; want %q", p, err, notExec)
	}
}

// TestMissingMinIO runs Start in a child test process that can find no
// minio binary: it must skip, but fail under CI=true.
func TestMissingMinIO(t *testing.T) {
	if os.Getenv("S3TEST_MISSING_MINIO_CHILD") == "1" {
		Start(t)
		t.Fatal("Start returned without a minio binary")
	}
	for _, ci := range []string{"", "true"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingMinIO$", "-test.v")
		cmd.Env = append(os.Environ(),
			"S3TEST_MISSING_MINIO_CHILD=1",
			"WALSHIP_MINIO=",
			"PATH=",
			"GOPATH="+t.TempDir(),
			"CI="+ci,
		)
		out, err := cmd.CombinedOutput()
		if !bytes.Contains(out, []byte("make deps")) {
			t.Errorf("CI=%q: output does not tell to run make deps:\n%s", ci, out)
		}
		switch {
		case ci == "" && (err != nil || !bytes.Contains(out, []byte("--- SKIP"))):
			t.Errorf("without CI: %v, want a skipped test:\n%s", err, out)
		case ci == "true" && (err == nil || !bytes.Contains(out, []byte("--- FAIL"))):
			t.Errorf("with CI=true: %v, want a failed test:\n%s", err, out)
		}
	}
}
