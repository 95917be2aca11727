package failover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/wal"
)

// ErrRunning reports a data directory whose server is running.
var ErrRunning = errors.New("PostgreSQL is running")

// CheckStopped returns an error matching ErrRunning when a live
// postmaster holds dataDir's postmaster.pid, as pg_ctl status decides.
// A PID file left by a crash (its process gone, or the PID now used by
// another program) counts as stopped: pg_rewind recovers such a
// directory first.
func CheckStopped(dataDir string) error {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Join(dataDir, "postmaster.pid"), err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return nil // a PID file being written, or garbage: no server holds it
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return nil
	}
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		if name := strings.TrimSpace(string(comm)); name != "postgres" && name != "postmaster" {
			return nil
		}
	}
	return fmt.Errorf("%w on %s (postmaster PID %d): stop it first (pg_ctl -D %s stop -m fast); a superseded primary must not run while it is rebuilt as a standby",
		ErrRunning, dataDir, pid, dataDir)
}

// DataDirMajor reads the PostgreSQL major version from dataDir/PG_VERSION.
func DataDirMajor(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return 0, fmt.Errorf("%s is not a PostgreSQL data directory (no PG_VERSION): %w", dataDir, err)
	}
	major, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || major < 10 {
		return 0, fmt.Errorf("%s/PG_VERSION holds %q: walship supports PostgreSQL 10 and newer", dataDir, strings.TrimSpace(string(b)))
	}
	return major, nil
}

// FindBinDir returns the directory holding pg_rewind and postgres of
// PostgreSQL major: explicit when given, otherwise the first of Debian's
// /usr/lib/postgresql/MAJOR/bin, the PGDG RPM's /usr/pgsql-MAJOR/bin,
// pg_config --bindir and the directory of pg_rewind on PATH whose
// pg_rewind reports that major. pg_rewind must match the data directory's
// major, and it runs the postgres beside it (for restore_command and the
// crash recovery of an unclean target).
func FindBinDir(ctx context.Context, major int, explicit string) (string, error) {
	var candidates []string
	if explicit != "" {
		candidates = []string{explicit}
	} else {
		candidates = []string{
			fmt.Sprintf("/usr/lib/postgresql/%d/bin", major),
			fmt.Sprintf("/usr/pgsql-%d/bin", major),
		}
		if out, err := toolOutput(ctx, "pg_config", "--bindir"); err == nil {
			candidates = append(candidates, strings.TrimSpace(out))
		}
		if p, err := exec.LookPath("pg_rewind"); err == nil {
			candidates = append(candidates, filepath.Dir(p))
		}
	}
	var tried []string
	for _, dir := range candidates {
		why := checkBinDir(ctx, dir, major)
		if why == "" {
			return dir, nil
		}
		tried = append(tried, why)
	}
	if explicit != "" {
		return "", fmt.Errorf("--pg-bindir %s: %s", explicit, tried[0])
	}
	return "", fmt.Errorf("no pg_rewind of PostgreSQL %d found (%s): install PostgreSQL %d's server package or name its bin directory with --pg-bindir",
		major, strings.Join(tried, "; "), major)
}

// checkBinDir says what is wrong with dir as the bin directory of major,
// or "".
func checkBinDir(ctx context.Context, dir string, major int) string {
	for _, name := range []string{"pg_rewind", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Sprintf("%s has no %s", dir, name)
		}
	}
	out, err := toolOutput(ctx, filepath.Join(dir, "pg_rewind"), "--version")
	if err != nil {
		return fmt.Sprintf("%s/pg_rewind --version: %v", dir, err)
	}
	if got, ok := versionMajor(out); !ok || got != major {
		return fmt.Sprintf("%s/pg_rewind is %q, not PostgreSQL %d", dir, strings.TrimSpace(out), major)
	}
	return ""
}

func toolOutput(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	return string(out), err
}

