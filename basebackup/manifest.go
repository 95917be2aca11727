package basebackup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/walship/walship/wal"
)

// Manifest is PostgreSQL's backup_manifest (PostgreSQL 13 and newer): the
// files of a base backup with their sizes and checksums, and the WAL the
// backup needs. Its format is described in PostgreSQL's documentation,
// "Backup Manifest Format"; walship reads it as pg_verifybackup does.
type Manifest struct {
	Version int // 1, or 2 from PostgreSQL 17
	// SystemIdentifier is the database system the backup was taken of;
	// manifests of version 2 only, else 0.
	SystemIdentifier uint64
	Files            []ManifestFile
	WALRanges        []WALRange
	// Checksum is the manifest's own SHA-256 (Manifest-Checksum), in
	// lower-case hexadecimal.
	Checksum string
}

// ManifestFile is one file of a base backup.
type ManifestFile struct {
	// Path is relative to the data directory, with slashes, decoded from
	// Encoded-Path when the manifest had to hex-encode it; tablespace
	// files are below pg_tblspc/<oid>/.
	Path         string
	Size         int64
	LastModified string // as the server wrote it, e.g. "2026-11-22 03:17:30 GMT"
	// Algorithm is NONE, CRC32C, SHA224, SHA256, SHA384 or SHA512.
	Algorithm string
	// Checksum is lower-case hexadecimal, "" with NONE. A CRC32C is
	// written as PostgreSQL does: the bytes of the 32-bit value in the
	// server's byte order (so "8a744722" for the CRC-32C 0x2247748a on
	// little-endian machines).
	Checksum string
}

// WALRange is WAL the backup needs to become consistent: from Start to End
// on one timeline.
type WALRange struct {
	Timeline   wal.TimeLineID
	Start, End wal.LSN
}

// ErrInvalidManifest marks a backup manifest that cannot be parsed or
// whose own checksum does not match.
var ErrInvalidManifest = errors.New("invalid backup manifest")

// manifestChecksumSize maps each checksum algorithm to the bytes of its
// checksum.
func manifestChecksumSize(algorithm string) (int, bool) {
	switch algorithm {
	case "NONE":
		return 0, true
	case "CRC32C":
		return crc32.Size, true
	case "SHA224":
		return sha256.Size224, true
	case "SHA256":
		return sha256.Size, true
	case "SHA384":
		return sha512.Size384, true
	case "SHA512":
		return sha512.Size, true
	}
	return 0, false
}

// ParseManifest parses a backup_manifest and checks its own checksum: the
// SHA-256 of everything up to the last line, which holds the checksum.
// Like pg_verifybackup it requires the version first and the checksum
// last, and refuses unknown fields, duplicate paths and malformed values;
// it also refuses paths that would lead out of the data directory.
func ParseManifest(data []byte) (Manifest, error) {
	p := manifestParser{data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()
	m, err := p.parse()
	if err != nil {
		return Manifest{}, err
	}

	// Everything up to and including the second-to-last newline is
	// covered; the last line holds the checksum itself.
	if !bytes.HasSuffix(data, []byte("\n")) {
		return Manifest{}, fmt.Errorf("%w: the last line does not end with a newline (truncated?)", ErrInvalidManifest)
	}
	covered := bytes.LastIndexByte(data[:len(data)-1], '\n')
	if covered < 0 {
		return Manifest{}, fmt.Errorf("%w: expected at least 2 lines", ErrInvalidManifest)
	}
	sum := sha256.Sum256(data[:covered+1])
	want, err := hex.DecodeString(m.Checksum)
	if err != nil || len(want) != sha256.Size {
		return Manifest{}, fmt.Errorf("%w: Manifest-Checksum %q is not a SHA-256 in hexadecimal", ErrInvalidManifest, m.Checksum)
	}
	if !bytes.Equal(sum[:], want) {
		return Manifest{}, fmt.Errorf("%w: manifest checksum mismatch: the manifest says %s but its content has %x; the manifest is damaged or was edited",
			ErrInvalidManifest, m.Checksum, sum)
	}
	m.Checksum = strings.ToLower(m.Checksum)
	return m, nil
}

// manifestParser walks the manifest's JSON tokens, following the states of
// PostgreSQL's parser (src/common/parse_manifest.c).
type manifestParser struct {
	data []byte
	dec  *json.Decoder
}

// fail reports a problem at the current position, by line.
func (p *manifestParser) fail(format string, args ...any) error {
	off := min(int(p.dec.InputOffset()), len(p.data))
	line := 1 + bytes.Count(p.data[:off], []byte("\n"))
	return fmt.Errorf("%w: line %d: %s", ErrInvalidManifest, line, fmt.Sprintf(format, args...))
}

func (p *manifestParser) token() (json.Token, error) {
	tok, err := p.dec.Token()
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return nil, p.fail("manifest ended unexpectedly (truncated?)")
	}
	if err != nil {
		return nil, p.fail("%v", err)
	}
	return tok, nil
}

