package restore

import (
	"bytes"
	"strings"
	"testing"
)

// The oracle below reads a configuration file the way PostgreSQL's lexer
// and parser do (src/backend/utils/misc/guc-file.l: the token rules, the
// longest match with ties going to the earlier rule, the "name [=] value
// EOL" grammar and DeescapeQuotedString), independently of walship's
// writer, so that the fuzzer can check what the server will read.

type gucToken int

const (
	gucEOF gucToken = iota
	gucEOL
	gucID
	gucQualifiedID
	gucString
	gucUnquoted
	gucInteger
	gucReal
	gucEquals
	gucError
)

func isGUCLetter(c byte) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c >= 0x80
}

func isGUCDigit(c byte) bool { return '0' <= c && c <= '9' }

func isGUCHex(c byte) bool {
	return isGUCDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// gucLexer returns the tokens of a configuration file one at a time.
type gucLexer struct {
	s   string
	pos int
}

// matchID is the length of {ID} at s[i:], 0 if none.
func matchID(s string, i int) int {
	if i >= len(s) || !isGUCLetter(s[i]) {
		return 0
	}
	j := i + 1
	for j < len(s) && (isGUCLetter(s[j]) || isGUCDigit(s[j])) {
		j++
	}
	return j - i
}

func matchString(s string, i int) int {
	if i >= len(s) || s[i] != '\'' {
		return 0
	}
	j := i + 1
	for j < len(s) {
		switch {
		case s[j] == '\n':
			return 0
		case s[j] == '\\':
			if j+1 >= len(s) || s[j+1] == '\n' {
				return 0
			}
			j += 2
		case s[j] == '\'':
			if j+1 < len(s) && s[j+1] == '\'' {
				j += 2
				continue
			}
			return j + 1 - i
		default:
			j++
		}
	}
	return 0
}

func matchUnquoted(s string, i int) int {
	if i >= len(s) || !isGUCLetter(s[i]) {
		return 0
	}
	j := i + 1
	for j < len(s) && (isGUCLetter(s[j]) || isGUCDigit(s[j]) || strings.IndexByte("-._:/", s[j]) >= 0) {
		j++
	}
	return j - i
}

func matchInteger(s string, i int) int {
	j := i
	if j < len(s) && (s[j] == '+' || s[j] == '-') {
		j++
	}
	start := j
	if j+1 < len(s) && s[j] == '0' && s[j+1] == 'x' && j+2 < len(s) && isGUCHex(s[j+2]) {
		j += 2
		for j < len(s) && isGUCHex(s[j]) {
			j++
		}
	} else {
		for j < len(s) && isGUCDigit(s[j]) {
			j++
		}
		if j == start {
			return 0
		}
	}
	for j < len(s) && ('a' <= s[j] && s[j] <= 'z' || 'A' <= s[j] && s[j] <= 'Z') {
		j++
	}
	return j - i
}

func matchReal(s string, i int) int {
	j := i
	if j < len(s) && (s[j] == '+' || s[j] == '-') {
		j++
	}
	for j < len(s) && isGUCDigit(s[j]) {
		j++
	}
	if j >= len(s) || s[j] != '.' {
		return 0
	}
	j++
	for j < len(s) && isGUCDigit(s[j]) {
		j++
	}
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		k := j + 1
		if k < len(s) && (s[k] == '+' || s[k] == '-') {
			k++
		}
		if k < len(s) && isGUCDigit(s[k]) {
			for k < len(s) && isGUCDigit(s[k]) {
				k++
			}
			j = k
		}
	}
	return j - i
}

func (l *gucLexer) next() (gucToken, string) {
	for {
		if l.pos >= len(l.s) {
			return gucEOF, ""
		}
		c := l.s[l.pos]
		switch {
		case c == '\n':
			l.pos++
			return gucEOL, "\n"
		case c == ' ' || c == '\t' || c == '\r':
			l.pos++
			continue
		case c == '#':
			for l.pos < len(l.s) && l.s[l.pos] != '\n' {
				l.pos++
			}
			continue
		}
		break
	}
	i := l.pos
	best, tok := 0, gucError
	id := matchID(l.s, i)
	try := func(n int, t gucToken) {
		if n > best { // ties go to the earlier rule
			best, tok = n, t
		}
	}
	try(id, gucID)
	if id > 0 && i+id < len(l.s) && l.s[i+id] == '.' {
		if id2 := matchID(l.s, i+id+1); id2 > 0 {
			try(id+1+id2, gucQualifiedID)
		}
	}
	try(matchString(l.s, i), gucString)
	try(matchUnquoted(l.s, i), gucUnquoted)
	try(matchInteger(l.s, i), gucInteger)
	try(matchReal(l.s, i), gucReal)
	if l.s[i] == '=' {
		try(1, gucEquals)
	}
	if best == 0 {
		best = 1
	}
	l.pos += best
	return tok, l.s[i : i+best]
}

