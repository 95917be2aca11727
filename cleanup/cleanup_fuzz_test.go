package cleanup

import (
	"context"
	"encoding/json"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

// pg_archivecleanup's grammar, written down independently of cleanup.go.
var (
	oldestArg     = regexp.MustCompile(`^[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?$`)
	walCandidate  = regexp.MustCompile(`^[0-9A-F]{24}(\.partial)?$`)
	backupHistory = regexp.MustCompile(`^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$`)
	historyName   = regexp.MustCompile(`^[0-9A-F]{8}\.history$`)
)

// FuzzRemovable checks ParseOldest and Removable against
// pg_archivecleanup's rules (src/bin/pg_archivecleanup): which arguments
// it accepts, which directory entries are candidates after -x EXT is
// stripped, and that a candidate goes when strcmp(name+8, oldest+8) < 0.
// History files never go.
func FuzzRemovable(f *testing.F) {
	for _, s := range [][3]string{
		{"000000010000000000000010", "", "00000001000000000000000F"},
		{"000000010000000000000010.partial", ".gz", "00000001000000000000000F.gz"},
		{"000000020000000000000010.00000028.backup", "", "000000010000000000000010.00000020.backup"},
		{"000000010000000000000010", "", "00000002.history"},
		{"00000001000000000000001.", ".", "000000010000000000000000.partial"},
		{"000000010000000000000010.zst", ".zst", "000000010000000000000001.partial.zst"},
		{"../000000010000000000000010", "", "0000000100000000000000a0"},
	} {
		f.Add(s[0], s[1], s[2], true)
	}
	f.Fuzz(func(t *testing.T, arg, ext, name string, backupFiles bool) {
		oldest, err := ParseOldest(arg, ext)
		trimmed := strings.TrimSuffix(arg, ext)
		if (err == nil) != oldestArg.MatchString(trimmed) {
			t.Fatalf("ParseOldest(%q, %q) = %q, %v", arg, ext, oldest, err)
		}
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if oldest != trimmed[:24] {
			t.Fatalf("ParseOldest(%q, %q) = %q", arg, ext, oldest)
		}
		entry := name
		if ext != "" {
			entry = strings.TrimSuffix(name, ext)
		}
		candidate := walCandidate.MatchString(entry) || backupFiles && backupHistory.MatchString(entry)
		want := candidate && entry[8:] < oldest[8:]
		if got := Removable(name, ext, oldest, backupFiles); got != want {
			t.Fatalf("Removable(%q, %q, %q, %v) = %v", name, ext, oldest, backupFiles, got)
		}
		if historyName.MatchString(entry) && Removable(name, ext, oldest, backupFiles) {
			t.Fatalf("history file %q removed", name)
		}
	})
}

// FuzzPruneHostileRecords runs wal-cleanup, retention and wal-verify on
// an archive whose backup records (backup.json, started.json) and
// timeline 2 history file hold arbitrary bytes, correctly checksummed.
// None of them may panic; wal-cleanup never removes a history file, a
// file at or after OLDEST, or WAL an accepted backup needs; retention
// never removes a history file.
func FuzzPruneHostileRecords(f *testing.F) {
	start := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	b := basebackup.Backup{
		Name: "base_20261122T030000Z", Timeline: 1, StopTimeline: 1,
		StartLSN: wal.SegmentStartLSN(4, seg16) + 0x28, StopLSN: wal.SegmentStartLSN(4, seg16) + 0x100,
		StartWAL: wal.SegmentFileName(1, 4, seg16), StopWAL: wal.SegmentFileName(1, 4, seg16),
		StartTime: start, FinishTime: start.Add(time.Minute), SegmentSize: seg16, SystemID: "1", Codec: "zstd",
	}
	meta, err := json.Marshal(b)
	if err != nil {
		f.Fatal(err)
	}
	history := []byte("1\t0/6000000\tno recovery target specified\n")
	f.Add(meta, []byte(nil), history, "000000010000000000000007")
	f.Add([]byte(nil), meta, history, "000000020000000000000008")
	f.Add([]byte(`{"name":"base_20261122T030000Z","start_wal":"1","stop_wal":""}`), []byte(`{"name":"base_20261122T030000Z","start_wal":""}`), []byte("x"), "000000010000000000000007")
	f.Add([]byte(`{"name":"base_20261122T030000Z","start_wal":"000000010000000000000004","stop_wal":"000000010000000000000004","segment_size":3,"start_lsn":"FFFFFFFF/FFFFFFFF"}`),
		[]byte(nil), []byte("1\tFFFFFFFF/FFFFFFFF\tx\n"), "0000000100000000000000FF")
	f.Fuzz(func(t *testing.T, meta, started, history []byte, oldest string) {
		ctx := context.Background()
		s := mem.New()
		putChecked(t, s, "cluster.json", []byte(`{"system_id":"1","segment_size":16777216}`))
		for tli := wal.TimeLineID(1); tli <= 2; tli++ {
			for seg := wal.SegNo(1); seg <= 8; seg++ {
				putChecked(t, s, "wal/"+wal.SegmentFileName(tli, seg, seg16)+".zst", []byte("x"))
			}
		}
		putChecked(t, s, "wal/000000010000000000000006.partial.zst", []byte("x"))
		putChecked(t, s, "wal/00000002.history.zst", history)
		const name = "base_20261122T030000Z"
		if meta != nil {
			putChecked(t, s, basebackup.Prefix+name+"/backup.json", meta)
			putChecked(t, s, basebackup.Prefix+name+"/base.tar.zst", []byte("x"))
		}
		if started != nil {
			putChecked(t, s, basebackup.Prefix+name+"/started.json", started)
		}
		needs := ""
		if b, err := basebackup.Read(ctx, s, name); err == nil {
			needs = b.StartWAL
		}

		removed, err := Archive(ctx, s, oldest, ArchiveOptions{DryRun: true, Out: io.Discard})
		if err == nil {
			for _, key := range removed {
				base := strings.TrimSuffix(strings.TrimPrefix(key, "wal/"), ".zst")
				if historyName.MatchString(base) || base[8:] >= oldest[8:24] || needs != "" && base[8:] >= needs[8:] {
					t.Fatalf("wal-cleanup %s removes %s (backup needs %q)", oldest, key, needs)
				}
			}
		}
		plan, err := PlanRetention(ctx, s, Policy{RetainFull: 1, Now: start.Add(time.Hour)})
		if err == nil {
			for _, key := range plan.walKeys {
				if strings.Contains(key, ".history") {
					t.Fatalf("retention removes %s", key)
				}
			}
		}
		Verify(ctx, s)
	})
}
