package stream

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/wal"
)

// Status is what wal-stream reports about itself: in the spool's status
// file, on --status, and as Prometheus metrics.
type Status struct {
	PID        int            `json:"pid"`
	Server     string         `json:"server"` // host:port streamed from
	State      string         `json:"state"`  // "streaming", "connecting", "stopped"
	Timeline   wal.TimeLineID `json:"timeline"`
	Received   wal.LSN        `json:"received_lsn"` // written to the spool
	Flushed    wal.LSN        `json:"flushed_lsn"`  // durable in the spool, as reported to the server
	ServerEnd  wal.LSN        `json:"server_lsn"`   // the server's WAL end, from its last message
	LagBytes   int64          `json:"lag_bytes"`    // server_lsn - flushed_lsn
	Archived   string         `json:"archived_segment"`
	Pending    int            `json:"segments_pending"` // complete segments not archived yet
	Updated    time.Time      `json:"updated"`
	LastError  string         `json:"last_error,omitempty"`
	Reconnects int            `json:"reconnects"`
}

// statusBoard holds the current status for the status file and metrics.
type statusBoard struct {
	mu     sync.Mutex
	st     Status
	fileMu sync.Mutex // one writer of the status file at a time
}

func (b *statusBoard) update(fn func(*Status)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn(&b.st)
	if b.st.ServerEnd > b.st.Flushed {
		b.st.LagBytes = int64(b.st.ServerEnd - b.st.Flushed)
	} else {
		b.st.LagBytes = 0
	}
	b.st.Updated = time.Now().UTC()
}

func (b *statusBoard) get() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st
}

// write replaces the status file atomically, with mode m.File.
func (b *statusBoard) write(path string, m pgperm.Modes) error {
	b.fileMu.Lock()
	defer b.fileMu.Unlock()
	data, err := json.MarshalIndent(b.get(), "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := m.WriteFile(tmp, append(data, '\n')); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadStatus reads the status file of the wal-stream using spool dir.
func ReadStatus(dir string) (Status, error) {
	data, err := os.ReadFile(dir + "/" + statusName)
	if err != nil {
		return Status{}, fmt.Errorf("no wal-stream status in %s: %w", dir, err)
	}
	var st Status
	if err := json.Unmarshal(data, &st); err != nil {
		return Status{}, fmt.Errorf("wal-stream status in %s: %w", dir, err)
	}
	return st, nil
}

// ServeHTTP writes the metrics in Prometheus' text format.
func (b *statusBoard) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	WriteMetrics(w, b.get())
}

// WriteMetrics writes st in Prometheus' text format.
func WriteMetrics(w io.Writer, st Status) {
	up := 0
	if st.State == "streaming" {
		up = 1
	}
	for _, m := range []struct {
		name, help string
		v          any
	}{
		{"walship_stream_up", "1 while streaming from the server", up},
		{"walship_stream_timeline", "timeline being received", st.Timeline},
		{"walship_stream_received_lsn_bytes", "WAL position written to the spool", uint64(st.Received)},
		{"walship_stream_flushed_lsn_bytes", "WAL position durable in the spool and reported to the server", uint64(st.Flushed)},
		{"walship_stream_server_lsn_bytes", "the server's WAL end from its last message", uint64(st.ServerEnd)},
		{"walship_stream_lag_bytes", "server WAL end minus flushed position", st.LagBytes},
		{"walship_stream_segments_pending", "complete segments not archived yet", st.Pending},
		{"walship_stream_reconnects_total", "connections lost and re-established", st.Reconnects},
		{"walship_stream_updated_seconds", "time of the last status change", st.Updated.Unix()},
	} {
		kind := "gauge"
		if m.name == "walship_stream_reconnects_total" {
			kind = "counter"
		}
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", m.name, m.help, m.name, kind, m.name, m.v)
	}
}
