package failover

import (
	"os"
	"path/filepath"
	"time"

	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/wal"
)

// HoldFile is the file in a standby's data directory by which a forced
// promotion tells wal-fetch to hand recovery no further WAL segment, so
// that PostgreSQL ends recovery where it stands instead of first
// replaying everything the archive holds (which it does before honouring
// a promotion). Its modification time is the moment the hold expires, so
// one left behind by a crash soon stops mattering. The name starts with
// pgsql_tmp: base backups and pg_rewind leave it out.
const HoldFile = "pgsql_tmp_walship_promote"

// holdFetch writes the hold until the given time and returns the function
// that lifts it.
func holdFetch(dataDir string, until time.Time) (release func(), err error) {
	path := filepath.Join(dataDir, HoldFile)
	if err := pgperm.Of(dataDir).WriteFile(path, []byte("walship standby-promote --forced\n")); err != nil {
		return nil, err
	}
	if err := os.Chtimes(path, until, until); err != nil {
		os.Remove(path)
		return nil, err
	}
	return func() { os.Remove(path) }, nil
}

// FetchHeld reports whether wal-fetch must answer "not in the archive"
// for file name asked by the server of dataDir: a forced promotion holds
// segments back. Timeline history files still come through: PostgreSQL
// reads them to pick a timeline number nobody used.
func FetchHeld(dataDir, name string) bool {
	fn, err := wal.ParseFileName(name)
	if err != nil || fn.Kind != wal.KindSegment && fn.Kind != wal.KindPartial {
		return false
	}
	st, err := os.Stat(filepath.Join(dataDir, HoldFile))
	if err != nil {
		return false
	}
	return time.Now().Before(st.ModTime())
}
