// Package fs stores the archive in a local or mounted directory, for
// repositories given as file:///abs/dir.
//
// # Guarantees
//
// Writes are durable, atomic and never overwrite. Put and PutStream write
// the object to a temporary file in the target directory (its name starts
// with ".", so listings skip it), fsync it, then give it its final name
// with link(2), which fails if the name exists — race-free even between
// processes — and fsync the directory. On file systems without hard links
// they use renameat2(RENAME_NOREPLACE), which is just as strict. A crash
// at any moment leaves either no object or the complete one under its key.
// Temporary files left by a crash are never listed; List removes those
// untouched for more than an hour (a PutStream in progress touches its
// file while it waits for data, so only a dead writer's file gets old).
// PutStream uses one 256 KiB buffer whatever the length of the stream.
//
// # File modes
//
// The archive holds a full copy of the database, so what walship creates
// in it is its owner's alone: directories 0700, files 0600. An archive
// directory that grants its group read and execute (0750, PostgreSQL's
// rule for a data directory with group access) gets 0750 and 0640
// instead, so a group of backup readers keeps access to new objects.
// Nothing is ever readable by others, whatever the umask; the modes of
// what is already there are left alone. As root, walship gives what it
// creates to the archive directory's owner.
//
// # Layout
//
// A key maps to the path of the same name below the archive directory
// ("wal/000000010000000000000001.zst" is DIR/wal/000000010000000000000001.zst).
// Keys must be relative, slash-separated, without empty components, without
// "..", without components starting with "." (reserved for temporary
// files), and without backslashes or NUL bytes; any other key is refused,
// so no key can reach outside the directory. A key cannot be both an
// object and the directory of other objects.
//
// # Object format
//
// Each object is one file, so that the object and its metadata appear
// together or not at all. The file starts with a one-line header holding
// the metadata as a JSON object of strings, followed by the content
// unchanged:
//
//	#walship-meta {"walship-codec":"zstd","walship-sha256":"9f86…"}\n
//	<content>
//
// The header is at most 64 KiB. Get returns a reader positioned after the
// header; Stat reads only the header; sizes reported by Get, Stat and List
// are content sizes, without the header. With no metadata the header is
// "#walship-meta {}". To read an object without walship, drop the first
// line: tail -n +2 FILE.
package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/storage"
)

const (
	headerPrefix = "#walship-meta "
	maxHeader    = 64 << 10
	tempPrefix   = ".walship-tmp-"
	// staleTemp is how long a temporary file must sit untouched before
	// List removes it. A Put in progress writes to its file all the time,
	// so only a dead writer's file gets this old.
	staleTemp = time.Hour
)

// Storage is an archive in a directory. It is safe for concurrent use,
// also by several processes on the same directory.
type Storage struct {
	dir string
	// owner, when set, is given to every file and directory walship
	// creates: a root-run walship (backup-fetch, a cron job) must not
	// leave files the PostgreSQL OS user cannot read or replace.
	owner *owner
	// modes are those of every file and directory walship creates,
	// from the mode of the archive directory (see File modes).
	modes pgperm.Modes
}

type owner struct{ uid, gid int }

// ownerFor returns the owner of the archive directory when this process
// runs as root and the directory belongs to someone else.
func ownerFor(fi os.FileInfo) *owner {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 || st.Uid == 0 {
		return nil
	}
	return &owner{uid: int(st.Uid), gid: int(st.Gid)}
}

// chown gives path the archive's owner, if it has one.
func (s *Storage) chown(path string) error {
	if s.owner == nil {
		return nil
	}
	if err := os.Lchown(path, s.owner.uid, s.owner.gid); err != nil {
		return s.describe("setting the owner of", path, err)
	}
	return nil
}

var _ storage.Storage = (*Storage)(nil)

