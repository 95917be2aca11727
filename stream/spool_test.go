package stream

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/wal"
)

const seg16 = 16 << 20

func TestSpoolLock(t *testing.T) {
	dir := t.TempDir()
	sp, err := openSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openSpool(dir); !errors.Is(err, ErrBusy) {
		t.Fatalf("second open: %v, want ErrBusy", err)
	}
	sp.close()
	sp, err = openSpool(dir)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	sp.close()
}

// TestSpoolSegment: a segment is written into a full-size .partial,
// completed into ready/, and the spool's contents give the resume point.
func TestSpoolSegment(t *testing.T) {
	dir := t.TempDir()
	sp, err := openSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	start := wal.SegmentStartLSN(3, seg16)
	sf, err := sp.openSegment(1, start+100, seg16)
	if err != nil {
		t.Fatal(err)
	}
	if sf.start != start || sf.name.String() != "000000010000000000000003" {
		t.Fatalf("segment %s at %s", sf.name, sf.start)
	}
	payload := bytes.Repeat([]byte("w"), 1000)
	if err := sf.writeAt(payload, start); err != nil {
		t.Fatal(err)
	}
	if err := sf.sync(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "000000010000000000000003.partial"))
	if err != nil || st.Size() != seg16 {
		t.Fatalf("the .partial is not full size: %v %v", st, err)
	}
	complete, partial, err := sp.contents()
	if err != nil || len(complete) != 0 || len(partial) != 1 {
		t.Fatalf("contents %v %v %v", complete, partial, err)
	}
	if err := sf.writeAt(make([]byte, seg16-1000), start+1000); err != nil {
		t.Fatal(err)
	}
	if _, err := sp.complete(sf); err != nil {
		t.Fatal(err)
	}
	if err := sp.moveReady("000000010000000000000003"); err != nil {
		t.Fatal(err)
	}
	if err := sp.writeReady("00000002.history", []byte("1\t0/3000060\tno recovery target specified\n")); err != nil {
		t.Fatal(err)
	}
	ready, err := sp.readyFiles()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ready, []string{"00000002.history", "000000010000000000000003"}) {
		t.Fatalf("ready files %v: the history file must come first", ready)
	}
	complete, partial, err = sp.contents()
	if err != nil || len(complete) != 1 || len(partial) != 0 {
		t.Fatalf("contents after completion %v %v %v", complete, partial, err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, readyDir, "000000010000000000000003"))
	if !bytes.Equal(got[:1000], payload) || len(got) != seg16 {
		t.Fatal("the completed segment does not hold what was written")
	}
}

// TestSpoolRecover: complete segments left at the top and .partial files
// before the start point go to ready/; the .partial at the start stays.
func TestSpoolRecover(t *testing.T) {
	dir := t.TempDir()
	sp, err := openSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	for _, name := range []string{"000000010000000000000004", "000000010000000000000002.partial", "000000010000000000000005.partial", "junk"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.recover(wal.SegmentStartLSN(5, seg16), seg16); err != nil {
		t.Fatal(err)
	}
	ready, _ := sp.readyFiles()
	if !slices.Equal(ready, []string{"000000010000000000000002.partial", "000000010000000000000004"}) {
		t.Fatalf("ready %v", ready)
	}
	if _, err := os.Stat(filepath.Join(dir, "000000010000000000000005.partial")); err != nil {
		t.Fatal("the .partial being resumed was moved")
	}
}

func TestMetrics(t *testing.T) {
	b := &statusBoard{}
	b.update(func(s *Status) { s.State = "streaming"; s.Flushed = 100; s.ServerEnd = 350; s.Timeline = 2 })
	var out strings.Builder
	WriteMetrics(&out, b.get())
	for _, want := range []string{"walship_stream_up 1\n", "walship_stream_lag_bytes 250\n", "walship_stream_timeline 2\n", "# TYPE walship_stream_reconnects_total counter\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, out.String())
		}
	}
	dir := t.TempDir()
	if err := b.write(filepath.Join(dir, statusName), pgperm.Owner()); err != nil {
		t.Fatal(err)
	}
	st, err := ReadStatus(dir)
	if err != nil || st.LagBytes != 250 || st.State != "streaming" {
		t.Fatalf("ReadStatus: %+v %v", st, err)
	}
}

// TestSpoolModes: what wal-stream creates in its spool is 0700/0600
// whatever the umask, and takes the modes of a data directory it sits in.
func TestSpoolModes(t *testing.T) {
	for _, tc := range []struct {
		inDataDir os.FileMode // 0: not in a data directory
		dir, file os.FileMode
	}{
		{0, 0o700, 0o600},
		{0o700, 0o700, 0o600},
		{0o750, 0o750, 0o640},
	} {
		for _, mask := range []int{0o022, 0o077, 0o000} {
			root := t.TempDir()
			if tc.inDataDir != 0 {
				os.Mkdir(filepath.Join(root, "global"), 0o700)
				os.WriteFile(filepath.Join(root, "PG_VERSION"), []byte("15\n"), 0o600)
				os.Chmod(root, tc.inDataDir)
			}
			dir := filepath.Join(root, "walship", "spool")
			old := syscall.Umask(mask)
			sp, err := openSpool(dir)
			if err == nil {
				var sf *segmentFile
				sf, err = sp.openSegment(1, wal.SegmentStartLSN(3, seg16), seg16)
				if err == nil {
					_, err = sp.complete(sf)
				}
			}
			if err == nil {
				err = sp.moveReady("000000010000000000000003")
			}
			if err == nil {
				_, err = sp.openSegment(1, wal.SegmentStartLSN(4, seg16), seg16)
			}
			if err == nil {
				err = sp.writeReady("00000002.history", []byte("1\t0/3000060\tno recovery target specified\n"))
			}
			if err == nil {
				err = (&statusBoard{}).write(sp.path(statusName), sp.modes)
			}
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			sp.close()
			for path, want := range map[string]os.FileMode{
				"..":                                   os.ModeDir | tc.dir,
				".":                                    os.ModeDir | tc.dir,
				lockName:                               tc.file,
				statusName:                             tc.file,
				"000000010000000000000004.partial":     tc.file,
				readyDir:                               os.ModeDir | tc.dir,
				readyDir + "/000000010000000000000003": tc.file,
				readyDir + "/00000002.history":         tc.file,
			} {
				fi, err := os.Stat(filepath.Join(dir, path))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != want {
					t.Errorf("data directory %04o, umask %04o: %s has mode %v, want %v", tc.inDataDir, mask, path, fi.Mode(), want)
				}
			}
		}
	}
}
