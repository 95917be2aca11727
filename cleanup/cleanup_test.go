package cleanup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/mem"
)

const pgArchiveCleanup = "/usr/lib/postgresql/15/bin/pg_archivecleanup"

// names makes a varied set of archive file names: segments of several
// timelines, .partial, .backup, .history, names with an extension, and
// names that only look like WAL.
func names(r *rand.Rand, ext string) []string {
	set := map[string]bool{}
	seg := func() string {
		return fmt.Sprintf("%08X%08X%08X", 1+r.IntN(3), r.IntN(3), r.IntN(12))
	}
	for i := 0; i < 60; i++ {
		var n string
		switch r.IntN(10) {
		case 0:
			n = seg() + ".partial"
		case 1:
			n = fmt.Sprintf("%s.%08X.backup", seg(), r.IntN(1<<20))
		case 2:
			n = fmt.Sprintf("%08X.history", 1+r.IntN(4))
		case 3:
			n = strings.ToLower(seg())
		case 4:
			n = seg()[:23]
		case 5:
			n = seg() + ".tmp"
		default:
			n = seg()
		}
		if ext != "" && r.IntN(4) != 0 {
			n += ext
		}
		set[n] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func oldestArgs(r *rand.Rand, ext string) []string {
	var args []string
	for i := 0; i < 6; i++ {
		s := fmt.Sprintf("%08X%08X%08X", 1+r.IntN(3), r.IntN(3), r.IntN(12))
		args = append(args, s, s+".partial", s+".00000028.backup")
		if ext != "" {
			args = append(args, s+ext)
		}
	}
	return append(args, "00000002.history", "garbage", strings.ToLower(args[0]))
}

func makeDir(t *testing.T, files []string) string {
	dir := t.TempDir()
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func survivors(t *testing.T, dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// TestDifferentialDir: walship's --dir form keeps and prints exactly what
// PostgreSQL's pg_archivecleanup does, for many file sets and arguments,
// with and without -x.
func TestDifferentialDir(t *testing.T) {
	if _, err := os.Stat(pgArchiveCleanup); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pg_archivecleanup missing: %v", err)
		}
		t.Skip("pg_archivecleanup not installed (make deps)")
	}
	r := rand.New(rand.NewPCG(7, 7))
	cases := 0
	for round := 0; round < 25; round++ {
		ext := []string{"", ".gz", ".zst"}[round%3]
		files := names(r, ext)
		for _, arg := range oldestArgs(r, ext) {
			cases++
			theirs := makeDir(t, files)
			argv := []string{}
			if ext != "" {
				argv = append(argv, "-x", ext)
			}
			cmd := exec.Command(pgArchiveCleanup, append(argv, theirs, arg)...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			theirErr := cmd.Run()

			ours := makeDir(t, files)
			_, ourErr := Dir(ours, arg, DirOptions{Ext: ext})
			if (theirErr != nil) != (ourErr != nil) {
				t.Fatalf("ext %q arg %q: pg_archivecleanup error %v (%s), walship error %v", ext, arg, theirErr, stderr.String(), ourErr)
			}
			if got, want := survivors(t, ours), survivors(t, theirs); !slices.Equal(got, want) {
				t.Fatalf("ext %q arg %q: walship kept %v\npg_archivecleanup kept %v", ext, arg, got, want)
			}

			// -n prints the same paths.
			if theirErr == nil {
				dry := makeDir(t, files)
				out, err := exec.Command(pgArchiveCleanup, append(argv, "-n", dry, arg)...).Output()
				if err != nil {
					t.Fatal(err)
				}
				var ourOut bytes.Buffer
				if _, err := Dir(dry, arg, DirOptions{Ext: ext, DryRun: true, Out: &ourOut}); err != nil {
					t.Fatal(err)
				}
				if got, want := sortedLines(ourOut.String()), sortedLines(string(out)); !slices.Equal(got, want) {
					t.Fatalf("-n ext %q arg %q: walship printed %v, pg_archivecleanup %v", ext, arg, got, want)
				}
			}
		}
	}
	t.Logf("%d cases agree with pg_archivecleanup", cases)
}

func sortedLines(s string) []string {
	lines := strings.Fields(s)
	sort.Strings(lines)
	return lines
}

// TestDifferentialArchive: on a walship archive (codec extensions on the
// keys) the surviving WAL names equal pg_archivecleanup's on a directory
// of the same names.
func TestDifferentialArchive(t *testing.T) {
	if _, err := os.Stat(pgArchiveCleanup); err != nil {
		t.Skip("pg_archivecleanup not installed (make deps)")
	}
	r := rand.New(rand.NewPCG(9, 9))
	for round := 0; round < 20; round++ {
		var files []string
		for _, n := range names(r, "") {
			if isSegment(n) || isPartial(n) || isBackupHistory(n) || strings.HasSuffix(n, ".history") && len(n) == 16 {
				files = append(files, n) // only names wal-push accepts
			}
		}
		for _, arg := range oldestArgs(r, "") {
			theirs := makeDir(t, files)
			if exec.Command(pgArchiveCleanup, theirs, arg).Run() != nil {
				continue
			}
			s := mem.New()
			ctx := context.Background()
			for i, f := range files {
				key := "wal/" + f + []string{".zst", ".gz", ""}[i%3]
				if err := s.Put(ctx, key, bytes.NewReader(nil), 0, nil); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := Archive(ctx, s, arg, ArchiveOptions{}); err != nil {
				t.Fatal(err)
			}
			var got []string
			s.List(ctx, "wal/", func(o storage.ObjectInfo) error {
				name := strings.TrimPrefix(o.Key, "wal/")
				name = strings.TrimSuffix(strings.TrimSuffix(name, ".zst"), ".gz")
				got = append(got, name)
				return nil
			})
			sort.Strings(got)
			if want := survivors(t, theirs); !slices.Equal(got, want) {
				t.Fatalf("arg %q: archive kept %v\npg_archivecleanup kept %v", arg, got, want)
			}
		}
	}
}

// TestArchiveKeepsBackupWAL: WAL a completed base backup needs survives
// an OLDEST past it.
func TestArchiveKeepsBackupWAL(t *testing.T) {
	ctx := context.Background()
	s := mem.New()
	for seg := 1; seg <= 9; seg++ {
		key := fmt.Sprintf("wal/%08X%08X%08X.zst", 1, 0, seg)
		s.Put(ctx, key, bytes.NewReader(nil), 0, nil)
	}
	meta := []byte(`{"name":"base_1","start_wal":"000000010000000000000004","stop_wal":"000000010000000000000005"}`)
	sum := sha256.Sum256(meta)
	err := s.Put(ctx, "basebackups/base_1/backup.json", bytes.NewReader(meta), int64(len(meta)),
		map[string]string{"walship-sha256": hex.EncodeToString(sum[:]), "walship-size": fmt.Sprint(len(meta))})
	if err != nil {
		t.Fatal(err)
	}
	removed, err := Archive(ctx, s, "000000010000000000000008", ArchiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"wal/000000010000000000000001.zst", "wal/000000010000000000000002.zst", "wal/000000010000000000000003.zst"}
	if !slices.Equal(removed, want) {
		t.Fatalf("removed %v, want %v (the backup needs 4 on)", removed, want)
	}
}