// New opens the archive in dir, which must be an absolute path to an
// existing directory. It does not create it: a mistyped path on a
// restore must fail, not look like an empty archive. Use Create to set up
// a new archive.
func New(dir string) (*Storage, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("archive directory %q is not an absolute path: give file:///absolute/path (archive and restore commands run in the data directory, so a relative path would point into it)", dir)
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("archive directory %s does not exist: create it (mkdir -m 0700 %s, owned by the PostgreSQL OS user) or fix the repository URL", dir, dir)
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("archive directory %s: permission denied: check that the PostgreSQL OS user can reach and read %s", dir, dir)
	case err != nil:
		return nil, fmt.Errorf("archive directory %s: %w", dir, cause(err))
	case !fi.IsDir():
		return nil, fmt.Errorf("archive directory %s is not a directory: fix the repository URL", dir)
	}
	return &Storage{dir: dir, owner: ownerFor(fi), modes: pgperm.ForMode(fi.Mode())}, nil
}

// Create is New for a new archive: it first creates dir and any missing
// parents with mode 0700.
func Create(dir string) (*Storage, error) {
	if filepath.IsAbs(dir) {
		dir = filepath.Clean(dir)
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			if err := pgperm.Owner().MkdirAll(dir); err != nil {
				return nil, fmt.Errorf("creating archive directory %s: %w (check that the PostgreSQL OS user can write to %s)", dir, cause(err), filepath.Dir(dir))
			}
			if err := syncDir(filepath.Dir(dir)); err != nil {
				return nil, fmt.Errorf("creating archive directory %s: syncing %s: %w", dir, filepath.Dir(dir), cause(err))
			}
		}
	}
	return New(dir)
}

// String implements storage.Storage.
func (s *Storage) String() string { return "file://" + s.dir }

// checkKey refuses keys that could leave the archive directory or collide
// with temporary files.
func checkKey(key string) error {
	why := ""
	switch {
	case key == "":
		why = "it is empty"
	case strings.HasPrefix(key, "/"):
		why = "it is an absolute path"
	case strings.ContainsRune(key, '\\'):
		why = "it contains a backslash"
	case strings.ContainsRune(key, 0):
		why = "it contains a NUL byte"
	case strings.Contains(key, ".."):
		why = `it contains ".."`
	}
	if why == "" {
		for c := range strings.SplitSeq(key, "/") {
			if c == "" {
				why = "it has an empty path component"
				break
			}
			if c[0] == '.' {
				why = `a path component starts with "."`
				break
			}
		}
	}
	if why != "" {
		return storage.Permanent(fmt.Errorf("invalid object key %q: %s", key, why))
	}
	return nil
}

func (s *Storage) path(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, filepath.FromSlash(key)), nil
}

// Put implements storage.Storage.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error {
	return s.store(ctx, key, meta, false, func(w io.Writer) error {
		return storage.CopyBody(ctx, w, body, size)
	})
}

