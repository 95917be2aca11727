package wal

import (
	"fmt"
	"strconv"
	"strings"
)

// HistoryEntry is one line of a timeline history file: timeline TLI ended
// at SwitchPoint, where its child timeline branched off. Reason is the free
// text PostgreSQL wrote after it (such as "no recovery target specified").
type HistoryEntry struct {
	TLI         TimeLineID
	SwitchPoint LSN
	Reason      string
}

// ParseHistory parses the content of a timeline history file
// (NNNNNNNN.history) the way PostgreSQL's readTimeLineHistory reads it: one
// entry per line, "parentTLI<TAB>switchpoint<TAB>reason"; blank lines and
// lines starting with # (after leading white space) are skipped. Entries
// are returned in file order, oldest timeline first.
//
// Fields may be separated by any run of spaces and tabs, and the reason may
// be missing, as PostgreSQL allows. A line whose timeline or switch point
// does not parse, a timeline 0, timelines that do not increase from line to
// line and NUL bytes are errors matching ErrInvalidHistory, naming the
// line. An empty file is valid and has no entries.
func ParseHistory(data []byte) ([]HistoryEntry, error) {
	var entries []HistoryEntry
	text := string(data)
	for n := 1; text != ""; n++ {
		line, rest, _ := strings.Cut(text, "\n")
		text = rest
		bad := func(why string) ([]HistoryEntry, error) {
			return nil, invalid(ErrInvalidHistory, fmt.Sprintf(
				"invalid timeline history file: line %d %s: %s", n, quote(line), why))
		}
		if strings.IndexByte(line, 0) >= 0 {
			return bad("contains a NUL byte")
		}
		s := strings.TrimLeft(line, " \t\v\f\r")
		if s == "" || s[0] == '#' {
			continue
		}
		tliText, s := cutField(s)
		lsnText, s := cutField(s)
		tli, err := strconv.ParseUint(tliText, 10, 32)
		if err != nil {
			return bad(fmt.Sprintf("want a decimal parent timeline, a switch point LSN and a reason, such as %q", historyExample))
		}
		if tli == 0 {
			return bad("timeline 0 does not exist")
		}
		lsn, err := ParseLSN(lsnText)
		if err != nil {
			return bad(fmt.Sprintf("want a switch point LSN such as 0/3000000 after the timeline, as in %q", historyExample))
		}
		if k := len(entries); k > 0 && TimeLineID(tli) <= entries[k-1].TLI {
			return bad(fmt.Sprintf("timeline %d does not follow timeline %d; timelines must increase from line to line", tli, entries[k-1].TLI))
		}
		entries = append(entries, HistoryEntry{
			TLI:         TimeLineID(tli),
			SwitchPoint: lsn,
			Reason:      strings.TrimSpace(s),
		})
	}
	return entries, nil
}

// historyExample is a line as PostgreSQL writes it, for error messages.
const historyExample = "1\t0/3000000\tno recovery target specified"

// cutField splits s at its first run of spaces or tabs.
func cutField(s string) (field, rest string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimLeft(s[i:], " \t")
}

// CheckHistory reports whether entries, parsed from the history file of
// timeline tli, describe ancestors of tli: PostgreSQL refuses a history
// whose timelines are not all older than the file's own.
func CheckHistory(tli TimeLineID, entries []HistoryEntry) error {
	if tli == 0 {
		return invalid(ErrInvalidHistory, "invalid timeline history: timeline 0 does not exist")
	}
	for _, e := range entries {
		if e.TLI >= tli {
			return invalid(ErrInvalidHistory, fmt.Sprintf(
				"invalid timeline history of timeline %d (%s): it lists timeline %d, which is not older",
				tli, HistoryFileName(tli), e.TLI))
		}
	}
	return nil
}

// TimelineAt returns the timeline that wrote lsn, given the history of
// timeline current (PostgreSQL's tliOfPointInHistory): the first entry whose
// switch point lies after lsn, or current itself. A switch point belongs to
// the child timeline.
func TimelineAt(history []HistoryEntry, current TimeLineID, lsn LSN) TimeLineID {
	for _, e := range history {
		if lsn < e.SwitchPoint {
			return e.TLI
		}
	}
	return current
}
