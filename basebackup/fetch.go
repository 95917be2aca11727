package basebackup

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/progress"
	"github.com/walship/walship/storage"
)

// IncompleteMarker is created in the target directory when a restore
// starts and removed when it has completed. While it exists, global/
// pg_control is held back under another name, so PostgreSQL refuses to
// start a half-restored directory.
const IncompleteMarker = "WALSHIP_RESTORE_INCOMPLETE"

const pendingControl = "global/pg_control.walship-pending"

// FetchOptions configures Fetch.
type FetchOptions struct {
	// TablespaceMap relocates tablespaces: original location → new one.
	TablespaceMap map[string]string
	Parallel      int // objects downloaded and extracted at once
	Verify        bool
	Progress      progress.Reporter
}

// Fetch restores backup b into dir, which must be empty or absent, and
// its tablespaces into their (mapped) locations. Everything read is
// checked against the checksums recorded at backup time before the
// restore counts as complete; with Verify the files are also checked
// against the server's backup manifest. On failure dir is left with
// IncompleteMarker and without global/pg_control.
func Fetch(ctx context.Context, s storage.Storage, b Backup, dir string, o FetchOptions) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("restore directory %s: use an absolute path", dir)
	}
	uid, gid, err := prepareDir(dir)
	if err != nil {
		return err
	}
	locations, err := tablespaceTargets(b, o.TablespaceMap)
	if err != nil {
		return err
	}
	for _, loc := range locations {
		if _, _, err := prepareDir(loc); err != nil {
			return fmt.Errorf("tablespace: %w (relocate it with --tablespace-map OLD=NEW)", err)
		}
	}
	marker := filepath.Join(dir, IncompleteMarker)
	note := fmt.Sprintf("walship backup-fetch of %s into this directory has not completed.\nRemove the directory and run backup-fetch again.\n", b.Name)
	if err := os.WriteFile(marker, []byte(note), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", marker, err)
	}
	ex := &extractor{uid: uid, gid: gid, chown: os.Geteuid() == 0, rep: progress.Or(o.Progress), locations: locations}
	ex.rep.Start("backup-fetch "+b.Name, b.Size)
	err = ex.all(ctx, s, b, dir, o.Parallel)
	ex.rep.Done()
	if errors.Is(err, archive.ErrCorrupt) {
		return fmt.Errorf("restore of %s into %s failed, the directory is incomplete (see %s): %w; the backup is damaged or was tampered with: restore another one (walship backup-list)",
			b.Name, dir, IncompleteMarker, err)
	}
	if err != nil {
		return fmt.Errorf("restore of %s into %s failed, the directory is incomplete (see %s): %w", b.Name, dir, IncompleteMarker, err)
	}
	if b.Manifest != nil {
		data, err := readAll(ctx, s, b, *b.Manifest)
		if err != nil {
			return err
		}
		if err := ex.writeFile(filepath.Join(dir, "backup_manifest"), data, 0o600); err != nil {
			return err
		}
		if o.Verify {
			m, err := ParseManifest(data)
			if err != nil {
				return fmt.Errorf("backup manifest of %s: %w", b.Name, err)
			}
			if err := verifyRestored(ctx, dir, m); err != nil {
				return fmt.Errorf("%s does not match the backup manifest, the directory is incomplete (see %s): %w", dir, IncompleteMarker, err)
			}
		}
	} else if o.Verify {
		return fmt.Errorf("backup %s has no manifest to verify against", b.Name)
	}
	if m := ex.clusterModes(); m.GroupAccess() {
		for _, d := range append([]string{dir}, values(locations)...) {
			if err := applyModes(d, m); err != nil {
				return err
			}
		}
	}
	for _, d := range append([]string{dir}, values(locations)...) {
		if err := syncFS(d); err != nil {
			return err
		}
	}
	if err := os.Rename(filepath.Join(dir, pendingControl), filepath.Join(dir, "global", "pg_control")); err != nil {
		return fmt.Errorf("backup %s has no global/pg_control: %w", b.Name, err)
	}
	if err := os.Remove(marker); err != nil {
		return err
	}
	return syncFS(dir)
}