func (p *manifestParser) delim(want json.Delim) error {
	tok, err := p.token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return p.fail("expected %s, found %s", describeToken(want), describeToken(tok))
	}
	return nil
}

// key returns the next object key, or "" at the end of the object.
func (p *manifestParser) key() (string, error) {
	tok, err := p.token()
	if err != nil {
		return "", err
	}
	switch t := tok.(type) {
	case string:
		return t, nil
	case json.Delim:
		if t == '}' {
			return "", nil
		}
	}
	return "", p.fail("unexpected %v", describeToken(tok))
}

// scalar returns a string or number value as its text, the way
// PostgreSQL's parser takes either.
func (p *manifestParser) scalar(field string) (string, error) {
	tok, err := p.token()
	if err != nil {
		return "", err
	}
	switch t := tok.(type) {
	case string:
		return t, nil
	case json.Number:
		return t.String(), nil
	}
	return "", p.fail("%s: expected a string or a number, found %v", field, describeToken(tok))
}

func describeToken(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		return strconv.Quote(t.String())
	case string:
		return strconv.Quote(t)
	case nil:
		return "null"
	}
	return fmt.Sprint(tok)
}

func (p *manifestParser) parse() (Manifest, error) {
	var m Manifest
	if !utf8.Valid(p.data) {
		return m, fmt.Errorf("%w: not valid UTF-8", ErrInvalidManifest)
	}
	if err := p.delim('{'); err != nil {
		return m, err
	}
	k, err := p.key()
	if err != nil {
		return m, err
	}
	if k != "PostgreSQL-Backup-Manifest-Version" {
		return m, p.fail("expected the version indicator PostgreSQL-Backup-Manifest-Version first, found %q: is this a backup_manifest?", k)
	}
	v, err := p.scalar(k)
	if err != nil {
		return m, err
	}
	switch v {
	case "1", "2":
		m.Version = int(v[0] - '0')
	default:
		return m, p.fail("unexpected manifest version %q: walship knows versions 1 and 2 (PostgreSQL 13 to 18)", v)
	}

	seen := map[string]bool{}
	sawSystemID := false
	for {
		k, err := p.key()
		if err != nil {
			return m, err
		}
		switch k {
		case "":
			return m, p.fail("the manifest has no Manifest-Checksum")
		case "System-Identifier":
			v, err := p.scalar(k)
			if err != nil {
				return m, err
			}
			if m.SystemIdentifier, err = strconv.ParseUint(v, 10, 64); err != nil {
				return m, p.fail("system identifier %q is not an integer", v)
			}
			sawSystemID = true
		case "Files":
			if err := p.delim('['); err != nil {
				return m, err
			}
			for p.dec.More() {
				f, err := p.file()
				if err != nil {
					return m, err
				}
				if seen[f.Path] {
					return m, p.fail("duplicate path name in backup manifest: %q", f.Path)
				}
				seen[f.Path] = true
				m.Files = append(m.Files, f)
			}
			if err := p.delim(']'); err != nil {
				return m, err
			}
		case "WAL-Ranges":
			if err := p.delim('['); err != nil {
				return m, err
			}
			for p.dec.More() {
				r, err := p.walRange()
				if err != nil {
					return m, err
				}
				m.WALRanges = append(m.WALRanges, r)
			}
			if err := p.delim(']'); err != nil {
				return m, err
			}
		case "Manifest-Checksum":
			if m.Checksum, err = p.scalar(k); err != nil {
				return m, err
			}
			if k, err := p.key(); err != nil {
				return m, err
			} else if k != "" {
				return m, p.fail("field %q after Manifest-Checksum, which must be the last field", k)
			}
			if _, err := p.dec.Token(); err != io.EOF {
				return m, p.fail("text after the end of the manifest")
			}
			switch {
			case m.Version >= 2 && !sawSystemID:
				return m, p.fail("a version %d manifest must have a System-Identifier", m.Version)
			case m.Version == 1 && sawSystemID:
				return m, p.fail("a version 1 manifest has no System-Identifier")
			}
			return m, nil
		default:
			return m, p.fail("unrecognized top-level field %q", k)
		}
	}
}

