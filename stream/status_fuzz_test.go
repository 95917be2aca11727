package stream

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzReadStatus reads arbitrary status files (wal-stream --status reads
// the file another process wrote). A file is refused with a one-line error
// or read into a status that is written back identically, and whose
// Prometheus metrics are the same fixed lines whatever its text fields
// hold.
func FuzzReadStatus(f *testing.F) {
	b := &statusBoard{}
	b.update(func(st *Status) {
		*st = Status{PID: 4242, Server: "primary.internal:5432", State: "streaming", Timeline: 2,
			Received: 0x6000100, Flushed: 0x6000000, ServerEnd: 0x6000200, Archived: "000000020000000000000005",
			Pending: 1, LastError: "connection reset\nby peer", Reconnects: 3}
	})
	// As the status file is written.
	real, err := json.MarshalIndent(b.get(), "", "  ")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append(real, '\n'))
	f.Add([]byte(`{"received_lsn":"0/XYZ"}`))
	f.Add([]byte(`{"timeline":-1,"updated":"now"}`))
	f.Add([]byte(`{"state":"streaming\n# TYPE evil gauge\nevil 1","lag_bytes":-9223372036854775808}`))
	f.Add([]byte(``))
	dir := f.TempDir()
	path := filepath.Join(dir, statusName)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := ReadStatus(dir)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		first, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		var again Status
		if err := json.Unmarshal(first, &again); err != nil {
			t.Fatalf("%s does not read back: %v", first, err)
		}
		if second, _ := json.Marshal(again); !bytes.Equal(first, second) {
			t.Fatalf("round trip:\n%s\nbecame\n%s", first, second)
		}
		var m, want bytes.Buffer
		WriteMetrics(&m, st)
		WriteMetrics(&want, Status{Updated: time.Unix(0, 0)})
		if strings.Count(m.String(), "\n") != strings.Count(want.String(), "\n") {
			t.Fatalf("metrics of %+v:\n%s", st, m.String())
		}
	})
}