// verifyRestored checks dir against the manifest, with the pending
// pg_control in place for the check.
func verifyRestored(ctx context.Context, dir string, m Manifest) error {
	final := filepath.Join(dir, "global", "pg_control")
	if err := os.Rename(filepath.Join(dir, pendingControl), final); err != nil {
		return err
	}
	err := VerifyDataDir(ctx, dir, m)
	if rerr := os.Rename(final, filepath.Join(dir, pendingControl)); err == nil {
		err = rerr
	}
	return err
}

func values(m map[uint32]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// prepareDir makes sure dir is an empty directory, creating it (0700)
// when absent, and returns the owner restored files should get: dir's
// owner, or its parent's when walship created dir.
func prepareDir(dir string) (uid, gid int, err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := pgperm.Owner().MkdirAll(dir); err != nil {
			return 0, 0, fmt.Errorf("create %s: %w", dir, err)
		}
		uid, gid = ownerOf(filepath.Dir(dir))
		if os.Geteuid() == 0 {
			if err := os.Chown(dir, uid, gid); err != nil {
				return 0, 0, err
			}
		}
		return uid, gid, nil
	case err != nil:
		return 0, 0, fmt.Errorf("read %s: %w", dir, err)
	case len(entries) > 0:
		return 0, 0, fmt.Errorf("%s is not empty (%d entries): restore into an empty or new directory", dir, len(entries))
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return 0, 0, err
	}
	uid, gid = ownerOf(dir)
	return uid, gid, nil
}

func ownerOf(path string) (int, int) {
	st, err := os.Stat(path)
	if err != nil {
		return os.Getuid(), os.Getgid()
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(sys.Uid), int(sys.Gid)
	}
	return os.Getuid(), os.Getgid()
}

// tablespaceTargets maps each tablespace OID to where it is restored.
func tablespaceTargets(b Backup, remap map[string]string) (map[uint32]string, error) {
	used := map[string]bool{}
	out := map[uint32]string{}
	for _, ts := range b.Tablespaces {
		if ts.OID == 0 {
			continue
		}
		loc := ts.Location
		if n, ok := remap[loc]; ok {
			loc = n
			used[ts.Location] = true
		}
		if !filepath.IsAbs(loc) {
			return nil, fmt.Errorf("tablespace %d: location %q is not absolute", ts.OID, loc)
		}
		out[ts.OID] = filepath.Clean(loc)
	}
	for old := range remap {
		if !used[old] {
			return nil, fmt.Errorf("--tablespace-map %s: backup %s has no tablespace there (its tablespaces: %s)", old, b.Name, describeTablespaces(b))
		}
	}
	return out, nil
}

