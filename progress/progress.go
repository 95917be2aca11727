// Package progress declares how long-running operations (base backups,
// restores) report how far they are. Library code takes a Reporter and
// calls it; the command line decides whether anything is drawn (a
// terminal gets a status line, cron gets nothing).
package progress

import "fmt"

// Reporter receives progress of one operation. Implementations must be
// safe for concurrent use: parallel transfers report from several
// goroutines.
type Reporter interface {
	// Start begins an operation; total is the expected number of bytes,
	// or -1 when unknown.
	Start(what string, total int64)
	// Add counts n more bytes done.
	Add(n int64)
	// Done ends the operation.
	Done()
}

// Nop is a Reporter that reports nothing.
type Nop struct{}

// Start implements Reporter.
func (Nop) Start(string, int64) {}

// Add implements Reporter.
func (Nop) Add(int64) {}

// Done implements Reporter.
func (Nop) Done() {}

// Or returns r, or Nop when r is nil.
func Or(r Reporter) Reporter {
	if r == nil {
		return Nop{}
	}
	return r
}

// Bytes formats a byte count for people: "512 B", "16.0 MiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