// deescapeGUC is DeescapeQuotedString.
func deescapeGUC(s string) string {
	var b strings.Builder
	for i := 1; i < len(s)-1; i++ {
		switch {
		case s[i] == '\\':
			i++
			switch c := s[i]; c {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case '0', '1', '2', '3', '4', '5', '6', '7':
				k, v := 0, 0
				for ; k < 3 && i+k < len(s) && '0' <= s[i+k] && s[i+k] <= '7'; k++ {
					v = v<<3 + int(s[i+k]-'0')
				}
				i += k - 1
				b.WriteByte(byte(v))
			default:
				b.WriteByte(c)
			}
		case s[i] == '\'' && s[i+1] == '\'':
			i++
			b.WriteByte('\'')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// readGUCFile returns the settings of a configuration file in order
// (later ones win), with names lower-cased, or ok false where PostgreSQL
// reports a syntax error.
func readGUCFile(text string) (settings [][2]string, ok bool) {
	l := &gucLexer{s: text}
	for {
		tok, name := l.next()
		switch tok {
		case gucEOF:
			return settings, true
		case gucEOL:
			continue
		case gucID, gucQualifiedID:
		default:
			return nil, false
		}
		tok, value := l.next()
		if tok == gucEquals {
			tok, value = l.next()
		}
		switch tok {
		case gucString:
			value = deescapeGUC(value)
		case gucID, gucInteger, gucReal, gucUnquoted:
		default:
			return nil, false
		}
		if tok, _ := l.next(); tok != gucEOL && tok != gucEOF {
			return nil, false
		}
		settings = append(settings, [2]string{strings.ToLower(name), value})
	}
}

// effective is the value each parameter ends up with.
func effective(settings [][2]string) map[string]string {
	m := map[string]string{}
	for _, s := range settings {
		m[s[0]] = s[1]
	}
	return m
}

// FuzzRecoveryConf writes recovery settings into an arbitrary existing
// postgresql.auto.conf and reads the result as PostgreSQL would: every
// recovery parameter ends up exactly as the settings say (a value quoted
// by walship reads back byte for byte; a parameter walship leaves unset
// is not set anywhere else), every other setting of a file PostgreSQL
// could read keeps its value, and writing the same settings again
// changes nothing.
func FuzzRecoveryConf(f *testing.F) {
	exe := "/usr/lib/walship/walship --repo 'file:///var/lib/walship/it''s here' wal-fetch %f %p"
	f.Add([]byte(autoConfHeader), exe, "", "", "", byte(0), "", "", false)
	f.Add([]byte(autoConfHeader+"max_connections = '50'\nprimary_conninfo = 'host=old'\nrestore_command='cp /x/%f %p'\n"),
		exe, "host=primary user=replicator", "walship_slot", "", byte(0), "", "latest", true)
	f.Add([]byte(autoConfHeader+recoveryBlockStart+"\nrestore_command = 'old'\n"+recoveryBlockEnd+"\nwork_mem = 4MB\n"),
		`a\b'c"d$e%f`, "", "", "2026-11-22 03:00:00+00", byte(1), "promote", "", false)
	f.Add([]byte("RESTORE_COMMAND = 'x' # comment\nrecovery_target_name\t'point'\nshared_buffers=128MB\n"),
		"walship wal-fetch %f %p", "", "", "0/3000000", byte(2), "pause", "current", false)
	f.Add([]byte("restore_command'x'\nrecovery_target_time = '2020-01-01'\n"),
		"", "host=p", "", "", byte(0), "", "", true)
	f.Add([]byte("a.b = 1\n  x = 'unterminated\n"), "\\\\server\\share %f", "", "", "1234", byte(3), "shutdown", "2", false)
	f.Fuzz(func(t *testing.T, current []byte, restoreCommand, conninfo, slot, target string, kind byte, action, timeline string, standby bool) {
		s := RecoverySettings{
			Standby:         standby,
			RestoreCommand:  restoreCommand,
			PrimaryConnInfo: conninfo,
			PrimarySlotName: slot,
			TargetAction:    action,
			TargetTimeline:  timeline,
		}
		switch kind % 4 {
		case 0:
			s.TargetTime = target
		case 1:
			s.TargetLSN = target
		case 2:
			s.TargetName = target
		case 3:
			s.TargetXID = target
		}
		if s.Validate() != nil {
			return // WriteRecoverySettings refuses these
		}
		out := recoveryConf(current, s)
		if again := recoveryConf(out, s); !bytes.Equal(again, out) {
			t.Fatalf("not idempotent:\n%s\nbecame\n%s", out, again)
		}
		before, okBefore := readGUCFile(string(current))
		after, okAfter := readGUCFile(string(out))
		if !okBefore {
			return // PostgreSQL refuses the file as it was
		}
		if !okAfter {
			t.Fatalf("PostgreSQL could read\n%q\nbut not what walship made of it:\n%q", current, out)
		}
		got := effective(after)
		want := map[string]string{
			"recovery_target": "", "recovery_target_lsn": s.TargetLSN, "recovery_target_name": s.TargetName,
			"recovery_target_time": s.TargetTime, "recovery_target_xid": s.TargetXID,
		}
		for name, v := range map[string]string{
			"restore_command": s.RestoreCommand, "primary_conninfo": s.PrimaryConnInfo, "primary_slot_name": s.PrimarySlotName,
			"recovery_target_action": s.TargetAction, "recovery_target_timeline": s.TargetTimeline,
			"archive_cleanup_command": s.ArchiveCleanupCommand,
		} {
			if v != "" {
				want[name] = v
			}
		}
		for name := range got {
			if isRecoveryParameter(name) {
				if _, ok := want[name]; !ok {
					t.Fatalf("%s = %q is still set, but walship's settings leave it unset:\n%s", name, got[name], out)
				}
			}
		}
		for name, v := range want {
			if got[name] != v {
				t.Fatalf("PostgreSQL reads %s = %q, want %q:\n%s", name, got[name], v, out)
			}
		}
		if bytes.Contains(current, []byte(recoveryBlockStart)) || bytes.Contains(current, []byte(recoveryBlockEnd)) {
			return // lines inside an earlier block are walship's to replace
		}
		for name, v := range effective(before) {
			if !isRecoveryParameter(name) && got[name] != v {
				t.Fatalf("%s was %q and became %q:\n%s", name, v, got[name], out)
			}
		}
	})
}

// TestGUCOracle: the oracle reads what PostgreSQL's own documentation
// and lexer say, so that the fuzzer's verdicts mean something.
func TestGUCOracle(t *testing.T) {
	for text, want := range map[string]string{
		"a = 'x''y'\n":              "a=x'y",
		"a 'x\\'y' # c\n":           "a=x'y",
		"a = '\\101\\n\\q'":         "a=A\nq",
		"A.B=on\n\n":                "a.b=on",
		"a = 0x1Fkb\n":              "a=0x1Fkb",
		"a = -1.5e3":                "a=-1.5e3",
		"a = /x\n":                  "",
		"a = b-c:d/e\n":             "a=b-c:d/e",
		"a-b = 1\n":                 "",
		"a = 'x\n":                  "",
		"a = 'x'\fb\n":              "",
		"a = 1 2\n":                 "",
		"restore_command'cp x y'\n": "restore_command=cp x y",
		"\ta\r= 'v'\r\n# only\n":    "a=v",
		"a = 'x'\nb = 'y'\na = 'z'": "a=x,b=y,a=z",
	} {
		settings, ok := readGUCFile(text)
		var got []string
		for _, s := range settings {
			got = append(got, s[0]+"="+s[1])
		}
		if g := strings.Join(got, ","); ok != (want != "") || g != want {
			t.Errorf("%q: %q (ok %v), want %q", text, g, ok, want)
		}
	}
	for _, v := range []string{"", "a'b", `c:\dir\`, "\t%f 'q' \\n", "\x80\xff"} {
		settings, ok := readGUCFile("x = " + gucQuote(v) + "\n")
		if !ok || len(settings) != 1 || settings[0][1] != v {
			t.Errorf("gucQuote(%q) = %s reads back as %q (ok %v)", v, gucQuote(v), settings, ok)
		}
	}
}