func (p *manifestParser) file() (ManifestFile, error) {
	var f ManifestFile
	if err := p.delim('{'); err != nil {
		return f, err
	}
	var pathName, encoded, size, algorithm, checksum *string
	for {
		k, err := p.key()
		if err != nil {
			return f, err
		}
		if k == "" {
			break
		}
		v, err := p.scalar(k)
		if err != nil {
			return f, err
		}
		switch k {
		case "Path":
			pathName = &v
		case "Encoded-Path":
			encoded = &v
		case "Size":
			size = &v
		case "Last-Modified":
			f.LastModified = v
		case "Checksum-Algorithm":
			algorithm = &v
		case "Checksum":
			checksum = &v
		default:
			return f, p.fail("unexpected file field %q", k)
		}
	}

	switch {
	case pathName == nil && encoded == nil:
		return f, p.fail("file without a path name")
	case pathName != nil && encoded != nil:
		return f, p.fail("file with both a path name and an encoded path name")
	case pathName != nil:
		f.Path = *pathName
	default:
		raw, err := hex.DecodeString(*encoded)
		if err != nil {
			return f, p.fail("could not decode file name %q", *encoded)
		}
		f.Path = string(raw)
	}
	if !safeManifestPath(f.Path) {
		return f, p.fail("path %q is not a relative path inside the data directory", f.Path)
	}
	if size == nil {
		return f, p.fail("%q: missing size", f.Path)
	}
	n, err := strconv.ParseInt(*size, 10, 64)
	if err != nil || n < 0 {
		return f, p.fail("%q: file size %q is not an integer", f.Path, *size)
	}
	f.Size = n

	f.Algorithm = "NONE"
	if algorithm != nil {
		f.Algorithm = strings.ToUpper(*algorithm)
	} else if checksum != nil {
		return f, p.fail("%q: checksum without algorithm", f.Path)
	}
	want, ok := manifestChecksumSize(f.Algorithm)
	if !ok {
		return f, p.fail("%q: unrecognized checksum algorithm %q", f.Path, *algorithm)
	}
	if checksum != nil {
		f.Checksum = strings.ToLower(*checksum)
	}
	if b, err := hex.DecodeString(f.Checksum); err != nil || len(b) != want {
		return f, p.fail("%q: invalid %s checksum %q: want %d hexadecimal digits", f.Path, f.Algorithm, f.Checksum, 2*want)
	}
	return f, nil
}

// safeManifestPath accepts the clean relative paths PostgreSQL writes,
// and nothing that could name a file outside the data directory.
func safeManifestPath(p string) bool {
	return p != "" && p != "." && !strings.ContainsRune(p, 0) &&
		path.Clean(p) == p && !path.IsAbs(p) && p != ".." && !strings.HasPrefix(p, "../")
}

func (p *manifestParser) walRange() (WALRange, error) {
	var r WALRange
	if err := p.delim('{'); err != nil {
		return r, err
	}
	var tli, start, end *string
	for {
		k, err := p.key()
		if err != nil {
			return r, err
		}
		if k == "" {
			break
		}
		v, err := p.scalar(k)
		if err != nil {
			return r, err
		}
		switch k {
		case "Timeline":
			tli = &v
		case "Start-LSN":
			start = &v
		case "End-LSN":
			end = &v
		default:
			return r, p.fail("unexpected WAL range field %q", k)
		}
	}
	switch {
	case tli == nil:
		return r, p.fail("WAL range without a timeline")
	case start == nil:
		return r, p.fail("WAL range without a start LSN")
	case end == nil:
		return r, p.fail("WAL range without an end LSN")
	}
	n, err := strconv.ParseUint(*tli, 10, 32)
	if err != nil || n == 0 {
		return r, p.fail("WAL range timeline %q is not a timeline number", *tli)
	}
	r.Timeline = wal.TimeLineID(n)
	if r.Start, err = wal.ParseLSN(*start); err != nil {
		return r, p.fail("WAL range start: %v", err)
	}
	if r.End, err = wal.ParseLSN(*end); err != nil {
		return r, p.fail("WAL range end: %v", err)
	}
	if r.End < r.Start {
		return r, p.fail("WAL range on timeline %d ends at %s, before its start %s", r.Timeline, r.End, r.Start)
	}
	return r, nil
}

