package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/fs"
	"github.com/walship/walship/storage/s3"
)

// app holds the state of one walship run; there is no package-level state.
type app struct {
	cli    *cli.App
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger

	fetchDir string // wal-fetch's data directory, for its exit code
	// requests reports the storage requests sent, when the backend
	// counts them (S3), for the debug line at exit.
	requests func() map[string]int64
}

// Global flag names; the config file uses the same keys.
const (
	flagRepo           = "repo"
	flagConfig         = "config"
	flagCompress       = "compress"
	flagS3Endpoint     = "s3-endpoint"
	flagS3PathStyle    = "s3-path-style"
	flagS3Region       = "s3-region"
	flagLogLevel       = "log-level"
	flagLogFormat      = "log-format"
	flagStorageTimeout = "storage-timeout"
	flagStorageRetries = "storage-retries"
	flagCacheDir       = "cache-dir"
	flagS3CAFile       = "s3-ca-file"
	flagS3AllowHTTP    = "s3-allow-http"
	flagS3SSE          = "s3-sse"
	flagS3SSEKMSKeyID  = "s3-sse-kms-key-id"
	flagObjectLockDays = "object-lock-days"
	flagObjectLockMode = "object-lock-mode"
)

const appDescription = `walship ships PostgreSQL WAL to an archive — a local directory or
S3-compatible object storage — and brings it back for recovery.

postgresql.conf on the primary (archive into a local directory):

   archive_mode = on
   archive_command = 'walship --repo file:///var/lib/walship/archive wal-push %p'

or into S3 (credentials come from the environment of the PostgreSQL
server or a config file readable by its OS user, never from this line):

   archive_command = 'walship --config /etc/walship.conf wal-push %p'

   # /etc/walship.conf
   repo = s3://my-bucket/clusters/main
   s3-endpoint = https://minio.example.net:9000   # omit for AWS S3
   compress = zstd

on a server recovering from the archive (recovery.signal or standby.signal):

   restore_command = 'walship --config /etc/walship.conf wal-fetch %f %p'

Base backups come from "walship backup-push" (cron); "walship backup-fetch"
turns one into a disaster-recovery restore, a point-in-time recovery or a
new standby, recovery settings included; "walship backup-delete" applies
retention (dry run unless --confirm) and "walship wal-verify" checks the
archive for gaps.

With --encrypt every new object is encrypted on this host (age); a host
that only pushes needs just the public key (--encrypt-recipient-file),
hosts that restore the secret key (--decrypt-identity-file; create one
with "walship keygen"). Keys come from files or the environment, never
from the command line.

Every setting can also come from the environment (WALSHIP_REPO,
WALSHIP_COMPRESS, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, …).
Command-line flags win over the environment, which wins over the config
file. Flags go before the command's arguments.`

