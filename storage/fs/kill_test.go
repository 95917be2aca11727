package fs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/storage"
)

const killHelperEnv = "WALSHIP_FS_KILL_HELPER_DIR"

// killBody is what the helper process stores: 4 MiB, delivered slowly so
// that a kill lands in the middle of the write as often as after it.
func killBody() []byte {
	b := make([]byte, 4<<20)
	for i := range b {
		b[i] = byte(i*7 + i>>12)
	}
	return b
}

type slowReader struct{ r *bytes.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return s.r.Read(p[:min(len(p), 64<<10)])
}

func (s slowReader) Seek(off int64, whence int) (int64, error) { return s.r.Seek(off, whence) }

// TestKillHelper is the process TestKillDuringPut kills; it does nothing
// in a normal test run.
func TestKillHelper(t *testing.T) {
	dir := os.Getenv(killHelperEnv)
	if dir == "" {
		t.Skip("helper process for TestKillDuringPut")
	}
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := killBody()
	for i := 0; ; i++ {
		key := fmt.Sprintf("wal/%024X", i)
		meta := map[string]string{"walship-n": fmt.Sprint(i)}
		// Put and PutStream in turn: they share the path to the disk,
		// and both must survive a kill.
		if i%2 == 0 {
			err = s.Put(t.Context(), key, slowReader{bytes.NewReader(data)}, int64(len(data)), meta)
		} else {
			_, err = s.PutStream(t.Context(), key, slowReader{bytes.NewReader(data)}, meta)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A process killed at any moment of a Put or PutStream leaves either no
// object or the complete one, and nothing half-written is listed.
func TestKillDuringPut(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	s := newTest(t)
	want := sha256.Sum256(killBody())
	for round := range 6 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillHelper$")
		cmd.Env = append(os.Environ(), killHelperEnv+"="+s.dir)
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(150+round*37) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		var keys []string
		if err := s.List(t.Context(), "", func(oi storage.ObjectInfo) error {
			keys = append(keys, oi.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, key := range keys {
			rc, info, err := s.Get(t.Context(), key)
			if err != nil {
				t.Fatalf("round %d: %s: %v", round, key, err)
			}
			h := sha256.New()
			n, err := io.Copy(h, rc)
			rc.Close()
			if err != nil || n != int64(len(killBody())) || [32]byte(h.Sum(nil)) != want || info.Metadata["walship-n"] == "" {
				t.Errorf("round %d: %s is incomplete after a kill: %d bytes, %v, metadata %v", round, key, n, err, info.Metadata)
			}
		}
		entries, _ := os.ReadDir(filepath.Join(s.dir, "wal"))
		t.Logf("round %d: killed after %d complete objects; wal/ holds %d entries including temporary files", round, len(keys), len(entries))
		// Start the next round on an empty archive, so each round's
		// helper is caught at a different point of its first Puts.
		for _, key := range keys {
			if err := s.Delete(t.Context(), key); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Stat(t.Context(), fmt.Sprintf("wal/%024X", len(keys))); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("round %d: the object being written when killed is visible: %v", round, err)
		}
	}
}