// PutStream implements storage.Storage. It stores the stream exactly as
// Put stores a body — temporary file, fsync, link, directory fsync — with
// one copy buffer of memory. A key that already exists is refused before
// the stream is read; link(2) still decides when another writer stores
// the key while the stream is being written.
func (s *Storage) PutStream(ctx context.Context, key string, r io.Reader, meta map[string]string) (int64, error) {
	path, err := s.path(key)
	if err != nil {
		return 0, err
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		return 0, fmt.Errorf("storing %s: %w", path, storage.ErrExist)
	}
	var n int64
	err = s.store(ctx, key, meta, true, func(w io.Writer) error {
		var err error
		n, err = storage.CopyStream(ctx, w, r)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// store writes the object header and then whatever fill writes into a
// temporary file next to the object's path, makes it durable and gives
// it its name without overwriting. If fill fails, nothing is left behind.
// long marks a write that may take hours (a stream): the temporary file is
// then kept fresh even while no data arrives, so that List does not sweep
// it as a dead writer's.
func (s *Storage) store(ctx context.Context, key string, meta map[string]string, long bool, fill func(w io.Writer) error) error {
	path, err := s.path(key)
	if err != nil {
		return err
	}
	if err := storage.CheckMetadata(meta); err != nil {
		return fmt.Errorf("storing %s: %w", path, err)
	}
	header, err := encodeHeader(meta)
	if err != nil {
		return fmt.Errorf("storing %s: %w", path, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storing %s: %w", path, err)
	}

	dir := filepath.Dir(path)
	var tmp *os.File
	for attempt := 1; ; attempt++ {
		err = s.mkdirAll(dir)
		if err == nil {
			tmp, err = s.modes.CreateTemp(dir, tempPrefix+"*")
			if err != nil {
				err = s.describe("creating a file in", dir, err)
			} else if err = s.chown(tmp.Name()); err != nil {
				tmp.Close()
				os.Remove(tmp.Name())
			}
		}
		// Delete removes directories it empties; one may vanish between
		// creating it and creating the file in it. Try again.
		if err == nil || !errors.Is(err, os.ErrNotExist) || attempt == 5 {
			break
		}
	}
	if err != nil {
		return err
	}
	tmpPath := tmp.Name()
	closed := false
	defer func() {
		if !closed {
			tmp.Close()
		}
		// After a successful link this removes the second name; after a
		// failure it removes the partial file. Either way it may already
		// be gone.
		os.Remove(tmpPath)
	}()
	if long {
		defer keepFresh(tmpPath, staleTemp/4)()
	}

	w := &fileWriter{f: tmp}
	if _, err := w.Write(header); err != nil {
		return s.describe("writing", path, err)
	}
	if err := fill(w); err != nil {
		if w.err != nil {
			return s.describe("writing", path, w.err)
		}
		return fmt.Errorf("storing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return s.describe("syncing", path, err)
	}
	closed = true
	if err := tmp.Close(); err != nil {
		return s.describe("writing", path, err)
	}
	// The last moment to give up: once linked, the object is visible.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storing %s: %w", path, err)
	}
	if err := s.publish(tmpPath, path); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		// The object is visible but may not survive a crash. Take it back
		// so that the caller's retry stores it again rather than seeing
		// ErrExist for an object that might vanish.
		os.Remove(path)
		return s.describe("syncing directory", dir, err)
	}
	return nil
}

// keepFresh touches the temporary file at path every interval until the
// returned function is called. A stream can pause for long (a base backup
// waits for the server's checkpoint, or a slow tablespace); without this
// a concurrent List would take the idle file for a dead writer's and
// remove it.
func keepFresh(path string, every time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				os.Chtimes(path, time.Time{}, now)
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// publish gives the complete temporary file tmp the name path, failing
// with ErrExist if path exists.
func (s *Storage) publish(tmp, path string) error {
	err := os.Link(tmp, path)
	if err != nil && linkUnsupported(err) {
		err = renameNoReplace(tmp, path)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrExist):
		if fi, serr := os.Lstat(path); serr == nil && fi.IsDir() {
			return storage.Permanent(fmt.Errorf("cannot store %s: a directory of that name holds other objects", path))
		}
		return fmt.Errorf("storing %s: %w", path, storage.ErrExist)
	case errors.Is(err, errors.ErrUnsupported):
		return storage.Permanent(fmt.Errorf("cannot store %s: the file system of %s supports neither hard links nor renameat2(RENAME_NOREPLACE), so walship cannot write without risking an overwrite: use another file system", path, s.dir))
	}
	return s.describe("naming", path, err)
}

func linkUnsupported(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOTSUP) ||
		errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EMLINK)
}

// fileWriter remembers a write error, so Put can tell a full disk from a
// failing body.
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// mkdirAll creates dir and its missing parents below the archive
// directory, syncing each parent so that a new directory survives a crash
// together with the object in it.
func (s *Storage) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	rel, err := filepath.Rel(s.dir, dir)
	if err != nil || rel == "." {
		return s.checkRoot(err)
	}
	cur := s.dir
	for c := range strings.SplitSeq(rel, string(filepath.Separator)) {
		parent := cur
		cur = filepath.Join(cur, c)
		err := s.modes.Mkdir(cur)
		switch {
		case err == nil:
			if err := s.chown(cur); err != nil {
				return err
			}
			if err := syncDir(parent); err != nil {
				return s.describe("syncing directory", parent, err)
			}
		case errors.Is(err, os.ErrExist):
			if fi, serr := os.Stat(cur); serr == nil && !fi.IsDir() {
				return storage.Permanent(fmt.Errorf("cannot create directory %s: an object of that name exists", cur))
			}
		default:
			return s.describe("creating directory", cur, err)
		}
	}
	return nil
}