func newApp(stdout, stderr io.Writer) *app {
	a := &app{stdout: stdout, stderr: stderr, log: slog.New(slog.NewTextHandler(stderr, nil))}
	a.cli = &cli.App{
		Name:                   "walship",
		Usage:                  "ship PostgreSQL WAL to an archive and restore it",
		Description:            appDescription,
		Writer:                 stdout,
		ErrWriter:              stderr,
		HideHelpCommand:        true,
		UseShortOptionHandling: false,
		Suggest:                true,
		ExitErrHandler:         func(*cli.Context, error) {}, // run maps errors to exit codes
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError("%v (see walship --help)", err)
		},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: flagRepo, EnvVars: []string{"WALSHIP_REPO"}, Usage: "archive `URL`: file:///abs/dir or s3://bucket/prefix"},
			&cli.StringFlag{Name: flagConfig, EnvVars: []string{"WALSHIP_CONFIG"}, Usage: "read settings from `FILE` (lines \"key = value\", keys as the global flags)"},
			&cli.StringFlag{Name: flagCompress, EnvVars: []string{"WALSHIP_COMPRESS"}, Value: "zstd", Usage: "compression for new objects: " + strings.Join(codec.Names(), ", ") + " (any is read back)"},
			&cli.StringFlag{Name: flagS3Endpoint, EnvVars: []string{"AWS_ENDPOINT_URL"}, Usage: "S3-compatible endpoint `URL` (MinIO, Ceph, …); empty for AWS"},
			&cli.BoolFlag{Name: flagS3PathStyle, EnvVars: []string{"WALSHIP_S3_PATH_STYLE"}, Usage: "path-style S3 addressing (most self-hosted S3 servers need it)"},
			&cli.StringFlag{Name: flagS3Region, EnvVars: []string{"AWS_REGION"}, Usage: "S3 `REGION` (default us-east-1 when an endpoint is set)"},
			&cli.StringFlag{Name: flagLogLevel, EnvVars: []string{"WALSHIP_LOG_LEVEL"}, Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: flagLogFormat, EnvVars: []string{"WALSHIP_LOG_FORMAT"}, Value: "text", Usage: "log format on stderr: text or json"},
			&cli.DurationFlag{Name: flagStorageTimeout, EnvVars: []string{"WALSHIP_STORAGE_TIMEOUT"}, Value: 2 * time.Minute, Usage: "time limit of one storage request attempt"},
			&cli.IntFlag{Name: flagStorageRetries, EnvVars: []string{"WALSHIP_STORAGE_RETRIES"}, Value: 5, Usage: "attempts per storage request before giving up (with backoff)"},
			&cli.StringFlag{Name: flagCacheDir, EnvVars: []string{"WALSHIP_CACHE_DIR"}, Usage: "`DIR` for small local caches (default: the user cache dir)"},
			&cli.StringFlag{Name: flagS3CAFile, EnvVars: []string{"WALSHIP_S3_CA_FILE"}, Usage: "trust the CA certificates in PEM `FILE` for the S3 endpoint, besides the system's (TLS is always verified)"},
			&cli.BoolFlag{Name: flagS3AllowHTTP, EnvVars: []string{"WALSHIP_S3_ALLOW_HTTP"}, Usage: "allow a plain http:// S3 endpoint on another machine (credentials and WAL then cross the network in clear; http to loopback is always allowed)"},
			&cli.StringFlag{Name: flagS3SSE, EnvVars: []string{"WALSHIP_S3_SSE"}, Usage: "have the S3 server encrypt new objects at rest, `MODE` AES256 (SSE-S3) or aws:kms (SSE-KMS); default: the bucket's setting"},
			&cli.IntFlag{Name: flagObjectLockDays, EnvVars: []string{"WALSHIP_OBJECT_LOCK_DAYS"}, Usage: "S3 only: lock every object walship writes against deletion and overwrite for `N` days (S3 Object Lock; the bucket must have been created with object locking); 0: off"},
			&cli.StringFlag{Name: flagObjectLockMode, EnvVars: []string{"WALSHIP_OBJECT_LOCK_MODE"}, Value: "compliance", Usage: "Object Lock `MODE` with --object-lock-days: compliance (nobody, not even the account's root user, can delete a locked object or shorten its lock; what an archive that must survive stolen credentials needs) or governance (a credential with s3:BypassGovernanceRetention can still delete it or shorten its lock)"},
			&cli.StringFlag{Name: flagS3SSEKMSKeyID, EnvVars: []string{"WALSHIP_S3_SSE_KMS_KEY_ID"}, Usage: "KMS key `ID` (or ARN, alias) for --s3-sse aws:kms; default: the account's S3 key"},
		},
		Before: a.before,
		Commands: []*cli.Command{
			a.walPushCommand(),
			a.walFetchCommand(),
			a.walPrefetchCommand(),
			a.walCleanupCommand(),
			a.walVerifyCommand(),
			a.walStreamCommand(),
			a.backupPushCommand(),
			a.backupListCommand(),
			a.backupFetchCommand(),
			a.backupDeleteCommand(),
			a.backupMarkCommand(),
			a.standbyPromoteCommand(),
			a.standbyRejoinCommand(),
			a.keygenCommand(),
		},
	}
	a.cli.Flags = append(a.cli.Flags, encryptionFlags()...)
	a.cli.Flags = append(a.cli.Flags, fenceFlags()...)
	return a
}

