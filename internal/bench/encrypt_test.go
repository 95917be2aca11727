package bench

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage/crypt"
	"github.com/walship/walship/storage/mem"
)

// TestBenchEncryption measures what client-side encryption costs:
// wal-push and wal-fetch of real pgbench WAL (zstd, file:// archive) plain,
// with an age key pair and with a passphrase, each beside the plain run;
// and the raw encrypt/decrypt rate of a 256 MiB stream in one process.
func TestBenchEncryption(t *testing.T) {
	skipUnlessBench(t)
	bin := buildWalship(t)
	segs := pgbenchWAL(t)

	keyFile := filepath.Join(t.TempDir(), "archive.key")
	if out, err := exec.Command(bin, "keygen", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	modes := []struct {
		name string
		env  []string
	}{
		{"plain", nil},
		{"age key", []string{"WALSHIP_ENCRYPT=true", "WALSHIP_DECRYPT_IDENTITY_FILE=" + keyFile}},
		{"passphrase", []string{"WALSHIP_ENCRYPT=true", "WALSHIP_ENCRYPT_PASSPHRASE=bench-passphrase-0123456789"}},
	}
	var rows []row
	var plainPush, plainFetch time.Duration
	for _, m := range modes {
		env := append([]string{"WALSHIP_REPO=file://" + pgtest.NewDir(t, "archive"), "WALSHIP_COMPRESS=zstd",
			"WALSHIP_CACHE_DIR=" + t.TempDir(), "WALSHIP_LOG_LEVEL=debug"}, m.env...)
		work := t.TempDir()
		push := timeEach(t, segs, func(seg string) *exec.Cmd {
			c := exec.Command(bin, "wal-push", seg)
			c.Env, c.Dir = append(os.Environ(), env...), work
			return c
		})
		dest := filepath.Join(work, "RECOVERYXLOG")
		fetch := timeEach(t, segs, func(seg string) *exec.Cmd {
			c := exec.Command(bin, "wal-fetch", filepath.Base(seg), dest)
			c.Env, c.Dir = append(os.Environ(), env...), work
			return c
		}, func(seg string) {
			if !sameFile(t, seg, dest) {
				t.Fatalf("%s: wal-fetch of %s returned other bytes", m.name, filepath.Base(seg))
			}
		})
		if m.name == "plain" {
			plainPush, plainFetch = push.per, fetch.per
		}
		rows = append(rows,
			row{what: "wal-push " + m.name, data: "pgbench WAL", backend: "file", codec: "zstd", per: push.per, mbps: mbps(segs, push.per), ratio: ratio(push.per, plainPush), stored: push.stored, rss: push.rss},
			row{what: "wal-fetch " + m.name, data: "pgbench WAL", backend: "file", codec: "zstd", per: fetch.per, mbps: mbps(segs, fetch.per), ratio: ratio(fetch.per, plainFetch), rss: fetch.rss})
	}
	fmt.Println("encryption: time vs the plain run of the same command (the \"time vs cp\" column holds that ratio here)")
	printTable(rows)

	// The cipher alone: a 256 MiB stream through crypt.Wrap over memory.
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 256<<20)
	rand.Read(data)
	for _, k := range []struct {
		name string
		keys crypt.Keys
	}{
		{"plain", crypt.Keys{}},
		{"age key", crypt.Keys{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}}},
	} {
		s := crypt.Wrap(mem.New(), k.keys)
		start := time.Now()
		if _, err := s.PutStream(t.Context(), "k", bytes.NewReader(data), nil); err != nil {
			t.Fatal(err)
		}
		put := time.Since(start)
		start = time.Now()
		rc, _, err := s.Get(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		// Read in 64 KiB pieces, as a restore does, not through WriteTo.
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{rc}, make([]byte, 64<<10))
		rc.Close()
		if err != nil || n != int64(len(data)) {
			t.Fatalf("read back %d bytes: %v", n, err)
		}
		get := time.Since(start)
		fmt.Printf("stream of 256 MiB in memory, %-8s: write %6.0f MB/s, read %6.0f MB/s\n", k.name,
			256/put.Seconds()*1.048576, 256/get.Seconds()*1.048576)
	}
}
