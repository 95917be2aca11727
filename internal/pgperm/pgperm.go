// Package pgperm gives what walship creates the file modes PostgreSQL
// uses: in a data directory, in walship's spools and in a local archive.
//
// PostgreSQL decides from the mode of the data directory
// (src/common/file_perm.c): a directory with group read and execute
// (0750) means group access, and then new directories are 0750 and new
// files 0640; otherwise 0700 and 0600. Nothing is ever readable by
// others.
//
// The functions here set those modes exactly, with chmod after create,
// so the result does not depend on the umask of the process: PostgreSQL
// starts archive and restore commands with umask 0077 or 0027, but
// walship is also run by hand and from cron with umask 0022 (which
// alone would not widen 0600) or 0077 (which would narrow 0640).
package pgperm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Modes are the permission bits for new directories and files.
type Modes struct {
	Dir  fs.FileMode
	File fs.FileMode
}

// Owner is PostgreSQL's default: only the owner may read.
func Owner() Modes { return Modes{Dir: 0o700, File: 0o600} }

// Group is a cluster with group access (initdb --allow-group-access):
// the owner's group may read too.
func Group() Modes { return Modes{Dir: 0o750, File: 0o640} }

// ForMode applies PostgreSQL's rule to the mode of a data directory.
func ForMode(m fs.FileMode) Modes {
	if m.Perm()&Group().Dir == Group().Dir {
		return Group()
	}
	return Owner()
}

// Of returns the modes for new entries of the data directory dir
// (Owner when dir cannot be examined).
func Of(dir string) Modes {
	fi, err := os.Stat(dir)
	if err != nil {
		return Owner()
	}
	return ForMode(fi.Mode())
}

// Enclosing returns the modes of the data directory path is in — the
// nearest directory at or above it holding PG_VERSION and global/ — or
// Owner when it is in none.
func Enclosing(path string) Modes {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Owner()
	}
	for d := abs; ; d = filepath.Dir(d) {
		if isDataDir(d) {
			return Of(d)
		}
		if filepath.Dir(d) == d {
			return Owner()
		}
	}
}

func isDataDir(dir string) bool {
	v, err := os.Stat(filepath.Join(dir, "PG_VERSION"))
	if err != nil || !v.Mode().IsRegular() {
		return false
	}
	g, err := os.Stat(filepath.Join(dir, "global"))
	return err == nil && g.IsDir()
}

// GroupAccess reports whether m lets the owner's group read.
func (m Modes) GroupAccess() bool { return m.File&0o040 != 0 }

// Mkdir creates dir with mode m.Dir.
func (m Modes) Mkdir(dir string) error {
	if err := os.Mkdir(dir, m.Dir); err != nil {
		return err
	}
	return os.Chmod(dir, m.Dir)
}

// MkdirAll creates dir and its missing parents with mode m.Dir.
// Directories that exist keep their mode.
func (m Modes) MkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if fi.IsDir() {
			return nil
		}
		return &fs.PathError{Op: "mkdir", Path: dir, Err: errors.New("not a directory")}
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := m.MkdirAll(parent); err != nil {
			return err
		}
	}
	err := m.Mkdir(dir)
	if errors.Is(err, fs.ErrExist) {
		// Created meanwhile by someone else: fine if it is a directory.
		if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
			return nil
		}
	}
	return err
}

// OpenFile is os.OpenFile with O_CREATE and mode m.File, which an
// existing file is given too.
func (m Modes) OpenFile(name string, flag int) (*os.File, error) {
	f, err := os.OpenFile(name, flag|os.O_CREATE, m.File)
	if err != nil {
		return nil, err
	}
	if err := m.Set(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CreateTemp is os.CreateTemp with mode m.File.
func (m Modes) CreateTemp(dir, pattern string) (*os.File, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	if err := m.Set(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// WriteFile is os.WriteFile with mode m.File, which an existing file is
// given too.
func (m Modes) WriteFile(name string, data []byte) error {
	f, err := m.OpenFile(name, os.O_WRONLY|os.O_TRUNC)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Set gives the open file f mode m.File, unless it has it already.
func (m Modes) Set(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Mode().Perm() == m.File {
		return nil
	}
	return f.Chmod(m.File)
}
