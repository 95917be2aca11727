package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/waltest"
	"github.com/walship/walship/wal"
)

// TestSettingsPrecedence: command line beats environment beats config
// file, seen through the codec extension of the stored object.
func TestSettingsPrecedence(t *testing.T) {
	archiveDir := t.TempDir()
	conf := filepath.Join(t.TempDir(), "walship.conf")
	os.WriteFile(conf, []byte("# comment\nrepo = file://"+archiveDir+"\ncompress = gzip   # inline comment\n"), 0o600)
	t.Setenv("WALSHIP_CACHE_DIR", t.TempDir())

	push := func(seg wal.SegNo, args ...string) {
		t.Helper()
		name, data := waltest.Segment(7300000000000000001, 1, seg, 16<<20, nil)
		path := filepath.Join(t.TempDir(), name)
		os.WriteFile(path, data, 0o600)
		var stderr bytes.Buffer
		argv := append(append([]string{"walship", "--config", conf}, args...), "wal-push", path)
		if code := run(argv, &bytes.Buffer{}, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	}
	stored := func(seg wal.SegNo, ext string) {
		t.Helper()
		if _, err := os.Stat(filepath.Join(archiveDir, "wal", wal.SegmentFileName(1, seg, 16<<20)+ext)); err != nil {
			t.Fatalf("segment %d not stored with extension %q: %v", seg, ext, err)
		}
	}
	push(1)
	stored(1, ".gz")
	t.Setenv("WALSHIP_COMPRESS", "s2")
	push(2)
	stored(2, ".s2")
	push(3, "--compress", "none")
	stored(3, "")
}

func TestConfigFileErrors(t *testing.T) {
	for what, text := range map[string]string{
		"unknown key": "repository = file:///x\n",
		"no equals":   "repo file:///x\n",
		"bad value":   "storage-retries = many\n",
	} {
		t.Run(what, func(t *testing.T) {
			conf := filepath.Join(t.TempDir(), "walship.conf")
			os.WriteFile(conf, []byte(text), 0o600)
			var stderr bytes.Buffer
			code := run([]string{"walship", "--config", conf, "wal-push", "x"}, &bytes.Buffer{}, &stderr)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d: %s", code, exitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), "line 1") {
				t.Fatalf("error does not name the line: %s", stderr.String())
			}
		})
	}
}
