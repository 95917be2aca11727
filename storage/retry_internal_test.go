package storage

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	o := DefaultRetryOptions()
	for attempt, ceiling := range map[int]time.Duration{
		1:  250 * time.Millisecond,
		2:  500 * time.Millisecond,
		4:  2 * time.Second,
		6:  8 * time.Second,
		40: 8 * time.Second,
	} {
		var longest time.Duration
		for range 2000 {
			d := o.backoff(attempt)
			if d < 0 || d > ceiling {
				t.Fatalf("backoff after attempt %d: %v, want 0..%v", attempt, d, ceiling)
			}
			longest = max(longest, d)
		}
		if longest < ceiling/2 {
			t.Errorf("backoff after attempt %d never above %v in 2000 draws; want up to %v", attempt, longest, ceiling)
		}
	}
}

func TestCopyBody(t *testing.T) {
	var w discard
	for _, tc := range []struct {
		body string
		size int64
		ok   bool
	}{
		{"abc", 3, true},
		{"", 0, true},
		{"ab", 3, false},
		{"abcd", 3, false},
		{"", -1, false},
	} {
		err := CopyBody(t.Context(), &w, strings.NewReader(tc.body), tc.size)
		if (err == nil) != tc.ok {
			t.Errorf("CopyBody(%q, %d): %v", tc.body, tc.size, err)
		}
		if err != nil && !IsPermanent(err) {
			t.Errorf("CopyBody(%q, %d): %v is not permanent", tc.body, tc.size, err)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestCopyStream(t *testing.T) {
	long := strings.Repeat("x", 1<<20+7)
	var buf strings.Builder
	n, err := CopyStream(t.Context(), &buf, io.MultiReader(strings.NewReader(long), strings.NewReader("end")))
	if err != nil || n != int64(len(long))+3 || buf.String() != long+"end" {
		t.Errorf("CopyStream of %d bytes: %d bytes, %v", len(long)+3, n, err)
	}

	lost := errors.New("connection lost")
	_, err = CopyStream(t.Context(), &buf, io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(lost)))
	if !errors.Is(err, lost) || !strings.Contains(err.Error(), "reading the stream") {
		t.Errorf("CopyStream of a failing reader: %v, want the reader's error, saying so", err)
	}

	full := errors.New("no space left on device")
	if _, err = CopyStream(t.Context(), failingWriter{full}, strings.NewReader("abc")); err != full {
		t.Errorf("CopyStream to a failing writer: %v, want the writer's error as is", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err = CopyStream(ctx, &buf, strings.NewReader("abc")); !errors.Is(err, context.Canceled) {
		t.Errorf("CopyStream with a cancelled context: %v", err)
	}
}