// before applies the config file and sets up logging.
func (a *app) before(c *cli.Context) error {
	if path := c.String(flagConfig); path != "" {
		if err := applyConfig(c, path); err != nil {
			return withCode(exitUsage, err)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String(flagLogLevel))); err != nil {
		return usageError("--log-level %q: use debug, info, warn or error", c.String(flagLogLevel))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.String(flagLogFormat) {
	case "text":
		a.log = slog.New(slog.NewTextHandler(a.stderr, opts))
	case "json":
		a.log = slog.New(slog.NewJSONHandler(a.stderr, opts))
	default:
		return usageError("--log-format %q: use text or json", c.String(flagLogFormat))
	}
	a.log = a.log.With("pid", os.Getpid())
	return nil
}

func (a *app) logError(err error) {
	a.log.Error(err.Error())
}

// logResources logs the process's peak memory at debug level, for
// capacity planning (and the benchmark). VmHWM is read from /proc because
// getrusage reports the parent's peak for processes started by vfork.
func (a *app) logResources() {
	if !a.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			args := []any{"peak_rss", kb << 10}
			if a.requests != nil {
				for _, kind := range []string{"PUT", "GET", "HEAD", "LIST", "POST", "DELETE"} {
					args = append(args, "requests_"+strings.ToLower(kind), a.requests()[kind])
				}
			}
			a.log.Debug("resources", args...)
		}
	}
}