// checkRoot returns err, or an error saying that the archive directory
// itself is gone.
func (s *Storage) checkRoot(err error) error {
	if _, serr := os.Stat(s.dir); serr != nil {
		return fmt.Errorf("archive directory %s is not accessible (removed, or a file system not mounted?): %w", s.dir, cause(serr))
	}
	return err
}

// cause strips the operation and path that os wraps around a system
// error, since walship's messages name the path themselves.
func cause(err error) error {
	var pe *os.PathError
	var le *os.LinkError
	var se *os.SyscallError
	switch {
	case errors.As(err, &pe):
		return pe.Err
	case errors.As(err, &le):
		return le.Err
	case errors.As(err, &se):
		return se.Err
	}
	return err
}

// describe turns an error from the operating system into one that names
// the path and says what to do. Errors that retrying cannot fix are marked
// storage.Permanent.
func (s *Storage) describe(doing, path string, err error) error {
	c := cause(err)
	var errno syscall.Errno
	errors.As(c, &errno)
	switch {
	case errno == syscall.ENOSPC:
		return storage.Permanent(fmt.Errorf("%s %s: no space left on the file system of %s: free space there or move the archive: %w", doing, path, s.dir, c))
	case errno == syscall.EDQUOT:
		return storage.Permanent(fmt.Errorf("%s %s: disk quota exceeded on %s: raise the PostgreSQL OS user's quota or free space: %w", doing, path, s.dir, c))
	case errno == syscall.EROFS:
		return storage.Permanent(fmt.Errorf("%s %s: %s is read-only: remount it read-write or point the repository at a writable directory: %w", doing, path, s.dir, c))
	case errors.Is(c, os.ErrPermission):
		access := "write to"
		if doing == "reading" || doing == "listing" {
			access = "read"
		}
		return storage.Permanent(fmt.Errorf("%s %s: permission denied: check that the PostgreSQL OS user can %s %s: %w", doing, path, access, s.dir, c))
	case errors.Is(c, os.ErrNotExist):
		return s.checkRoot(fmt.Errorf("%s %s: %w", doing, path, c))
	}
	return fmt.Errorf("%s %s: %w", doing, path, c)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	// Some file systems cannot fsync a directory and say so with EINVAL;
	// PostgreSQL ignores that too (fsync_fname_ext).
	if errors.Is(err, syscall.EINVAL) {
		return nil
	}
	return err
}

func encodeHeader(meta map[string]string) ([]byte, error) {
	if meta == nil {
		meta = map[string]string{}
	}
	j, err := json.Marshal(meta) // sorted keys; escapes keep it on one line
	if err != nil {
		return nil, err
	}
	h := make([]byte, 0, len(headerPrefix)+len(j)+1)
	h = append(append(append(h, headerPrefix...), j...), '\n')
	if len(h) > maxHeader {
		return nil, storage.Permanent(fmt.Errorf("metadata takes %d bytes, more than the %d an object header holds", len(h), maxHeader))
	}
	return h, nil
}

