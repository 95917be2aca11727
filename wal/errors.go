package wal

import (
	"errors"
	"strconv"
)

// Sentinel errors, matched with errors.Is. The messages of the errors that
// match them say what exactly is wrong; the sentinels only classify.
var (
	// ErrInvalidName reports a file name outside the grammar of archived
	// WAL, history and backup history files (or, given a segment size, a
	// segment number that cannot exist). PostgreSQL never sends such a
	// name, so it is a usage error.
	ErrInvalidName = errors.New("invalid WAL file name")
	// ErrInvalidLSN reports text that is not an LSN.
	ErrInvalidLSN = errors.New("invalid LSN")
	// ErrInvalidSegmentSize reports a WAL segment size PostgreSQL cannot use.
	ErrInvalidSegmentSize = errors.New("invalid WAL segment size")
	// ErrInvalidHeader reports bytes that are not the start of the WAL
	// segment they claim to be: too short, unknown magic, wrong page
	// address, segment size or timeline.
	ErrInvalidHeader = errors.New("invalid WAL segment header")
	// ErrInvalidHistory reports a malformed timeline history file.
	ErrInvalidHistory = errors.New("invalid timeline history file")
)

// invalidError carries a complete one-line message and matches one of the
// sentinels above, so the message need not repeat the sentinel's text.
type invalidError struct {
	kind error
	msg  string
}

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == e.kind }

func invalid(kind error, msg string) error { return &invalidError{kind: kind, msg: msg} }

// quote quotes untrusted input for an error message, shortened so that a
// huge argument cannot flood a log line.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
