package pgrepl

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walship/walship/wal"
)

func TestParseServerVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"15.18 (Debian 15.18-0+deb12u1)", 150018},
		{"13.23", 130023},
		{"17.10", 170010},
		{"18beta1", 180000},
		{"17devel", 170000},
		{"16rc1", 160000},
		{"10.0", 100000},
		{"9.6.24", 90624},
		{"9.6devel", 90600},
		{"9.6.24 on x86_64", 90624},
	} {
		got, err := ParseServerVersion(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseServerVersion(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "devel", "0.1", ".15", "x15.2", "1234567.1"} {
		if got, err := ParseServerVersion(in); err == nil {
			t.Errorf("ParseServerVersion(%q) = %d, want an error", in, got)
		}
	}
}

func FuzzParseServerVersion(f *testing.F) {
	for _, s := range []string{"15.18 (Debian)", "9.6.24", "18beta1", "", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseServerVersion(s)
		if err == nil && v <= 0 {
			t.Fatalf("ParseServerVersion(%q) = %d", s, v)
		}
	})
}

func identifyResult(values ...string) *pgconn.Result {
	row := make([][]byte, len(values))
	for i, v := range values {
		if v != "NULL" {
			row[i] = []byte(v)
		}
	}
	return &pgconn.Result{Rows: [][][]byte{row}}
}

func TestParseIdentifySystem(t *testing.T) {
	got, err := ParseIdentifySystem(identifyResult("7710817639733050960", "3", "16/B374D848", "NULL"))
	want := SystemInfo{SystemID: 7710817639733050960, Timeline: 3, XLogPos: wal.LSN(0x16_B374D848)}
	if err != nil || got != want {
		t.Errorf("ParseIdentifySystem = %+v, %v; want %+v", got, err, want)
	}
	got, err = ParseIdentifySystem(identifyResult("1", "1", "0/1", "postgres"))
	if err != nil || got.DBName != "postgres" {
		t.Errorf("ParseIdentifySystem with a database = %+v, %v", got, err)
	}

	for name, tc := range map[string]struct {
		r    *pgconn.Result
		want string
	}{
		"no rows":       {&pgconn.Result{}, "got 0 rows"},
		"two rows":      {&pgconn.Result{Rows: [][][]byte{{}, {}}}, "got 2 rows"},
		"three columns": {identifyResult("1", "1", "0/1"), "of 3 columns"},
		"bad sysid":     {identifyResult("-1", "1", "0/1", "NULL"), "invalid systemid"},
		"NULL timeline": {identifyResult("1", "NULL", "0/1", "NULL"), "timeline is NULL"},
		"timeline 0":    {identifyResult("1", "0", "0/1", "NULL"), "invalid timeline"},
		"big timeline":  {identifyResult("1", "4294967296", "0/1", "NULL"), "invalid timeline"},
		"bad xlogpos":   {identifyResult("1", "1", "0/1/2", "NULL"), "xlogpos"},
		"error":         {&pgconn.Result{Err: &pgconn.PgError{Message: "boom"}}, "boom"},
	} {
		if _, err := ParseIdentifySystem(tc.r); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseIdentifySystem error %v, want one containing %q", name, err, tc.want)
		}
	}
}