// readHeader reads the header at the start of f into buf (grown as
// needed) and returns its length in bytes including the newline, and the
// metadata when wantMeta is set.
func readHeader(f *os.File, buf []byte, wantMeta bool) (map[string]string, int64, []byte, error) {
	if len(buf) == 0 {
		buf = make([]byte, 1024)
	}
	for {
		n, err := f.ReadAt(buf, 0)
		if err != nil && err != io.EOF {
			return nil, 0, buf, err
		}
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			line := buf[:i]
			if !bytes.HasPrefix(line, []byte(headerPrefix)) {
				return nil, 0, buf, errors.New(`the file does not start with "#walship-meta"`)
			}
			var meta map[string]string
			if wantMeta {
				if err := json.Unmarshal(line[len(headerPrefix):], &meta); err != nil {
					return nil, 0, buf, fmt.Errorf("the metadata header is not a JSON object of strings: %w", err)
				}
				if meta == nil {
					meta = map[string]string{}
				}
			}
			return meta, int64(i + 1), buf, nil
		}
		if n < len(buf) {
			if n == 0 {
				return nil, 0, buf, errors.New("the file is empty")
			}
			return nil, 0, buf, errors.New("the metadata header is incomplete")
		}
		if len(buf) >= maxHeader {
			return nil, 0, buf, fmt.Errorf("no end of metadata header in the first %d bytes", maxHeader)
		}
		buf = make([]byte, 2*len(buf))
	}
}

// open opens the object at path and reads its header. It also returns
// the header's length, where the content starts.
func (s *Storage) open(key, path string, wantMeta bool) (*os.File, storage.ObjectInfo, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, storage.ObjectInfo{}, 0, s.checkRoot(fmt.Errorf("%s: %w", path, storage.ErrNotExist))
		}
		return nil, storage.ObjectInfo{}, 0, s.describe("reading", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, storage.ObjectInfo{}, 0, s.describe("reading", path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, storage.ObjectInfo{}, 0, fmt.Errorf("%s is not a file: %w", path, storage.ErrNotExist)
	}
	meta, hlen, _, err := readHeader(f, nil, wantMeta)
	if err != nil {
		f.Close()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return nil, storage.ObjectInfo{}, 0, s.describe("reading", path, err)
		}
		return nil, storage.ObjectInfo{}, 0, storage.Permanent(fmt.Errorf("%s is not a walship object: %w; it was not written by walship or is damaged, move it out of the archive", path, err))
	}
	return f, storage.ObjectInfo{Key: key, Size: fi.Size() - hlen, ModTime: fi.ModTime(), Metadata: meta}, hlen, nil
}

// Get implements storage.Storage.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	path, err := s.path(key)
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("reading %s: %w", path, err)
	}
	f, info, hlen, err := s.open(key, path, true)
	if err != nil {
		return nil, storage.ObjectInfo{}, err
	}
	if _, err := f.Seek(hlen, io.SeekStart); err != nil {
		f.Close()
		return nil, storage.ObjectInfo{}, s.describe("reading", path, err)
	}
	return &object{f: f, path: path, s: s}, info, nil
}

// object is the content of a stored file, after its header.
type object struct {
	f    *os.File
	path string
	s    *Storage
}

func (o *object) Read(p []byte) (int, error) {
	n, err := o.f.Read(p)
	if err != nil && err != io.EOF {
		err = o.s.describe("reading", o.path, err)
	}
	return n, err
}

func (o *object) Close() error { return o.f.Close() }

// Stat implements storage.Storage.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	path, err := s.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("reading %s: %w", path, err)
	}
	f, info, _, err := s.open(key, path, true)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	f.Close()
	return info, nil
}

// Delete implements storage.Storage. It also removes the directories it
// leaves empty (the archive directory itself stays). Deletion is not
// fsynced: an object that reappears after a crash is deleted again by the
// next cleanup, and syncing every deletion would make cleanup of
// thousands of segments slow.
func (s *Storage) Delete(ctx context.Context, key string) error {
	path, err := s.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("deleting %s: %w", path, err)
	}
	// unlink, not remove: a directory is not an object and stays.
	err = syscall.Unlink(path)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EISDIR):
		return nil
	default:
		return s.describe("deleting", path, err)
	}
	for dir := filepath.Dir(path); len(dir) > len(s.dir); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break // not empty, or in use by a concurrent Put
		}
	}
	return nil
}

