package basebackup

import (
	"context"
	"strings"
	"testing"
)

func TestCommand(t *testing.T) {
	all := Options{Label: "nightly", Fast: true, Progress: true, Manifest: true, ManifestChecksums: "SHA256", MaxRate: 1024}
	for _, tc := range []struct {
		version int
		o       Options
		want    string
	}{
		{130023, Options{}, "BASE_BACKUP NOWAIT"},
		{130023, Options{Wait: true}, "BASE_BACKUP"},
		{150018, Options{}, "BASE_BACKUP (WAIT false)"},
		{150018, Options{Wait: true}, "BASE_BACKUP"},
		{130023, all, "BASE_BACKUP LABEL 'nightly' PROGRESS FAST NOWAIT MAX_RATE 1024 MANIFEST 'yes' MANIFEST_CHECKSUMS 'SHA256'"},
		{140010, all, "BASE_BACKUP LABEL 'nightly' PROGRESS FAST NOWAIT MAX_RATE 1024 MANIFEST 'yes' MANIFEST_CHECKSUMS 'SHA256'"},
		{150000, all, "BASE_BACKUP (LABEL 'nightly', PROGRESS, CHECKPOINT 'fast', WAIT false, MAX_RATE 1024, MANIFEST 'yes', MANIFEST_CHECKSUMS 'SHA256')"},
		{180001, Options{Label: "x", Wait: true, Manifest: true}, "BASE_BACKUP (LABEL 'x', MANIFEST 'yes')"},
		{170000, Options{Label: "it's 'quoted' \\ ", Wait: true}, `BASE_BACKUP (LABEL 'it''s ''quoted'' \ ')`},
		{130000, Options{Label: "''", Wait: true}, `BASE_BACKUP LABEL ''''''`},
		// Checksums without a manifest are left out (Run refuses them).
		{150000, Options{ManifestChecksums: "SHA256", Wait: true}, "BASE_BACKUP"},
	} {
		if got := Command(tc.version, tc.o); got != tc.want {
			t.Errorf("Command(%d, %+v)\n got %s\nwant %s", tc.version, tc.o, got, tc.want)
		}
	}
}

func TestCommandNeverAsksForWALOrTablespaceMap(t *testing.T) {
	for _, v := range []int{130000, 140000, 150000, 160000, 170000, 180000} {
		cmd := Command(v, Options{Label: "WAL TABLESPACE_MAP", Fast: true, Progress: true, Manifest: true, MaxRate: 32})
		rest := strings.Replace(cmd, "'WAL TABLESPACE_MAP'", "", 1)
		if strings.Contains(rest, "WAL ") || strings.Contains(rest, "TABLESPACE_MAP") || strings.Contains(rest, "TARGET") {
			t.Errorf("Command(%d) = %s", v, cmd)
		}
	}
}

func TestOptionsCheck(t *testing.T) {
	for _, tc := range []struct {
		version int
		o       Options
		want    string // "" for no error
	}{
		{130000, Options{}, ""},
		{120015, Options{}, "PostgreSQL 12.15 is too old"},
		{90624, Options{}, "PostgreSQL 9.6.24 is too old"},
		{150000, Options{Label: "a\nb"}, "single line"},
		{150000, Options{Label: "a\x00b"}, "single line"},
		{150000, Options{MaxRate: 31}, "out of range"},
		{150000, Options{MaxRate: 1048577}, "out of range"},
		{150000, Options{MaxRate: -1}, "out of range"},
		{150000, Options{MaxRate: 32}, ""},
		{150000, Options{MaxRate: 1048576}, ""},
		{150000, Options{ManifestChecksums: "sha256"}, "no manifest"},
		{150000, Options{Manifest: true, ManifestChecksums: "sha256"}, ""},
		{150000, Options{Manifest: true, ManifestChecksums: "NONE"}, ""},
		{150000, Options{Manifest: true, ManifestChecksums: "md5"}, "unknown manifest checksum algorithm"},
	} {
		err := tc.o.check(tc.version)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("check(%d, %+v): %v", tc.version, tc.o, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("check(%d, %+v) = %v, want an error containing %q", tc.version, tc.o, err, tc.want)
		}
	}
}

func TestRunRefusesBadOptionsBeforeSending(t *testing.T) {
	// A nil connection shows that nothing is sent.
	_, _, err := Run(context.Background(), nil, 120000, Options{}, Handler{})
	if err == nil || !strings.Contains(err.Error(), "too old") {
		t.Errorf("Run on PostgreSQL 12: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err = Run(ctx, nil, 150000, Options{}, Handler{})
	if err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("Run with a cancelled context: %v", err)
	}
}