// manifestIgnored are the paths pg_verifybackup leaves out of the
// comparison, with everything below them: the manifest itself, WAL (not
// part of the manifest), and the files that setting up recovery creates
// or changes (pg_basebackup -R, walship backup-fetch); and walship's own
// marker of a restore in progress.
func manifestIgnored(rel string) bool {
	for _, p := range []string{"backup_manifest", "pg_wal", "postgresql.auto.conf", "recovery.signal", "standby.signal", IncompleteMarker} {
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return true
		}
	}
	return false
}

// maxReportedProblems is how many problems a ManifestMismatchError spells
// out.
const maxReportedProblems = 20

// ManifestMismatchError lists what VerifyDataDir found wrong.
type ManifestMismatchError struct {
	Dir      string
	Problems []string // one per file, in the words of pg_verifybackup
}

func (e *ManifestMismatchError) Error() string {
	var b strings.Builder
	noun := "problems"
	if len(e.Problems) == 1 {
		noun = "problem"
	}
	fmt.Fprintf(&b, "%d %s comparing %s with its backup manifest:", len(e.Problems), noun, e.Dir)
	for i, p := range e.Problems {
		if i == maxReportedProblems {
			fmt.Fprintf(&b, "\n… and %d more", len(e.Problems)-i)
			break
		}
		b.WriteString("\n" + p)
	}
	return b.String()
}

// manifestEntry is a file of the manifest while a directory is compared
// with it.
type manifestEntry struct {
	file    *ManifestFile
	matched bool // found on disk
	bad     bool // a problem was already reported
}

// dataDirVerifier compares a directory with a manifest.
type dataDirVerifier struct {
	ctx      context.Context
	dir      string
	m        Manifest
	entries  map[string]*manifestEntry
	ignored  []string // paths that could not be read: nothing more is said of them
	problems []string
}

// VerifyDataDir checks a restored data directory against its backup
// manifest, as pg_verifybackup does for a plain-format backup: every file
// of the manifest must be there with its size and checksum, and every file
// there must be in the manifest, except for pg_verifybackup's exceptions
// (backup_manifest, pg_wal, postgresql.auto.conf, recovery.signal and
// standby.signal). Symbolic links are followed, so tablespaces are checked
// where pg_tblspc points. For a version 2 manifest, global/pg_control must
// also be of the manifest's database system.
//
// All problems are collected into one *ManifestMismatchError; an error
// of another kind means the check could not be made (ctx cancelled).
func VerifyDataDir(ctx context.Context, dir string, m Manifest) error {
	v := &dataDirVerifier{ctx: ctx, dir: dir, m: m, entries: make(map[string]*manifestEntry, len(m.Files))}
	for i := range m.Files {
		v.entries[m.Files[i].Path] = &manifestEntry{file: &m.Files[i]}
	}
	if fi, err := os.Stat(dir); err != nil {
		return fmt.Errorf("data directory: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("data directory %s is not a directory", dir)
	}
	if err := v.walk("", dir, 0); err != nil {
		return err
	}
	for i := range m.Files {
		f := &m.Files[i]
		if !v.entries[f.Path].matched && !v.ignore(f.Path) {
			v.report("%q is present in the manifest but not on disk", f.Path)
		}
	}
	if err := v.checksums(); err != nil {
		return err
	}
	if len(v.problems) > 0 {
		return &ManifestMismatchError{Dir: dir, Problems: v.problems}
	}
	return nil
}

func (v *dataDirVerifier) report(format string, args ...any) {
	v.problems = append(v.problems, fmt.Sprintf(format, args...))
}

func (v *dataDirVerifier) ignore(rel string) bool {
	if manifestIgnored(rel) {
		return true
	}
	for _, p := range v.ignored {
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return true
		}
	}
	return false
}

// maxManifestDepth bounds directory nesting, against symbolic link loops;
// a data directory is a few levels deep.
const maxManifestDepth = 32

