package cleanup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/walship/walship/storage/mem"
	"github.com/walship/walship/wal"
)

func putChecked(t *testing.T, s *mem.Storage, key string, data []byte) {
	t.Helper()
	sum := sha256.Sum256(data)
	meta := map[string]string{"walship-sha256": hex.EncodeToString(sum[:]), "walship-size": fmt.Sprint(len(data))}
	if err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), meta); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	const seg = 16 << 20
	archiveWith := func(tl1, tl2 []int, switchAt wal.SegNo) *mem.Storage {
		s := mem.New()
		putChecked(t, s, "cluster.json", []byte(`{"system_id":"1","segment_size":16777216}`))
		for _, n := range tl1 {
			putChecked(t, s, "wal/"+wal.SegmentFileName(1, wal.SegNo(n), seg)+".zst", nil)
		}
		for _, n := range tl2 {
			putChecked(t, s, "wal/"+wal.SegmentFileName(2, wal.SegNo(n), seg)+".zst", nil)
		}
		if switchAt > 0 {
			h := fmt.Sprintf("1\t%s\tno recovery target specified\n", wal.SegmentStartLSN(switchAt, seg)+0x60)
			putChecked(t, s, "wal/00000002.history", []byte(h))
		}
		return s
	}
	for _, tc := range []struct {
		what     string
		tl1, tl2 []int
		switchAt wal.SegNo
		gaps     []string
	}{
		{"complete", []int{1, 2, 3, 4, 5}, nil, 0, nil},
		{"one missing", []int{1, 2, 4, 5}, nil, 0, []string{"000000010000000000000003-000000010000000000000003"}},
		{"run missing", []int{1, 2, 6}, nil, 0, []string{"000000010000000000000003-000000010000000000000005"}},
		// The switch segment is read from timeline 2; timeline 1's copy
		// of it (a .partial) is not needed.
		{"across a promotion", []int{1, 2, 3}, []int{4, 5, 6}, 4, nil},
		{"gap after a promotion", []int{1, 2, 3}, []int{4, 6}, 4, []string{"000000020000000000000005-000000020000000000000005"}},
		{"old timeline short", []int{1, 2}, []int{4, 5}, 4, []string{"000000010000000000000003-000000010000000000000003"}},
		// The old primary went on on timeline 1 after the fork: its
		// branch is checked too.
		{"gap on the old branch", []int{1, 2, 3, 5, 6}, []int{4, 5, 6}, 4, []string{"000000010000000000000004-000000010000000000000004"}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			r, err := Verify(context.Background(), archiveWith(tc.tl1, tc.tl2, tc.switchAt))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, g := range r.Gaps {
				got = append(got, g.FirstMissing+"-"+g.LastMissing)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.gaps) {
				t.Fatalf("gaps %v, want %v (report %+v)", got, tc.gaps, r)
			}
			if r.OK() != (len(tc.gaps) == 0) {
				t.Fatal("OK disagrees with the gaps")
			}
		})
	}
}
