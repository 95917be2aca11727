package restore

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/walship/walship/internal/pgtest"
)

func TestGUCQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `''`},
		{"walship wal-fetch %f %p", `'walship wal-fetch %f %p'`},
		{"it's", `'it''s'`},
		{`''`, `''''''`},
		{`C:\wal`, `'C:\\wal'`},
		{`a\'b`, `'a\\''b'`},
		{`\n is not a newline`, `'\\n is not a newline'`},
		{"tab\there  and spaces ", "'tab\there  and spaces '"},
		{"/usr/bin/walship --repo 's3://b/p q' wal-fetch %f %p", `'/usr/bin/walship --repo ''s3://b/p q'' wal-fetch %f %p'`},
		{"ünïcödé", "'ünïcödé'"},
	} {
		if got := gucQuote(tc.in); got != tc.want {
			t.Errorf("gucQuote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestRecoverySettingsValidate(t *testing.T) {
	yes := true
	base := RecoverySettings{RestoreCommand: "walship wal-fetch %f %p"}
	with := func(f func(*RecoverySettings)) RecoverySettings {
		s := base
		f(&s)
		return s
	}
	for _, tc := range []struct {
		name string
		s    RecoverySettings
		want string // substring of the error; "" means valid
	}{
		{"disaster recovery", base, ""},
		{"standby", with(func(s *RecoverySettings) { s.Standby = true; s.TargetTimeline = "latest" }), ""},
		{"hot standby", with(func(s *RecoverySettings) {
			s.Standby, s.PrimaryConnInfo, s.PrimarySlotName = true, "host=db1 port=5432 user=replicator application_name='standby 2'", "standby_2"
		}), ""},
		{"streaming only", RecoverySettings{Standby: true, PrimaryConnInfo: "postgresql://replicator@db1/postgres?sslmode=require"}, ""},
		{"time target", with(func(s *RecoverySettings) {
			s.TargetTime, s.TargetAction, s.TargetInclusive = "2026-11-22 03:00:00+00", "promote", &yes
		}), ""},
		{"RFC 3339 time", with(func(s *RecoverySettings) { s.TargetTime = "2026-11-22T03:00:00.123Z" }), ""},
		{"offset without colon", with(func(s *RecoverySettings) { s.TargetTime = "2026-11-22 03:00:00-0530" }), ""},
		{"LSN target", with(func(s *RecoverySettings) { s.TargetLSN, s.TargetAction = "16/B374D848", "shutdown" }), ""},
		{"name target", with(func(s *RecoverySettings) { s.TargetName, s.TargetAction = "before upgrade", "pause" }), ""},
		{"XID target", with(func(s *RecoverySettings) { s.TargetXID = "4000000000" }), ""},
		{"promote without target", with(func(s *RecoverySettings) { s.TargetAction = "promote" }), ""},
		{"timeline number", with(func(s *RecoverySettings) { s.TargetTimeline = "3" }), ""},
		{"timeline current", with(func(s *RecoverySettings) { s.TargetTimeline = "current" }), ""},

		{"two targets", with(func(s *RecoverySettings) { s.TargetTime, s.TargetLSN = "2026-11-22 03:00:00+00", "0/3000000" }), "keep one of them"},
		{"time without zone", with(func(s *RecoverySettings) { s.TargetTime = "2026-11-22 03:00:00" }), "zone offset"},
		{"time nonsense", with(func(s *RecoverySettings) { s.TargetTime = "yesterday" }), "zone offset"},
		{"bad LSN", with(func(s *RecoverySettings) { s.TargetLSN = "3000000" }), "invalid LSN"},
		{"XID not a number", with(func(s *RecoverySettings) { s.TargetXID = "0x1000" }), "decimal number"},
		{"reserved XID", with(func(s *RecoverySettings) { s.TargetXID = "2" }), "decimal number"},
		{"long name", with(func(s *RecoverySettings) { s.TargetName = strings.Repeat("n", 64) }), "at most 63 bytes"},
		{"unknown action", with(func(s *RecoverySettings) { s.TargetTime, s.TargetAction = "2026-11-22T03:00:00Z", "stop" }), "use promote, pause or shutdown"},
		{"pause without target", with(func(s *RecoverySettings) { s.TargetAction = "pause" }), "none is set"},
		{"action on a standby without target", with(func(s *RecoverySettings) { s.Standby, s.TargetAction = true, "promote" }), "none is set"},
		{"inclusive without target", with(func(s *RecoverySettings) { s.TargetInclusive = &yes }), "inclusive"},
		{"inclusive with a name", with(func(s *RecoverySettings) { s.TargetName, s.TargetInclusive = "x", &yes }), "inclusive"},
		{"timeline zero", with(func(s *RecoverySettings) { s.TargetTimeline = "0" }), "timeline"},
		{"timeline word", with(func(s *RecoverySettings) { s.TargetTimeline = "newest" }), "timeline"},
		{"no restore_command", RecoverySettings{}, "needs a restore_command"},
		{"standby with no source", RecoverySettings{Standby: true}, "nowhere to read WAL"},
		{"conninfo without standby", with(func(s *RecoverySettings) { s.PrimaryConnInfo = "host=db1" }), "only by a standby"},
		{"password", with(func(s *RecoverySettings) { s.Standby, s.PrimaryConnInfo = true, "host=db1 password=s3cret user=r" }), "~/.pgpass"},
		{"password with spaces", with(func(s *RecoverySettings) { s.Standby, s.PrimaryConnInfo = true, "host=db1 password = 'a b'" }), "~/.pgpass"},
		{"sslpassword", with(func(s *RecoverySettings) { s.Standby, s.PrimaryConnInfo = true, "host=db1 sslpassword=x" }), "~/.pgpass"},
		{"password in a URI", with(func(s *RecoverySettings) { s.Standby, s.PrimaryConnInfo = true, "postgresql://r:s3cret@db1/postgres" }), "~/.pgpass"},
		{"password in a URI query", with(func(s *RecoverySettings) {
			s.Standby, s.PrimaryConnInfo = true, "postgres://db1/postgres?password=s3cret"
		}), "~/.pgpass"},
		{"password-like value is fine", with(func(s *RecoverySettings) {
			s.Standby, s.PrimaryConnInfo = true, "host=db1 application_name='password=x' passfile=/var/lib/postgresql/.pgpass"
		}), ""},
		{"bad conninfo", with(func(s *RecoverySettings) { s.Standby, s.PrimaryConnInfo = true, "host db1" }), `missing "="`},
		{"unterminated conninfo", with(func(s *RecoverySettings) { s.Standby, s.PrimaryConnInfo = true, "host='db1" }), "unterminated"},
		{"slot without conninfo", with(func(s *RecoverySettings) { s.Standby, s.PrimarySlotName = true, "s1" }), "needs a primary_conninfo"},
		{"bad slot name", with(func(s *RecoverySettings) {
			s.Standby, s.PrimaryConnInfo, s.PrimarySlotName = true, "host=db1", "Standby-1"
		}), "lower-case"},
		{"newline", with(func(s *RecoverySettings) { s.RestoreCommand = "walship wal-fetch %f %p\nrm -rf /" }), "line break"},
		{"credentials on the command line", with(func(s *RecoverySettings) {
			s.RestoreCommand = "AWS_SECRET_ACCESS_KEY=x walship wal-fetch %f %p"
		}), "environment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("Validate accepted %+v, want an error with %q", tc.s, tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("Validate: %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}

// newDataDir makes a directory that passes for a data directory.
func newDataDir(t *testing.T, mode os.FileMode, autoConf string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if autoConf != "" {
		if err := os.WriteFile(filepath.Join(dir, autoConfName), []byte(autoConf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestWriteRecoverySettingsBlock(t *testing.T) {
	no := false
	inherited := autoConfHeader +
		"work_mem = '64MB'\n" +
		"primary_conninfo = 'host=old-primary user=replicator'\n" +
		"  Recovery_Target_Name = 'from an earlier restore'\n" +
		"recovery_target_lsn='0/1000000'\n" +
		"max_connections = 200\n" +
		"restore_command_extra = 'not ours'\n"
	dir := newDataDir(t, 0o700, inherited)
	s := RecoverySettings{
		RestoreCommand:  `/usr/bin/walship --repo 's3://bucket/it''s' wal-fetch %f %p`,
		TargetTime:      "2026-11-22 03:00:00+00",
		TargetInclusive: &no,
		TargetAction:    "promote",
		TargetTimeline:  "latest",
	}
	if err := WriteRecoverySettings(dir, s); err != nil {
		t.Fatal(err)
	}
	want := autoConfHeader +
		"work_mem = '64MB'\n" +
		"# replaced by walship backup-fetch: primary_conninfo = 'host=old-primary user=replicator'\n" +
		"# replaced by walship backup-fetch:   Recovery_Target_Name = 'from an earlier restore'\n" +
		"# replaced by walship backup-fetch: recovery_target_lsn='0/1000000'\n" +
		"max_connections = 200\n" +
		"restore_command_extra = 'not ours'\n" +
		"# recovery settings written by walship backup-fetch\n" +
		"# backup-fetch rewrites the lines up to the end marker each time it runs.\n" +
		`restore_command = '/usr/bin/walship --repo ''s3://bucket/it''''s'' wal-fetch %f %p'` + "\n" +
		"recovery_target = ''\n" +
		"recovery_target_lsn = ''\n" +
		"recovery_target_name = ''\n" +
		"recovery_target_xid = ''\n" +
		"recovery_target_time = '2026-11-22 03:00:00+00'\n" +
		"recovery_target_inclusive = 'off'\n" +
		"recovery_target_action = 'promote'\n" +
		"recovery_target_timeline = 'latest'\n" +
		"# end of recovery settings written by walship backup-fetch\n"
	got := readFile(t, filepath.Join(dir, autoConfName))
	if got != want {
		t.Fatalf("postgresql.auto.conf:\n%s\nwant:\n%s", got, want)
	}
	if !exists(filepath.Join(dir, recoverySignal)) || exists(filepath.Join(dir, standbySignal)) {
		t.Fatal("want recovery.signal and no standby.signal")
	}

	// Again: nothing changes.
	if err := WriteRecoverySettings(dir, s); err != nil {
		t.Fatal(err)
	}
	if again := readFile(t, filepath.Join(dir, autoConfName)); again != got {
		t.Fatalf("second run changed postgresql.auto.conf:\n%s", again)
	}

	// A standby instead: the block is replaced, the signal switched.
	st := RecoverySettings{Standby: true, RestoreCommand: "walship wal-fetch %f %p",
		PrimaryConnInfo: `host=db1 user=replicator application_name='it\'s \\ me'`, PrimarySlotName: "standby_1"}
	if err := WriteRecoverySettings(dir, st); err != nil {
		t.Fatal(err)
	}
	got = readFile(t, filepath.Join(dir, autoConfName))
	if strings.Count(got, recoveryBlockStart) != 1 || strings.Count(got, recoveryBlockEnd) != 1 {
		t.Fatalf("want exactly one block:\n%s", got)
	}
	for _, line := range []string{
		"restore_command = 'walship wal-fetch %f %p'\n",
		`primary_conninfo = 'host=db1 user=replicator application_name=''it\\''s \\\\ me'''` + "\n",
		"primary_slot_name = 'standby_1'\n",
	} {
		if !strings.Contains(got, line) {
			t.Errorf("missing %q in:\n%s", line, got)
		}
	}
	if strings.Contains(got, "recovery_target_time = '2026") || strings.Contains(got, "recovery_target_action") {
		t.Errorf("settings of the previous block survived:\n%s", got)
	}
	if !exists(filepath.Join(dir, standbySignal)) || exists(filepath.Join(dir, recoverySignal)) {
		t.Fatal("want standby.signal and no recovery.signal")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".walship-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestWriteRecoverySettingsEdgeCases(t *testing.T) {
	s := RecoverySettings{RestoreCommand: "walship wal-fetch %f %p"}
	t.Run("no postgresql.auto.conf", func(t *testing.T) {
		dir := newDataDir(t, 0o700, "")
		if err := WriteRecoverySettings(dir, s); err != nil {
			t.Fatal(err)
		}
		got := readFile(t, filepath.Join(dir, autoConfName))
		if !strings.HasPrefix(got, autoConfHeader+recoveryBlockStart+"\n") {
			t.Fatalf("got:\n%s", got)
		}
	})
	t.Run("no final newline", func(t *testing.T) {
		dir := newDataDir(t, 0o700, "work_mem = '1MB'")
		if err := WriteRecoverySettings(dir, s); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(dir, autoConfName)); !strings.HasPrefix(got, "work_mem = '1MB'\n"+recoveryBlockStart+"\n") {
			t.Fatalf("got:\n%s", got)
		}
	})
	t.Run("markers lost to ALTER SYSTEM", func(t *testing.T) {
		// ALTER SYSTEM rewrites the file without comments, leaving the
		// settings of an old block as plain lines.
		dir := newDataDir(t, 0o700, "restore_command = 'old'\nrecovery_target_name = 'old'\n")
		if err := WriteRecoverySettings(dir, s); err != nil {
			t.Fatal(err)
		}
		got := readFile(t, filepath.Join(dir, autoConfName))
		if !strings.HasPrefix(got, "# replaced by walship backup-fetch: restore_command = 'old'\n# replaced by walship backup-fetch: recovery_target_name = 'old'\n") {
			t.Fatalf("got:\n%s", got)
		}
	})
	t.Run("start marker without end", func(t *testing.T) {
		dir := newDataDir(t, 0o700, "a = 1\n"+recoveryBlockStart+"\nrestore_command = 'old'\nb = 2\n")
		if err := WriteRecoverySettings(dir, s); err != nil {
			t.Fatal(err)
		}
		got := readFile(t, filepath.Join(dir, autoConfName))
		if !strings.HasPrefix(got, "a = 1\n# replaced by walship backup-fetch: restore_command = 'old'\nb = 2\n"+recoveryBlockStart+"\n") {
			t.Fatalf("got:\n%s", got)
		}
	})
	t.Run("invalid settings write nothing", func(t *testing.T) {
		dir := newDataDir(t, 0o700, "x = 1\n")
		bad := RecoverySettings{Standby: true, PrimaryConnInfo: "host=db1 password=hunter2"}
		err := WriteRecoverySettings(dir, bad)
		if err == nil || !strings.Contains(err.Error(), "PGPASSFILE") {
			t.Fatalf("want the password refused, got %v", err)
		}
		if got := readFile(t, filepath.Join(dir, autoConfName)); got != "x = 1\n" || exists(filepath.Join(dir, standbySignal)) {
			t.Fatalf("something was written: %q", got)
		}
	})
	t.Run("not a data directory", func(t *testing.T) {
		err := WriteRecoverySettings(t.TempDir(), s)
		if err == nil || !strings.Contains(err.Error(), "PG_VERSION") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestWriteRecoverySettingsModes(t *testing.T) {
	for _, tc := range []struct {
		dirMode, fileMode os.FileMode
	}{
		{0o700, 0o600},
		{0o750, 0o640},
		{0o755, 0o640}, // not a mode PostgreSQL accepts, but group access all the same
		{0o710, 0o600},
	} {
		dir := newDataDir(t, tc.dirMode, "x = 1\n")
		if err := WriteRecoverySettings(dir, RecoverySettings{Standby: true, RestoreCommand: "true"}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{autoConfName, standbySignal} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.fileMode {
				t.Errorf("data directory %v: %s has mode %v, want %v", tc.dirMode, name, fi.Mode().Perm(), tc.fileMode)
			}
		}
	}
}

func TestWriteRecoverySettingsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root can give files away")
	}
	const uid, gid = 4321, 4322
	dir := newDataDir(t, 0o700, "x = 1\n")
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := WriteRecoverySettings(dir, RecoverySettings{RestoreCommand: "true"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{autoConfName, recoverySignal} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s is owned by %d:%d, want %d:%d", name, st.Uid, st.Gid, uid, gid)
		}
	}
}

// TestRecoverySettingsPostgresReads writes settings into real data
// directories and asks PostgreSQL (postgres -C) what it reads back: the
// quoting holds, the block wins over inherited settings, and the targets
// do not clash.
func TestRecoverySettingsPostgresReads(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	restoreCommand := `/opt/wal ship/bin/walship --repo 's3://bucket/it''s here' --config "C:\conf\walship.conf" wal-fetch %f %p  # \n tab	end`
	for _, major := range []int{13, 15, 17, 18} {
		t.Run("pg"+strconv.Itoa(major), func(t *testing.T) {
			t.Parallel()
			c := pgtest.Start(t, pgtest.Options{Major: major})
			// What a backup of a standby restored earlier to a target
			// would carry in its postgresql.auto.conf.
			c.Psql(t, `ALTER SYSTEM SET primary_conninfo = 'host=old-primary user=replicator';
ALTER SYSTEM SET recovery_target_name = 'old restore point';
ALTER SYSTEM SET work_mem = '7MB';`)
			c.Stop(t)
			dir := c.DataDir()
			postgresC := func(name string) string {
				t.Helper()
				cmd := exec.Command(filepath.Join(pgtest.BinDir(t, major), "postgres"), "-C", name, "-D", dir)
				cmd.Dir = filepath.Dir(dir)
				c.RunAsServerUser(cmd)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("postgres -C %s: %v: %s\npostgresql.auto.conf:\n%s", name, err, stderr.String(), readFile(t, filepath.Join(dir, autoConfName)))
				}
				return strings.TrimSuffix(string(out), "\n")
			}

			no := false
			pitr := RecoverySettings{RestoreCommand: restoreCommand, TargetLSN: "0/3000028",
				TargetInclusive: &no, TargetAction: "shutdown", TargetTimeline: "1"}
			if err := WriteRecoverySettings(dir, pitr); err != nil {
				t.Fatal(err)
			}
			if err := WriteRecoverySettings(dir, pitr); err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]string{
				"restore_command":           restoreCommand,
				"recovery_target_lsn":       "0/3000028",
				"recovery_target_name":      "",
				"recovery_target_inclusive": "off",
				"recovery_target_action":    "shutdown",
				"recovery_target_timeline":  "1",
				"primary_conninfo":          "",
				"work_mem":                  "7168", // kB, as postgres -C prints it
			} {
				if got := postgresC(name); got != want {
					t.Errorf("%s: PostgreSQL reads %q, want %q", name, got, want)
				}
			}

			standby := RecoverySettings{Standby: true, RestoreCommand: "walship wal-fetch %f %p",
				PrimaryConnInfo: `host=127.0.0.1 user=replicator application_name='it\'s standby 1'`,
				PrimarySlotName: "standby_1", ArchiveCleanupCommand: `walship wal-cleanup %r`, TargetTimeline: "latest"}
			if err := WriteRecoverySettings(dir, standby); err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]string{
				"restore_command":          standby.RestoreCommand,
				"primary_conninfo":         standby.PrimaryConnInfo,
				"primary_slot_name":        "standby_1",
				"archive_cleanup_command":  standby.ArchiveCleanupCommand,
				"recovery_target_lsn":      "",
				"recovery_target_action":   "pause",
				"recovery_target_timeline": "latest",
			} {
				if got := postgresC(name); got != want {
					t.Errorf("%s: PostgreSQL reads %q, want %q", name, got, want)
				}
			}
			if !exists(filepath.Join(dir, standbySignal)) || exists(filepath.Join(dir, recoverySignal)) {
				t.Error("want standby.signal only")
			}

			// The control: PostgreSQL does refuse a target cleared after
			// another one was set, which is why the block clears first.
			conf := filepath.Join(dir, autoConfName)
			if err := os.WriteFile(conf, []byte("recovery_target_lsn = '0/3000028'\nrecovery_target_name = ''\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(filepath.Join(pgtest.BinDir(t, major), "postgres"), "-C", "recovery_target_lsn", "-D", dir)
			cmd.Dir = filepath.Dir(dir)
			c.RunAsServerUser(cmd)
			if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "multiple recovery targets") {
				t.Errorf("postgres -C accepted a target cleared after another: %v\n%s", err, out)
			}
		})
	}
}
