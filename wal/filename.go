package wal

import "fmt"

// Kind is the kind of a file PostgreSQL archives.
type Kind int

// The kinds of archived files.
const (
	// KindSegment is a complete WAL segment: 000000010000000000000001.
	KindSegment Kind = iota + 1
	// KindPartial is the last, incomplete segment of a timeline that
	// ended, or one pg_receivewal is still writing:
	// 000000010000000000000001.partial.
	KindPartial
	// KindHistory is a timeline history file: 00000002.history.
	KindHistory
	// KindBackupHistory is the file PostgreSQL writes at the end of a base
	// backup, named after the segment and offset where the backup
	// started: 000000010000000000000001.00000028.backup.
	KindBackupHistory
)

// String names the kind in words, for messages.
func (k Kind) String() string {
	switch k {
	case KindSegment:
		return "WAL segment"
	case KindPartial:
		return "partial WAL segment"
	case KindHistory:
		return "timeline history file"
	case KindBackupHistory:
		return "backup history file"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// FileName is a parsed WAL-archive file name.
//
// For segments, partial segments and backup history files, TLI, Log and Seg
// are the three 8-hex-digit parts of the 24-character segment name; for
// history files only TLI is set. Offset is the byte offset of a backup
// history file (the part before ".backup") and zero otherwise.
type FileName struct {
	Kind     Kind
	TLI      TimeLineID
	Log, Seg uint32
	Offset   uint32
}

// Lengths of the parts of archived file names.
const (
	segmentNameLen = 24
	partialSuffix  = ".partial"
	historySuffix  = ".history"
	backupSuffix   = ".backup"
	historyNameLen = 8 + len(historySuffix)
	partialNameLen = segmentNameLen + len(partialSuffix)
	backupNameLen  = segmentNameLen + 1 + 8 + len(backupSuffix)
)

// ParseFileName parses the name of a file PostgreSQL archives, accepting
// exactly:
//
//	000000010000000000000001                 a WAL segment
//	000000010000000000000001.partial         a partial segment
//	00000002.history                         a timeline history file
//	000000010000000000000001.00000028.backup a backup history file
//
// with uppercase hexadecimal digits and a timeline other than 0. Anything
// else (paths, lowercase, other lengths or suffixes) is an error matching
// ErrInvalidName whose text says what a valid name looks like.
func ParseFileName(name string) (FileName, error) {
	var f FileName
	ok := false
	switch len(name) {
	case segmentNameLen:
		f, ok = parseSegmentName(name)
		f.Kind = KindSegment
	case partialNameLen:
		if name[segmentNameLen:] == partialSuffix {
			f, ok = parseSegmentName(name[:segmentNameLen])
			f.Kind = KindPartial
		}
	case historyNameLen:
		if name[8:] == historySuffix {
			var tli uint32
			tli, ok = parseHex8(name[:8])
			f = FileName{Kind: KindHistory, TLI: TimeLineID(tli)}
		}
	case backupNameLen:
		if name[segmentNameLen] == '.' && name[segmentNameLen+9:] == backupSuffix {
			f, ok = parseSegmentName(name[:segmentNameLen])
			f.Kind = KindBackupHistory
			off, offOK := parseHex8(name[segmentNameLen+1 : segmentNameLen+9])
			ok = ok && offOK
			f.Offset = off
		}
	}
	if !ok {
		return FileName{}, invalid(ErrInvalidName, fmt.Sprintf(
			"invalid WAL file name %s: want a WAL segment name of 24 uppercase hexadecimal digits such as 000000010000000000000001, "+
				"optionally followed by .partial, a timeline history name such as 00000002.history, "+
				"or a backup history name such as 000000010000000000000001.00000028.backup",
			quote(name)))
	}
	if f.TLI == 0 {
		return FileName{}, invalid(ErrInvalidName, fmt.Sprintf(
			"invalid WAL file name %s: timeline 0 does not exist (timelines start at 1, as in 00000001...)", quote(name)))
	}
	return f, nil
}

func parseSegmentName(s string) (FileName, bool) {
	tli, ok1 := parseHex8(s[0:8])
	log, ok2 := parseHex8(s[8:16])
	seg, ok3 := parseHex8(s[16:24])
	return FileName{TLI: TimeLineID(tli), Log: log, Seg: seg}, ok1 && ok2 && ok3
}

// parseHex8 parses exactly eight uppercase hexadecimal digits, the only
// spelling PostgreSQL writes (%08X).
func parseHex8(s string) (uint32, bool) {
	if len(s) != 8 {
		return 0, false
	}
	var v uint32
	for i := 0; i < 8; i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | uint32(c-'0')
		case 'A' <= c && c <= 'F':
			v = v<<4 | uint32(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// String returns the canonical file name, the exact text ParseFileName
// accepted. It returns "" for a FileName whose Kind is not one of the four
// kinds.
func (f FileName) String() string {
	switch f.Kind {
	case KindSegment:
		return f.SegmentName()
	case KindPartial:
		return f.SegmentName() + partialSuffix
	case KindHistory:
		return HistoryFileName(f.TLI)
	case KindBackupHistory:
		return fmt.Sprintf("%s.%08X%s", f.SegmentName(), f.Offset, backupSuffix)
	}
	return ""
}

// SegmentName returns the 24-character segment name the file belongs to
// (timeline, log and segment parts), or "" for a timeline history file.
// pg_archivecleanup compares files by this part.
func (f FileName) SegmentName() string {
	switch f.Kind {
	case KindSegment, KindPartial, KindBackupHistory:
		return fmt.Sprintf("%08X%08X%08X", uint32(f.TLI), f.Log, f.Seg)
	}
	return ""
}

// SegNo returns the number of the segment the file belongs to, for a
// cluster with the given segment size: Log*(4 GB/segSize) + Seg, as
// PostgreSQL's XLogFromFileName. It fails for history files, for an invalid
// segment size, and when Seg is too large to exist with that segment size
// (the name then cannot come from such a cluster; the error matches
// ErrInvalidName).
func (f FileName) SegNo(segSize int64) (SegNo, error) {
	switch f.Kind {
	case KindSegment, KindPartial, KindBackupHistory:
	default:
		return 0, fmt.Errorf("%s is a %s, not part of a WAL segment", f.String(), f.Kind)
	}
	if err := CheckSegmentSize(segSize); err != nil {
		return 0, err
	}
	per := segmentsPerLog(segSize)
	if uint64(f.Seg) >= per {
		return 0, invalid(ErrInvalidName, fmt.Sprintf(
			"invalid WAL file name %s: with %s segments the last 8 digits of a segment name go up to %08X, not %08X; is the WAL segment size right?",
			quote(f.String()), formatSize(segSize), per-1, f.Seg))
	}
	return SegNo(uint64(f.Log)*per + uint64(f.Seg)), nil
}

// StartLSN returns where the file starts in the WAL: the first byte of the
// segment for segments and partial segments, and the backup's start
// position for backup history files. It fails like SegNo, and for a backup
// history file whose offset lies outside a segment of segSize.
func (f FileName) StartLSN(segSize int64) (LSN, error) {
	seg, err := f.SegNo(segSize)
	if err != nil {
		return 0, err
	}
	if int64(f.Offset) >= segSize {
		return 0, invalid(ErrInvalidName, fmt.Sprintf(
			"invalid WAL file name %s: offset %08X lies beyond the end of a %s segment; is the WAL segment size right?",
			quote(f.String()), f.Offset, formatSize(segSize)))
	}
	return SegmentStartLSN(seg, segSize) + LSN(f.Offset), nil
}

// SegmentFile returns the parsed name of segment seg on timeline tli. It
// panics if segSize is invalid or seg lies beyond the LSN space.
func SegmentFile(tli TimeLineID, seg SegNo, segSize int64) FileName {
	mustSegmentSize(segSize)
	checkSegNo(seg, segSize)
	per := segmentsPerLog(segSize)
	return FileName{
		Kind: KindSegment,
		TLI:  tli,
		Log:  uint32(uint64(seg) / per),
		Seg:  uint32(uint64(seg) % per),
	}
}

// SegmentFileName returns the file name of segment seg on timeline tli,
// such as 000000010000000000000001 (PostgreSQL's XLogFileName). It panics
// if segSize is invalid or seg lies beyond the LSN space.
func SegmentFileName(tli TimeLineID, seg SegNo, segSize int64) string {
	return SegmentFile(tli, seg, segSize).String()
}

// HistoryFileName returns the name of timeline tli's history file, such as
// 00000002.history (PostgreSQL's TLHistoryFileName).
func HistoryFileName(tli TimeLineID) string {
	return fmt.Sprintf("%08X%s", uint32(tli), historySuffix)
}

// BackupHistoryFileName returns the name of the backup history file of a
// base backup that started at start on timeline tli, such as
// 000000010000000000000004.00000028.backup (PostgreSQL's
// BackupHistoryFileName). It panics if segSize is invalid.
func BackupHistoryFileName(tli TimeLineID, start LSN, segSize int64) string {
	f := SegmentFile(tli, LSNToSegNo(start, segSize), segSize)
	f.Kind = KindBackupHistory
	f.Offset = uint32(SegmentOffset(start, segSize))
	return f.String()
}

// ArchiveLess orders the names of archived files the way recovery needs
// them: timeline history files first, then by position in the WAL (a
// .partial or .backup file with its segment), then by timeline. Names
// that are not WAL file names go last.
func ArchiveLess(a, b string) bool { return archiveKey(a) < archiveKey(b) }

func archiveKey(name string) string {
	f, err := ParseFileName(name)
	switch {
	case err != nil:
		return "2" + name
	case f.Kind == KindHistory:
		return "0" + name
	}
	return "1" + name[8:segmentNameLen] + name[:8] + name[segmentNameLen:]
}
