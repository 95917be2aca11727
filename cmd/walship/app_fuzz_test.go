package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// unsetFlagEnv removes the environment variables of the global flags for
// the duration of f, so that only the config file and the command line
// decide (an empty variable counts as set).
func unsetFlagEnv(f *testing.F) {
	for _, fl := range newApp(io.Discard, io.Discard).cli.Flags {
		if e, ok := fl.(interface{ GetEnvVars() []string }); ok {
			for _, v := range e.GetEnvVars() {
				f.Setenv(v, "")
				os.Unsetenv(v)
			}
		}
	}
}

// probe runs walship's global flag handling (config file included) with
// args and a command that runs fn instead of a real one.
func probe(args []string, fn func(a *app, c *cli.Context) error) error {
	a := newApp(io.Discard, io.Discard)
	a.cli.Commands = []*cli.Command{{Name: "probe", Action: func(c *cli.Context) error { return fn(a, c) }}}
	return a.cli.Run(append(append([]string{"walship"}, args...), "probe"))
}

// globalSettings runs walship with the config file at path and returns the
// value of every global flag.
func globalSettings(path string) (map[string]string, error) {
	var got map[string]string
	err := probe([]string{"--config", path}, func(a *app, c *cli.Context) error {
		got = map[string]string{}
		for _, fl := range a.cli.Flags {
			name := fl.Names()[0]
			if name != flagConfig {
				got[name] = fmt.Sprint(c.Value(name))
			}
		}
		return nil
	})
	return got, err
}

// FuzzConfigFile reads arbitrary config files. A file is refused with a
// one-line error, or its settings, written back as "key = 'value'" lines,
// read back to the same settings.
func FuzzConfigFile(f *testing.F) {
	unsetFlagEnv(f)
	for _, s := range []string{
		"# /etc/walship.conf — keys are the global flags\nrepo = s3://my-bucket/clusters/main\ns3-endpoint = https://minio.internal:9000   # omit for AWS S3\ns3-path-style = true\ncompress = zstd\n",
		"repo = \"file:///var/lib/walship/archive\"\nstorage-timeout = 30s\nstorage-retries = 3\nlog-level = debug\nlog-format = json\ncache-dir = '/var/cache/walship'\n",
		"repository = file:///x\n", "repo file:///x\n", "storage-retries = many\n", "= x\n", "config = /etc/other.conf\n",
		"repo = a=b#c # comment\r\n\r\n  # indented comment\n", "repo = '\"'\"'\n", "log-level = loud\n",
		strings.Repeat("x", 70000) + "\n",
	} {
		f.Add([]byte(s))
	}
	path := filepath.Join(f.TempDir(), "walship.conf")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := globalSettings(path)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		defaults, err := globalSettings(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		var back strings.Builder
		for name, v := range got {
			if v != defaults[name] {
				fmt.Fprintf(&back, "%s = '%s'\n", name, v)
			}
		}
		if err := os.WriteFile(path, []byte(back.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := globalSettings(path)
		if err != nil {
			t.Fatalf("settings %v written back as\n%s\ndo not read: %v", got, back.String(), err)
		}
		if !reflect.DeepEqual(again, got) {
			t.Fatalf("settings %v written back as\n%s\nread as %v", got, back.String(), again)
		}
	})
}

// The oracles below follow what happens to restore_command after
// backup-fetch writes it: PostgreSQL replaces %f, %p, %r and %% (and,
// from PostgreSQL 16, refuses any other % sequence), then /bin/sh splits
// the line into words.

// pgPercent replaces the placeholders of a restore or cleanup command as
// PostgreSQL 16's replace_percent_placeholders does; ok is false where it
// reports an error.
func pgPercent(cmd string, values map[byte]string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(cmd); i++ {
		if cmd[i] != '%' {
			b.WriteByte(cmd[i])
			continue
		}
		i++
		if i == len(cmd) {
			return "", false
		}
		if cmd[i] == '%' {
			b.WriteByte('%')
			continue
		}
		v, ok := values[cmd[i]]
		if !ok {
			return "", false
		}
		b.WriteString(v)
	}
	return b.String(), true
}

// shWords splits a command line into words as /bin/sh does, for the
// quoting walship uses; ok is false if the line holds anything the shell
// would interpret (an unquoted $, `, ;, |, &, <, >, (, ), glob or ~, a
// comment, or an unterminated quote).
func shWords(line string) ([]string, bool) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, false
			}
			w.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '\\':
			if i+1 == len(line) || line[i+1] == '\n' {
				return nil, false
			}
			i++
			w.WriteByte(line[i])
			inWord = true
		case strings.IndexByte("$`;|&<>()*?[]~#{}!\"\n", c) >= 0 || c < ' ' || c == 0x7f:
			return nil, false
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, true
}