// walk compares directory full, rel below the data directory ("" for the
// data directory itself).
func (v *dataDirVerifier) walk(rel, full string, depth int) error {
	if err := v.ctx.Err(); err != nil {
		return err
	}
	if depth > maxManifestDepth {
		v.report("%q is nested more than %d directories deep (a symbolic link loop?)", rel, maxManifestDepth)
		return nil
	}
	entries, err := os.ReadDir(full)
	if err != nil {
		v.report("could not read directory %q: %v", rel, err)
		v.ignored = append(v.ignored, rel)
		return nil
	}
	for _, e := range entries {
		childRel := path.Join(rel, e.Name())
		if v.ignore(childRel) {
			continue
		}
		childFull := filepath.Join(full, e.Name())
		fi, err := os.Stat(childFull)
		if err != nil {
			v.report("could not stat file or directory %q: %v", childRel, err)
			v.ignored = append(v.ignored, childRel)
			continue
		}
		if fi.IsDir() {
			if err := v.walk(childRel, childFull, depth+1); err != nil {
				return err
			}
			continue
		}
		if !fi.Mode().IsRegular() {
			v.report("%q is not a regular file or directory", childRel)
			continue
		}
		entry := v.entries[childRel]
		if entry == nil {
			v.report("%q is present on disk but not in the manifest", childRel)
			continue
		}
		entry.matched = true
		if fi.Size() != entry.file.Size {
			v.report("%q has size %d on disk but size %d in the manifest", childRel, fi.Size(), entry.file.Size)
			entry.bad = true
		}
		if childRel == "global/pg_control" && v.m.Version >= 2 {
			v.checkSystemID(childFull)
		}
	}
	return nil
}

// checkSystemID compares pg_control's system identifier, its first eight
// bytes, with the manifest's.
func (v *dataDirVerifier) checkSystemID(file string) {
	f, err := os.Open(file)
	if err != nil {
		return // reported when its checksum is computed
	}
	defer f.Close()
	var b [8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return
	}
	if id := binary.LittleEndian.Uint64(b[:]); id != v.m.SystemIdentifier && binary.BigEndian.Uint64(b[:]) != v.m.SystemIdentifier {
		v.report("\"global/pg_control\" is of database system %d, but the manifest is of system %d: the manifest belongs to another cluster", id, v.m.SystemIdentifier)
	}
}

// checksums computes the checksums of the files found with the right
// size, a few at a time, and reports mismatches in manifest order.
func (v *dataDirVerifier) checksums() error {
	var todo []*ManifestFile
	for i := range v.m.Files {
		f := &v.m.Files[i]
		e := v.entries[f.Path]
		if e.matched && !e.bad && f.Algorithm != "NONE" && !v.ignore(f.Path) {
			todo = append(todo, f)
		}
	}
	results := make([]string, len(todo))
	errs := make([]error, len(todo))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), 8, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 128<<10)
			for i := range next {
				results[i], errs[i] = v.checkFile(todo[i], buf)
			}
		}()
	}
	for i := range todo {
		if v.ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if err := v.ctx.Err(); err != nil {
		return err
	}
	for i := range todo {
		if errs[i] != nil {
			return errs[i]
		}
		if results[i] != "" {
			v.problems = append(v.problems, results[i])
		}
	}
	return nil
}

// checkFile returns the problem with one file's content, if any; an error
// only when ctx ends.
func (v *dataDirVerifier) checkFile(f *ManifestFile, buf []byte) (string, error) {
	file, err := os.Open(filepath.Join(v.dir, filepath.FromSlash(f.Path)))
	if err != nil {
		return fmt.Sprintf("could not open file %q: %v", f.Path, err), nil
	}
	defer file.Close()
	var h hash.Hash
	switch f.Algorithm {
	case "CRC32C":
		h = crc32.New(crc32.MakeTable(crc32.Castagnoli))
	case "SHA224":
		h = sha256.New224()
	case "SHA256":
		h = sha256.New()
	case "SHA384":
		h = sha512.New384()
	case "SHA512":
		h = sha512.New()
	default:
		return fmt.Sprintf("file %q: unknown checksum algorithm %s", f.Path, f.Algorithm), nil
	}
	var n int64
	for {
		if err := v.ctx.Err(); err != nil {
			return "", err
		}
		m, rerr := file.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Sprintf("could not read file %q: %v", f.Path, rerr), nil
		}
	}
	if n != f.Size {
		return fmt.Sprintf("file %q should contain %d bytes, but read %d (did it change during the check?)", f.Path, f.Size, n), nil
	}
	sum := h.Sum(nil)
	if hex.EncodeToString(sum) == f.Checksum {
		return "", nil
	}
	// PostgreSQL writes a CRC-32C in the server's byte order; hash/crc32
	// gives big-endian bytes, so a little-endian server's checksum reads
	// reversed. Either order is accepted, as the server's is not known.
	if f.Algorithm == "CRC32C" {
		le := binary.LittleEndian.AppendUint32(nil, binary.BigEndian.Uint32(sum))
		if hex.EncodeToString(le) == f.Checksum {
			return "", nil
		}
	}
	return fmt.Sprintf("checksum mismatch for file %q (%s)", f.Path, f.Algorithm), nil
}
