package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/walship/walship/progress"
)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// newReporter returns a status-line reporter on a terminal and a silent
// one otherwise (cron, PostgreSQL's log), where the summary log line is
// enough.
func (a *app) newReporter() progress.Reporter {
	f, ok := a.stderr.(*os.File)
	if !ok || !isTerminal(f) {
		return progress.Nop{}
	}
	return &statusLine{w: f}
}

// statusLine draws "what: done / total (rate, ETA)" on one terminal line,
// at most a few times a second.
type statusLine struct {
	w io.Writer

	mu      sync.Mutex
	what    string
	total   int64
	done    int64
	started time.Time
	drawn   time.Time
}

func (s *statusLine) Start(what string, total int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.what, s.total, s.done, s.started = what, total, 0, time.Now()
}

func (s *statusLine) Add(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done += n
	if time.Since(s.drawn) >= 250*time.Millisecond {
		s.draw()
	}
}

func (s *statusLine) Done() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draw()
	fmt.Fprintln(s.w)
}

func (s *statusLine) draw() {
	s.drawn = time.Now()
	elapsed := time.Since(s.started).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(s.done) / elapsed
	}
	line := fmt.Sprintf("%s: %s", s.what, progress.Bytes(s.done))
	if s.total > 0 {
		pct := min(100, 100*float64(s.done)/float64(s.total))
		line += fmt.Sprintf(" / %s (%.0f%%)", progress.Bytes(s.total), pct)
		if rate > 0 && s.done < s.total {
			eta := time.Duration(float64(s.total-s.done)/rate) * time.Second
			line += fmt.Sprintf(", ETA %s", eta.Round(time.Second))
		}
	}
	line += fmt.Sprintf(", %s/s", progress.Bytes(int64(rate)))
	fmt.Fprintf(s.w, "\r\033[K%s", line)
}
