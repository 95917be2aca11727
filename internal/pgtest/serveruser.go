package pgtest

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// serverOSUser is the account PostgreSQL runs as when the tests run as root;
// Debian's postgresql package creates it.
const serverOSUser = "postgres"

// serverUser is the OS identity PostgreSQL runs under: the postgres user
// when the tests run as root, the test's own user otherwise.
type serverUser struct {
	root     bool // tests run as root, so processes switch to uid/gid
	uid, gid int
}

func lookupServerUser(t testing.TB) serverUser {
	t.Helper()
	if os.Geteuid() != 0 {
		return serverUser{uid: os.Geteuid(), gid: os.Getegid()}
	}
	u, err := user.Lookup(serverOSUser)
	if err != nil {
		missing(t, "tests run as root need the %s OS user to run PostgreSQL: %v; run make deps",
			serverOSUser, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatalf("uid of %s: %v", serverOSUser, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		t.Fatalf("gid of %s: %v", serverOSUser, err)
	}
	return serverUser{root: true, uid: uid, gid: gid}
}

// apply makes cmd run as the server user, with home as its HOME so that
// nothing it does looks into root's home.
func (u serverUser) apply(cmd *exec.Cmd, home string) {
	if !u.root {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// No supplementary groups: the process gets exactly the postgres
	// user's primary group, like a login would give it.
	cmd.SysProcAttr.Credential = &syscall.Credential{
		Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{},
	}
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = setEnv(env, "HOME", home)
}

func (u serverUser) chown(path string) error {
	if !u.root {
		return nil
	}
	return os.Lchown(path, u.uid, u.gid)
}

// chownTree gives a whole tree, such as a data directory restored by a
// process running as root, to the server user.
func (u serverUser) chownTree(root string) error {
	if !u.root {
		return nil
	}
	return filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, u.uid, u.gid)
	})
}

// reachable reports whether the server user may enter dir and every
// directory above it.
func (u serverUser) reachable(dir string) error {
	if !u.root {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		perm := fi.Mode().Perm()
		var can bool
		switch {
		case int(st.Uid) == u.uid:
			can = perm&0o100 != 0
		case int(st.Gid) == u.gid:
			can = perm&0o010 != 0
		default:
			can = perm&0o001 != 0
		}
		if !can {
			return fmt.Errorf("the %s OS user cannot enter %s (mode %v)", serverOSUser, d, perm)
		}
		if parent := filepath.Dir(d); parent == d {
			return nil
		}
	}
}

// tempRoot is where the harness makes its directories: os.TempDir(), unless
// the server user could not reach it (TMPDIR inside root's home, say).
func (u serverUser) tempRoot() string {
	dir := os.TempDir()
	if u.reachable(dir) != nil {
		return "/tmp"
	}
	return dir
}

// newBaseDir makes a fresh directory, mode 0755 and owned by the server
// user, removed when the test ends. The name is kept short because a
// cluster's Unix socket lives in it and socket paths are limited to about
// 100 bytes.
func newBaseDir(t testing.TB, u serverUser) string {
	t.Helper()
	dir, err := os.MkdirTemp(u.tempRoot(), "walship-pgtest-"+shortName(t.Name())+"-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("pgtest: removing %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := u.chown(dir); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dir
}

// NewDir returns a fresh, empty directory named name, mode 0700 and owned by
// the user PostgreSQL runs as, inside a directory that user can reach. Use
// it for archives, base backup targets, restored data directories and the
// walship binary that archive_command runs. It is removed when the test
// ends.
//
// When the tests run as root, files the test itself writes there belong to
// root: make them readable (or write them with RunAsServerUser) if the
// server is to read them.
func NewDir(t testing.TB, name string) string {
	t.Helper()
	u := lookupServerUser(t)
	dir := filepath.Join(newBaseDir(t, u), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := u.chown(dir); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dir
}

// shortName turns a test name into a few characters safe in a file name.
func shortName(name string) string {
	var b strings.Builder
	for _, r := range name {
		if b.Len() >= 24 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// setEnv returns env with key set to value, replacing any earlier setting.
func setEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

// cleanEnv is the test's environment without libpq's PG* variables, which
// would otherwise quietly redirect clients and servers started here.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	return out
}