// applyConfig reads "key = value" lines from path and sets every global
// flag that neither the command line nor the environment set.
func applyConfig(c *cli.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read config file: %w (check --config/WALSHIP_CONFIG and that this OS user can read it)", err)
	}
	defer f.Close()
	known := map[string]bool{}
	for _, fl := range c.App.Flags {
		known[fl.Names()[0]] = true
	}
	delete(known, flagConfig)
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if i := strings.Index(text, " #"); i >= 0 {
			text = strings.TrimSpace(text[:i])
		}
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, value, ok := strings.Cut(text, "=")
		key, value = strings.TrimSpace(key), strings.Trim(strings.TrimSpace(value), `"'`)
		if !ok || key == "" {
			// The line is not shown: it may hold a secret put there by mistake.
			return fmt.Errorf("config file %s line %d: want \"key = value\"", path, line)
		}
		if !known[key] {
			return fmt.Errorf("config file %s line %d: unknown key %q (known: %s)", path, line, key, strings.Join(sortedKeys(known), ", "))
		}
		if c.IsSet(key) {
			continue
		}
		if err := c.Set(key, value); err != nil {
			return fmt.Errorf("config file %s line %d: %s: %v", path, line, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read config file %s: %w", path, err)
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// retryOptions are the storage retry settings from the global flags.
func retryOptions(c *cli.Context, log *slog.Logger) storage.RetryOptions {
	o := storage.DefaultRetryOptions()
	o.Timeout = c.Duration(flagStorageTimeout)
	o.Attempts = c.Int(flagStorageRetries)
	o.Logger = log
	return o
}

// openRepoCodec is openRepo for commands that also write: the archive
// and the codec of --compress.
func (a *app) openRepoCodec(c *cli.Context) (storage.Storage, codec.Codec, error) {
	cd, err := compression(c)
	if err != nil {
		return nil, codec.Codec{}, err
	}
	s, err := a.openRepo(c)
	return s, cd, err
}

// openRepo opens the archive named by --repo, with timeouts and retries
// on every call.
func (a *app) openRepo(c *cli.Context) (storage.Storage, error) {
	raw := c.String(flagRepo)
	if raw == "" {
		return nil, withCode(exitUsage, fmt.Errorf("no archive configured: set --repo or WALSHIP_REPO (file:///abs/dir or s3://bucket/prefix)"))
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, usageError("--repo %q: %v", raw, err)
	}
	if c.Int(flagStorageRetries) < 1 || c.Duration(flagStorageTimeout) <= 0 {
		return nil, usageError("--storage-retries must be at least 1 and --storage-timeout positive")
	}
	var s storage.Storage
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, usageError("--repo %q: a file URL needs an absolute path, file:///abs/dir (three slashes)", raw)
		}
		if !filepath.IsAbs(u.Path) {
			return nil, usageError("--repo %q: use an absolute path, file:///abs/dir", raw)
		}
		if c.Int(flagObjectLockDays) != 0 {
			return nil, usageError("--object-lock-days: a file:// archive cannot lock objects (S3 Object Lock only); drop it, or protect the directory by other means")
		}
		s, err = fs.New(filepath.Clean(u.Path))
	case "s3":
		if u.Host == "" {
			return nil, usageError("--repo %q: name the bucket, s3://bucket/prefix", raw)
		}
		ctx, cancel := context.WithTimeout(c.Context, c.Duration(flagStorageTimeout))
		defer cancel()
		var st *s3.Storage
		st, err = s3.New(ctx, s3.Options{
			Bucket:      u.Host,
			Prefix:      strings.Trim(u.Path, "/"),
			Endpoint:    c.String(flagS3Endpoint),
			Region:      c.String(flagS3Region),
			PathStyle:   c.Bool(flagS3PathStyle),
			CAFile:      c.String(flagS3CAFile),
			AllowHTTP:   c.Bool(flagS3AllowHTTP),
			SSE:         c.String(flagS3SSE),
			SSEKMSKeyID: c.String(flagS3SSEKMSKeyID),

			ObjectLockDays: c.Int(flagObjectLockDays),
			ObjectLockMode: c.String(flagObjectLockMode),
			// Snapshots of the segment being streamed are replaced
			// every --partial-interval; the completed segment is locked.
			ObjectLockExempt: archive.IsPartialSnapshot,
		})
		if err == nil {
			s, a.requests = st, st.Requests
		}
	default:
		return nil, usageError("--repo %q: unsupported scheme; use file:///abs/dir or s3://bucket/prefix", raw)
	}
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("open archive %s: %w", raw, err))
	}
	return encryption(c, storage.WithRetry(s, retryOptions(c, a.log)))
}

// compression returns the codec chosen by --compress.
func compression(c *cli.Context) (codec.Codec, error) {
	cd, err := codec.ByName(c.String(flagCompress))
	if err != nil {
		return codec.Codec{}, withCode(exitUsage, fmt.Errorf("--compress: %w", err))
	}
	return cd, nil
}

// cacheDir is where walship keeps small caches; "" when there is none.
func cacheDir(c *cli.Context) string {
	if d := c.String(flagCacheDir); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "walship")
}

// args checks a command's positional arguments: exactly want of them, and
// no flag written after them (it would otherwise be silently taken as an
// argument).
func args(c *cli.Context, want int) ([]string, error) {
	got := c.Args().Slice()
	for _, arg := range got {
		if strings.HasPrefix(arg, "-") && len(arg) > 1 {
			return nil, usageError("%s: flag %s must come before the arguments: walship %s [flags] %s", c.Command.Name, arg, c.Command.Name, c.Command.ArgsUsage)
		}
	}
	if len(got) != want {
		return nil, usageError("%s takes %d argument(s), got %d: walship %s [flags] %s", c.Command.Name, want, len(got), c.Command.Name, c.Command.ArgsUsage)
	}
	return got, nil
}

// dataDir returns dir if it is a PostgreSQL data directory (PostgreSQL
// runs archive and restore commands in the data directory), else "".
func dataDir(dir string) string {
	if dir == "" {
		dir = "."
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	if _, err := os.Stat(filepath.Join(abs, "PG_VERSION")); err != nil {
		return ""
	}
	return abs
}
