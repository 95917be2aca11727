//go:build !linux

package fs

import "errors"

// renameNoReplace is only available on Linux; elsewhere a file system
// without hard links cannot hold an archive.
func renameNoReplace(oldpath, newpath string) error {
	return errors.ErrUnsupported
}
