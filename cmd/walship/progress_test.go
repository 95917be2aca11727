package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestStatusLine(t *testing.T) {
	var buf bytes.Buffer
	s := &statusLine{w: &buf}
	s.Start("backup-push base_x", 4<<20)
	s.started = time.Now().Add(-2 * time.Second) // 1 MiB in 2 s
	s.Add(1 << 20)
	s.Done()
	out := buf.String()
	for _, want := range []string{"backup-push base_x: 1.0 MiB / 4.0 MiB (25%)", "ETA 6s", "512.0 KiB/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("status line %q lacks %q", out, want)
		}
	}
	if !strings.HasSuffix(out, "\n") {
		t.Error("Done does not end the line")
	}
}