// versionMajor reads the major version from "pg_rewind (PostgreSQL) 15.8".
func versionMajor(version string) (int, bool) {
	_, rest, ok := strings.Cut(version, "(PostgreSQL) ")
	if !ok {
		return 0, false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	major, err := strconv.Atoi(rest[:end])
	return major, err == nil
}

// SettleSource makes the control file of the new primary (conninfo)
// record its current timeline tli, running a CHECKPOINT there when it
// does not yet. pg_rewind reads the source's timeline from its control
// file, which a promoted server updates only at its first checkpoint
// after the promotion; before that, pg_rewind sees both servers on the
// same timeline and reports "no rewind required" for a diverged primary.
// It reports whether it ran the checkpoint.
func SettleSource(ctx context.Context, conninfo string, tli wal.TimeLineID) (bool, error) {
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return false, fmt.Errorf("invalid connection settings (--source): %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "walship standby-rejoin"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, fmt.Errorf("connect to the new primary (--source) as pg_rewind will: %w", err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").ReadAll()
	if err != nil {
		return false, fmt.Errorf("read the new primary's checkpoint timeline: %w", err)
	}
	if len(res) == 1 && len(res[0].Rows) == 1 && len(res[0].Rows[0]) == 1 {
		if got, err := strconv.ParseUint(string(res[0].Rows[0][0]), 10, 32); err == nil && wal.TimeLineID(got) >= tli {
			return false, nil
		}
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT").ReadAll(); err != nil {
		return false, fmt.Errorf("the new primary was promoted moments ago and has not yet recorded timeline %d in its control file, and CHECKPOINT there failed: %w; "+
			"run CHECKPOINT on it as a superuser (or a member of pg_checkpoint), then run standby-rejoin again", tli, err)
	}
	return true, nil
}

// RewindOptions configures Rewind.
type RewindOptions struct {
	DataDir string // the stopped old primary; restore_command must be set in its configuration
	Source  string // libpq connection string of the new primary
	BinDir  string // holds pg_rewind and postgres of the data directory's major
	// ConfigFile is the old primary's postgresql.conf when it lives
	// outside DataDir (pg_rewind --config-file, PostgreSQL 15 and newer).
	ConfigFile string
	// Output receives pg_rewind's output, and that of the
	// restore_command it runs, as it comes.
	Output io.Writer
}

// RewindResult is what a successful Rewind did.
type RewindResult struct {
	// NotNeeded: pg_rewind found the data directory already on the
	// source's history and changed nothing.
	NotNeeded bool
	Took      time.Duration
}

// RewindError is a failed pg_rewind run.
type RewindError struct {
	// Reason explains the failure to an operator, with what to do.
	Reason string
	// Impossible means the directory cannot be rewound as things are
	// (no common history, WAL gone from pg_wal and the archive, hint
	// bits not logged, ...), while a restore from a backup can still
	// make it a standby. False for failures a re-bootstrap would hit
	// too, such as an unreachable source or a failing restore_command.
	Impossible bool
	Err        error
}

func (e *RewindError) Error() string { return "pg_rewind failed: " + e.Reason }
func (e *RewindError) Unwrap() error { return e.Err }

// Rewind runs pg_rewind --restore-target-wal on the stopped data
// directory o.DataDir against o.Source, as the directory's owner when
// walship runs as root, in the data directory (where PostgreSQL runs
// restore_command too). A failure is a *RewindError that says whether a
// re-bootstrap can help.
func Rewind(ctx context.Context, o RewindOptions) (RewindResult, error) {
	start := time.Now()
	args := []string{"--target-pgdata", o.DataDir, "--source-server", o.Source, "--restore-target-wal"}
	if o.ConfigFile != "" {
		args = append(args, "--config-file", o.ConfigFile)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(o.BinDir, "pg_rewind"), args...)
	cmd.Dir = o.DataDir
	// Each fetch is one pg_rewind asks for: a prefetch helper left
	// behind would write into a directory that may be set aside next.
	cmd.Env = envWith(os.Environ(), "WALSHIP_PREFETCH", "0")
	if err := runAsOwner(cmd, o.DataDir); err != nil {
		return RewindResult{}, err
	}
	// An interrupted pg_rewind leaves the target unusable, but one that
	// is killed cannot even say so.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	var tail tailBuffer
	out := io.Writer(&tail)
	if o.Output != nil {
		out = io.MultiWriter(o.Output, &tail)
	}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	res := RewindResult{Took: time.Since(start)}
	if err == nil {
		res.NotNeeded = strings.Contains(tail.String(), "no rewind required")
		return res, nil
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("pg_rewind interrupted: %w; %s may be unusable now: run standby-rejoin again", ctx.Err(), o.DataDir)
	}
	reason, impossible := Classify(tail.String())
	return res, &RewindError{Reason: reason, Impossible: impossible, Err: err}
}

// Classify explains pg_rewind's failure from its output (PostgreSQL 13
// to 18 word these messages alike) and reports whether the rewind is
// impossible, so that a re-bootstrap from a backup is the way on.
func Classify(output string) (reason string, impossible bool) {
	last := lastError(output)
	switch {
	case strings.Contains(output, "wal_log_hints"):
		return "the old primary runs without data checksums and without wal_log_hints = on, so pg_rewind cannot tell which pages it changed; " +
			"set wal_log_hints = on on every server of the cluster (it takes a restart) so that the next rejoin can rewind", true
	case strings.Contains(output, "could not connect to server") || strings.Contains(output, "connection to server"):
		return "cannot connect to the new primary (--source): " + last + "; fix the connection string, pg_hba.conf or ~/.pgpass of the server's OS user and run standby-rejoin again", false
	case strings.Contains(output, "restore_command failed"):
		return "restore_command (walship wal-fetch) failed: " + last + "; its error is above: fix the archive settings or storage and run standby-rejoin again", false
	case strings.Contains(output, "could not get restore_command") || strings.Contains(output, "restore_command\" is not set"):
		return "pg_rewind cannot read restore_command from the old primary's configuration: " + last, false
	case strings.Contains(output, "from different systems"):
		return "the new primary belongs to another cluster (its system identifier differs): check --source", false
	case strings.Contains(output, "not compatible with this version of pg_rewind") || strings.Contains(output, "must not be in recovery"):
		return last, false
	case strings.Contains(output, "cannot be executed by"):
		return last + "; run standby-rejoin as the data directory's owner or as root", false
	case strings.Contains(output, "could not find common ancestor"):
		return "the old primary and the new one share no timeline history", true
	case strings.Contains(output, "could not restore file") || strings.Contains(output, "could not find previous WAL record") ||
		strings.Contains(output, "could not read WAL record") || strings.Contains(output, "could not open file") && strings.Contains(output, "pg_wal"):
		return "WAL the rewind needs is neither in pg_wal nor in the archive: " + last, true
	case last == "":
		return "pg_rewind failed without saying why", true
	}
	return last, true
}

// lastError is the last line of pg_rewind's output that reports an
// error, without its "pg_rewind: error: " prefix.
func lastError(output string) string {
	lines := strings.Split(strings.TrimSpace(output), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		rest, ok := strings.CutPrefix(strings.TrimSpace(lines[i]), "pg_rewind: ")
		if !ok {
			continue
		}
		for _, level := range []string{"error: ", "fatal: "} {
			if msg, ok := strings.CutPrefix(rest, level); ok {
				return msg
			}
		}
	}
	return ""
}

// runAsOwner makes cmd run as dataDir's owner when walship runs as root
// (PostgreSQL's tools refuse to run as root); otherwise walship must be
// the owner.
func runAsOwner(cmd *exec.Cmd, dataDir string) error {
	fi, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	uid, gid := int(st.Uid), int(st.Gid)
	euid := os.Geteuid()
	switch {
	case euid != 0 && uid != euid:
		return fmt.Errorf("%s belongs to uid %d: run standby-rejoin as that user (the PostgreSQL server's) or as root", dataDir, uid)
	case euid != 0:
		return nil
	case uid == 0:
		return fmt.Errorf("%s belongs to root, and PostgreSQL never runs as root: give it to the server's OS user (chown -R postgres: %s)", dataDir, dataDir)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		if g, err := strconv.Atoi(u.Gid); err == nil {
			cred.Gid = uint32(g)
		}
		if ids, err := u.GroupIds(); err == nil {
			for _, id := range ids {
				if g, err := strconv.Atoi(id); err == nil {
					cred.Groups = append(cred.Groups, uint32(g))
				}
			}
		}
		// libpq reads ~/.pgpass of the user it runs as.
		cmd.Env = envWith(cmd.Env, "HOME", u.HomeDir)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	return nil
}

func envWith(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

// tailBuffer keeps the last 64 kB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	const limit = 64 << 10
	t.b = append(t.b, p...)
	if len(t.b) > limit {
		t.b = append([]byte(nil), t.b[len(t.b)-limit:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// ConfigFile is a configuration file at the top of a data directory.
type ConfigFile struct {
	Name     string
	Data     []byte
	Mode     fs.FileMode
	UID, GID int
}

// ReadConfigFiles reads the regular files named *.conf at the top of
// dataDir (postgresql.conf, postgresql.auto.conf, pg_hba.conf,
// pg_ident.conf and files they include from there). pg_rewind and a
// restored backup bring the new primary's copies; a server rebuilt as a
// standby keeps its own (port, listen addresses, access rules, ...).
func ReadConfigFiles(dataDir string) ([]ConfigFile, error) {
	entries, err := os.ReadDir(dataDir)
	if err != nil {
		return nil, err
	}
	var files []ConfigFile
	var total int
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".conf") {
			continue
		}
		path := filepath.Join(dataDir, e.Name())
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		if total += len(data); total > 64<<20 {
			return nil, fmt.Errorf("the *.conf files in %s hold more than 64 MB: that is not configuration", dataDir)
		}
		f := ConfigFile{Name: e.Name(), Data: data, Mode: fi.Mode().Perm(), UID: -1, GID: -1}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			f.UID, f.GID = int(st.Uid), int(st.Gid)
		}
		files = append(files, f)
	}
	return files, nil
}

// WriteConfigFiles puts files back into dataDir, each replaced
// atomically with its mode and, as root, its owner.
func WriteConfigFiles(dataDir string, files []ConfigFile) error {
	for _, f := range files {
		if err := writeConfigFile(dataDir, f); err != nil {
			return fmt.Errorf("restore %s: %w", filepath.Join(dataDir, f.Name), err)
		}
	}
	return fsyncDir(dataDir)
}

func writeConfigFile(dir string, f ConfigFile) (err error) {
	tmp, err := os.CreateTemp(dir, ".walship-"+f.Name+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(f.Mode); err != nil {
		return err
	}
	if os.Geteuid() == 0 && f.UID >= 0 {
		if err := tmp.Chown(f.UID, f.GID); err != nil {
			return err
		}
	}
	if _, err := tmp.Write(f.Data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, f.Name))
}

func fsyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// HasTablespaces reports whether dataDir has tablespaces (links in
// pg_tblspc), which a re-bootstrap would restore over the old
// primary's.
func HasTablespaces(dataDir string) bool {
	entries, err := os.ReadDir(filepath.Join(dataDir, "pg_tblspc"))
	return err == nil && len(entries) > 0
}

// MoveAside renames dataDir to dataDir.rejoin-TIME (never deleting
// anything) and creates an empty dataDir with the old one's mode and
// owner, ready for a restore. It returns where the old directory went.
func MoveAside(dataDir string, now time.Time) (string, error) {
	fi, err := os.Stat(dataDir)
	if err != nil {
		return "", err
	}
	base := dataDir + ".rejoin-" + now.UTC().Format("20060102T150405Z")
	aside := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(aside); errors.Is(err, os.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(dataDir, aside); err != nil {
		return "", fmt.Errorf("move %s aside: %w; move it away yourself (it may be a mount point), then run walship backup-fetch --primary-conninfo SOURCE LATEST %s", dataDir, err, dataDir)
	}
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		return aside, fmt.Errorf("create an empty %s (the old one is at %s): %w", dataDir, aside, err)
	}
	if err := os.Chmod(dataDir, fi.Mode().Perm()); err != nil {
		return aside, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		if err := os.Chown(dataDir, int(st.Uid), int(st.Gid)); err != nil {
			return aside, err
		}
	}
	return aside, fsyncDir(filepath.Dir(dataDir))
}

// NewestBackupOn returns the newest backup a standby of the server on
// timeline tli (whose history file holds history) can start from: a
// backup of the same cluster and major version whose start and end lie
// on that history. A backup taken on an older timeline before it
// branched off qualifies; one taken on a timeline that left the history
// (the old primary's writes after the promotion) does not.
func NewestBackupOn(backups []basebackup.Backup, sysID uint64, major int, tli wal.TimeLineID, history []wal.HistoryEntry) (basebackup.Backup, error) {
	id := strconv.FormatUint(sysID, 10)
	for i := len(backups) - 1; i >= 0; i-- {
		b := backups[i]
		stopTLI := b.StopTimeline
		if stopTLI == 0 {
			stopTLI = b.Timeline
		}
		if b.SystemID != id || b.MajorVersion() != major || b.Timeline > tli || stopTLI > tli {
			continue
		}
		if wal.TimelineAt(history, tli, b.StartLSN) == b.Timeline && wal.TimelineAt(history, tli, b.StopLSN) == stopTLI {
			return b, nil
		}
	}
	return basebackup.Backup{}, fmt.Errorf("%w: no backup in the archive lies on the history of timeline %d, the new primary's: take one with walship backup-push --pg SOURCE, then run standby-rejoin again",
		basebackup.ErrNotFound, tli)
}