// List implements storage.Storage. It walks the directories below the
// archive directory that can hold keys with prefix, in lexical key order,
// and removes stale temporary files it meets on the way.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if strings.HasPrefix(prefix, "/") || strings.ContainsAny(prefix, "\\\x00") || strings.Contains(prefix, "..") || strings.Contains(prefix, "//") {
		return storage.Permanent(fmt.Errorf("invalid listing prefix %q", prefix))
	}
	// Start in the deepest directory the prefix names.
	start := prefix[:strings.LastIndexByte(prefix, '/')+1]
	for c := range strings.SplitSeq(strings.TrimSuffix(start, "/"), "/") {
		if strings.HasPrefix(c, ".") {
			return nil // reserved names; no key lives there
		}
	}
	l := lister{s: s, ctx: ctx, prefix: prefix, fn: fn, now: time.Now()}
	err := l.walk(filepath.Join(s.dir, filepath.FromSlash(start)), start)
	if errors.Is(err, errStartMissing) {
		return s.checkRoot(nil)
	}
	return err
}

var errStartMissing = errors.New("no such directory")

type lister struct {
	s      *Storage
	ctx    context.Context
	prefix string
	fn     func(storage.ObjectInfo) error
	now    time.Time
	buf    []byte
}

type entry struct {
	name  string
	dir   bool
	order string // name, with "/" appended for directories
}

// walk lists directory dir, whose keys start with rel ("" or ending in "/").
func (l *lister) walk(dir, rel string) error {
	if err := l.ctx.Err(); err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		if rel == l.prefix[:strings.LastIndexByte(l.prefix, '/')+1] && (errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) {
			return errStartMissing
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil // removed by a concurrent Delete
		}
		return l.s.describe("listing", dir, err)
	}
	// Keys sort with the "/" after a directory's name: "x-y" < "x.z" <
	// "x/…" < "x0". os.ReadDir sorts by bare name, which differs.
	entries := make([]entry, 0, len(des))
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, ".") {
			if strings.HasPrefix(name, tempPrefix) {
				l.sweep(filepath.Join(dir, name), de)
			}
			continue
		}
		e := entry{name: name, dir: de.IsDir(), order: name}
		if e.dir {
			e.order += "/"
		} else if !de.Type().IsRegular() {
			continue
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.order, b.order) })

	for _, e := range entries {
		key := rel + e.order
		path := filepath.Join(dir, e.name)
		if e.dir {
			if strings.HasPrefix(key, l.prefix) || strings.HasPrefix(l.prefix, key) {
				if err := l.walk(path, key); err != nil {
					return err
				}
			}
			continue
		}
		if !strings.HasPrefix(key, l.prefix) {
			continue
		}
		info, ok, err := l.stat(key, path)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := l.ctx.Err(); err != nil {
			return fmt.Errorf("listing %s: %w", dir, err)
		}
		if err := l.fn(info); err != nil {
			return err
		}
	}
	return nil
}

// stat reads the size of the object at path; ok is false if it vanished.
func (l *lister) stat(key, path string) (storage.ObjectInfo, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return storage.ObjectInfo{}, false, nil
	}
	if err != nil {
		return storage.ObjectInfo{}, false, l.s.describe("reading", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return storage.ObjectInfo{}, false, l.s.describe("reading", path, err)
	}
	_, hlen, buf, err := readHeader(f, l.buf, false)
	l.buf = buf
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return storage.ObjectInfo{}, false, l.s.describe("reading", path, err)
		}
		return storage.ObjectInfo{}, false, storage.Permanent(fmt.Errorf("%s is not a walship object: %w; it was not written by walship or is damaged, move it out of the archive", path, err))
	}
	return storage.ObjectInfo{Key: key, Size: fi.Size() - hlen, ModTime: fi.ModTime()}, true, nil
}

// sweep removes a temporary file left by a writer that died.
func (l *lister) sweep(path string, de os.DirEntry) {
	fi, err := de.Info()
	if err == nil && l.now.Sub(fi.ModTime()) > staleTemp {
		os.Remove(path)
	}
}