// FuzzHookCommand builds the restore_command and archive_cleanup_command
// backup-fetch writes from arbitrary repository settings, and runs them
// through PostgreSQL's placeholder replacement and the shell's word
// splitting: each setting must reach walship as one argument, unchanged,
// and the placeholders must become the file names.
func FuzzHookCommand(f *testing.F) {
	unsetFlagEnv(f)
	f.Add("file:///var/lib/walship/archive", "", "", "", false)
	f.Add("s3://bucket/clusters/main", "https://minio.internal:9000", "eu-west-1", "/var/cache/walship", true)
	f.Add("file:///srv/it's here/100%full", "http://h:9000/?a=b&c=$HOME", "", "/tmp/%f %p %r %%", false)
	f.Add("file:///a`b`;c|d", "", "x y", "~", false)
	values := map[byte]string{'f': "000000010000000000000001", 'p': "pg_wal/RECOVERYXLOG", 'r': "000000010000000000000000"}
	f.Fuzz(func(t *testing.T, repo, endpoint, region, cacheDir string, pathStyle bool) {
		args := []string{"--repo=" + repo, "--s3-endpoint=" + endpoint, "--s3-region=" + region}
		if cacheDir != "" {
			args = append(args, "--cache-dir="+cacheDir)
		}
		if pathStyle {
			args = append(args, "--s3-path-style")
		}
		for _, v := range []string{repo, endpoint, region, cacheDir} {
			if strings.ContainsAny(v, "\x00\n\r") {
				return // not an argument a shell can pass; Validate refuses it as a setting
			}
		}
		var fetch, cleanup string
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		err = probe(args, func(a *app, c *cli.Context) error {
			var err error
			if fetch, err = a.hookCommand(c, "wal-fetch", "%f", "%p"); err != nil {
				return err
			}
			cleanup, err = a.hookCommand(c, "wal-cleanup", "%r")
			return err
		})
		if err != nil {
			t.Fatalf("hookCommand: %v", err)
		}
		want := []string{exe}
		for _, kv := range [][2]string{{"repo", repo}, {"s3-endpoint", endpoint}, {"s3-region", region}, {"s3-path-style", ""}, {"cache-dir", cacheDir}} {
			switch {
			case kv[0] == "s3-path-style" && pathStyle:
				want = append(want, "--s3-path-style")
			case kv[0] != "s3-path-style" && kv[1] != "":
				want = append(want, "--"+kv[0], kv[1])
			}
		}
		for _, hook := range []struct {
			line string
			tail []string
		}{
			{fetch, []string{"wal-fetch", values['f'], values['p']}},
			{cleanup, []string{"wal-cleanup", values['r']}},
		} {
			line, ok := pgPercent(hook.line, values)
			if !ok {
				t.Fatalf("PostgreSQL refuses the placeholders of %q", hook.line)
			}
			words, ok := shWords(line)
			if !ok {
				t.Fatalf("the shell interprets %q", line)
			}
			if w := append(append([]string(nil), want...), hook.tail...); !reflect.DeepEqual(words, w) {
				t.Fatalf("%q reaches walship as %q, want %q", hook.line, words, w)
			}
		}
	})
}