func describeTablespaces(b Backup) string {
	var parts []string
	for _, ts := range b.Tablespaces {
		if ts.OID != 0 {
			parts = append(parts, fmt.Sprintf("%d at %s", ts.OID, ts.Location))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// extractor restores tar streams safely: no entry can reach outside its
// root, the only symbolic links are pg_tblspc's, and files are created
// new (never through an existing file or link).
type extractor struct {
	uid, gid  int
	chown     bool
	rep       progress.Reporter
	locations map[uint32]string

	originMu sync.Mutex
	origin   map[string]int64 // tar header modes of backup_label and pg_control
}

// all extracts every archive of b, o.Parallel at a time, stopping at the
// first error.
func (ex *extractor) all(ctx context.Context, s storage.Storage, b Backup, dir string, parallel int) error {
	if parallel <= 0 {
		parallel = 4
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for _, f := range b.Files {
		root := dir
		if f.TablespaceOID != 0 {
			root = ex.locations[f.TablespaceOID]
			if root == "" {
				return fmt.Errorf("%w: backup %s has an archive for tablespace %d that its metadata does not list", archive.ErrCorrupt, b.Name, f.TablespaceOID)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := ex.one(ctx, s, b, f, root, f.TablespaceOID == 0); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// open starts a verified read of one of b's files.
func open(ctx context.Context, s storage.Storage, b Backup, f File) (*archive.VerifyingReader, io.Closer, error) {
	key := b.prefix() + f.Key
	rc, _, err := s.Get(ctx, key)
	if err != nil {
		return nil, nil, fmt.Errorf("download %s: %w", key, err)
	}
	vr, err := archive.VerifyDigest(key, f.Digest, archive.MarkReadErrors(rc))
	if err != nil {
		rc.Close()
		return nil, nil, err
	}
	return vr, rc, nil
}

func readAll(ctx context.Context, s storage.Storage, b Backup, f File) ([]byte, error) {
	vr, rc, err := open(ctx, s, b, f)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	defer vr.Close()
	return archive.ReadSmall(vr, archive.MaxManifestSize)
}

func (ex *extractor) one(ctx context.Context, s storage.Storage, b Backup, f File, root string, isBase bool) error {
	vr, rc, err := open(ctx, s, b, f)
	if err != nil {
		return err
	}
	// Download, decompression and checksum run ahead of tar parsing and
	// file writes. On the way out the download is closed first, which
	// ends a read the read-ahead may be blocked in, then the read-ahead
	// is waited for, then the decompressor goes.
	ahead := readAhead(vr, 8, 1<<20)
	defer vr.Close()
	defer ahead.Close()
	defer rc.Close()
	read := &countingReader{r: ahead}
	tr := tar.NewReader(read)
	buf := make([]byte, 1<<20)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", f.Key, err)
		}
		err = checkHeader(hdr, f.Size-read.n)
		if err == nil {
			err = ex.entry(tr, hdr, root, isBase, buf)
		}
		if err != nil {
			return fmt.Errorf("%s: entry %q: %w", f.Key, hdr.Name, err)
		}
	}
	// Read to the end so the checksum of the whole object is verified.
	if _, err := io.Copy(io.Discard, ahead); err != nil {
		return err
	}
	return nil
}

// entry restores one tar entry below root.
func (ex *extractor) entry(tr *tar.Reader, hdr *tar.Header, root string, isBase bool, buf []byte) error {
	name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
	if name == "." {
		return nil
	}
	if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("%w: entry escapes the target directory", archive.ErrCorrupt)
	}
	if isBase && name == "global/pg_control" {
		name = pendingControl
	}
	if isBase && name == pendingControl && hdr.Typeflag != tar.TypeReg {
		return fmt.Errorf("%w: global/pg_control is not a regular file", archive.ErrCorrupt)
	}
	inTablespaces := isBase && strings.HasPrefix(name, "pg_tblspc/")
	target := filepath.Join(root, filepath.FromSlash(name))
	switch hdr.Typeflag {
	case tar.TypeDir:
		if inTablespaces {
			return fmt.Errorf("%w: directory inside pg_tblspc", archive.ErrCorrupt)
		}
		if err := pgperm.Owner().Mkdir(target); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return ex.own(target)
	case tar.TypeSymlink:
		// The only links in a base backup are pg_tblspc/<oid>, pointing
		// at tablespaces; they are pointed at the restored location.
		oid, err := strconv.ParseUint(strings.TrimPrefix(name, "pg_tblspc/"), 10, 32)
		if !inTablespaces || err != nil {
			return fmt.Errorf("%w: unexpected symbolic link to %q", archive.ErrCorrupt, hdr.Linkname)
		}
		loc, ok := ex.locations[uint32(oid)]
		if !ok {
			return fmt.Errorf("%w: link to tablespace %d, which the backup metadata does not list", archive.ErrCorrupt, oid)
		}
		if err := os.Symlink(loc, target); err != nil {
			return err
		}
		if ex.chown {
			return os.Lchown(target, ex.uid, ex.gid)
		}
		return nil
	case tar.TypeReg:
		if inTablespaces {
			return fmt.Errorf("%w: file inside pg_tblspc", archive.ErrCorrupt)
		}
		if isBase && (name == "backup_label" || name == pendingControl) {
			ex.noteClusterMode(name, hdr.Mode)
		}
		return ex.file(tr, target, hdr.ModTime, buf)
	default:
		return fmt.Errorf("%w: unsupported tar entry type %q", archive.ErrCorrupt, hdr.Typeflag)
	}
}

// checkHeader refuses, before anything is written, entries that would
// make extraction write more than the archive holds: a size field larger
// than the rest of the archive (a damaged or crafted header), and sparse
// files, which expand to any size. PostgreSQL never sends either.
func checkHeader(hdr *tar.Header, left int64) error {
	if hdr.Size < 0 || hdr.Size > left {
		return fmt.Errorf("%w: the entry's header says %d bytes, but only %d bytes of the archive are left", archive.ErrCorrupt, hdr.Size, max(left, 0))
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return fmt.Errorf("%w: a sparse file, which no PostgreSQL base backup holds", archive.ErrCorrupt)
		}
	}
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (ex *extractor) own(path string) error {
	if !ex.chown {
		return nil
	}
	return os.Lchown(path, ex.uid, ex.gid)
}

// file writes one regular file, mode 0600 (see clusterModes);
// O_EXCL|O_NOFOLLOW: never through an existing file or link.
func (ex *extractor) file(r io.Reader, target string, mtime time.Time, buf []byte) error {
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, pgperm.Owner().File)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%w: the archive holds this entry twice", archive.ErrCorrupt)
	}
	if err != nil {
		return err
	}
	if err := pgperm.Owner().Set(out); err != nil {
		out.Close()
		return err
	}
	n, err := io.CopyBuffer(out, r, buf)
	ex.rep.Add(n)
	if err == nil && n >= 1<<20 {
		// Start writing it back now, so that the final sync of the file
		// system has little left to do (PostgreSQL's pre-sync does the
		// same). Only a hint: errors show at that final sync.
		unix.SyncFileRange(int(out.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := ex.own(target); err != nil {
		return err
	}
	return os.Chtimes(target, mtime, mtime)
}

func (ex *extractor) writeFile(target string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(target, data, mode); err != nil {
		return err
	}
	return ex.own(target)
}

// syncFS flushes the file system holding dir, like pg_basebackup's final
// sync, so the restore survives a crash.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// File modes. Everything is extracted with mode 0600 (directories 0700),
// never with the modes in the tar headers. PostgreSQL refuses a data
// directory other than 0700 or 0750 and takes the modes of new files
// from it, so the restored directory follows the backed-up cluster:
// when that had group access (initdb --allow-group-access), the restored
// directory and every directory in it become 0750 and every file 0640
// once all is extracted. The server writes backup_label into the backup
// with the mode it creates files with (0640 with group access); a backup
// without one is judged by global/pg_control's mode. Tablespace
// locations get the same modes, as CREATE TABLESPACE gives them.

// noteClusterMode records the tar header mode of backup_label or
// global/pg_control.
func (ex *extractor) noteClusterMode(name string, mode int64) {
	ex.originMu.Lock()
	defer ex.originMu.Unlock()
	if ex.origin == nil {
		ex.origin = map[string]int64{}
	}
	ex.origin[name] = mode
}

// clusterModes returns the modes of the backed-up cluster's data
// directory: Group when it had group access, else Owner.
func (ex *extractor) clusterModes() pgperm.Modes {
	ex.originMu.Lock()
	defer ex.originMu.Unlock()
	for _, name := range []string{"backup_label", pendingControl} {
		if mode, ok := ex.origin[name]; ok {
			if mode&0o040 != 0 {
				return pgperm.Group()
			}
			return pgperm.Owner()
		}
	}
	return pgperm.Owner()
}

// applyModes gives root and every directory below it m.Dir and every
// file m.File; symbolic links (pg_tblspc) are not followed.
func applyModes(root string, m pgperm.Modes) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := m.File
		switch {
		case d.IsDir():
			mode = m.Dir
		case !d.Type().IsRegular():
			return nil
		}
		if err := os.Chmod(path, mode); err != nil {
			return fmt.Errorf("set the mode of %s: %w", path, err)
		}
		return nil
	})
}
