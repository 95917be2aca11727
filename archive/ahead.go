package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Look-ahead. PostgreSQL's archiver calls archive_command for one file at
// a time and waits for it, so under heavy writes it falls behind a store
// whose round trip is longer than the time to fill a segment. When called
// for one file, wal-push therefore also pushes, in parallel, the next
// files waiting in pg_wal/archive_status (*.ready), and records each one
// durably stored in a marker:
//
//	<data directory>/pgsql_tmp_walship_push/<name>
//
// holding the file's size, modification time and inode as it was pushed.
// PostgreSQL's next call for that name finds the marker, checks the file
// still matches it, removes it and returns at once. A marker is written
// only after the store returned (the object is durable), names exactly
// one file version, and is trusted for MarkerTTL only; anything else is
// pushed again, which is harmless (identical content already archived
// succeeds). The pgsql_tmp prefix keeps the directory out of base backups.
// The directory and the markers get the data directory's modes (0700/0600,
// or 0750/0640 with group access).

// AheadDirName is the marker directory inside a data directory.
const AheadDirName = "pgsql_tmp_walship_push"

// MarkerTTL is how long a look-ahead marker is trusted.
const MarkerTTL = time.Hour

// marker is what a look-ahead marker records of the pushed file.
type marker struct {
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	Inode   uint64    `json:"inode"`
	Repo    string    `json:"repo"` // where it was pushed
	Pushed  time.Time `json:"pushed"`
}

func markerOf(st os.FileInfo) marker {
	m := marker{Size: st.Size(), ModTime: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		m.Inode = sys.Ino
	}
	return m
}

// TakeMarker reports whether an earlier look-ahead archived the file at
// path, as it is now, into repo; the marker is consumed either way.
func TakeMarker(dataDir, repo, path string) bool {
	mpath := filepath.Join(dataDir, AheadDirName, filepath.Base(path))
	data, err := os.ReadFile(mpath)
	if err != nil {
		return false
	}
	os.Remove(mpath)
	var m marker
	if json.Unmarshal(data, &m) != nil || m.Repo != repo || time.Since(m.Pushed) > MarkerTTL || time.Until(m.Pushed) > time.Minute {
		return false
	}
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	now := markerOf(st)
	return now.Size == m.Size && now.ModTime.Equal(m.ModTime) && now.Inode == m.Inode && m.Size > 0
}

// AheadResult is one file pushed ahead.
type AheadResult struct {
	PushResult
	Err error
}

// PushAhead pushes up to n files waiting in the archive_status directory
// next to path (other than path itself), oldest first and in parallel,
// and records a marker for each one stored. It returns what it did; a
// failure only means PostgreSQL's own call will push that file.
func PushAhead(ctx context.Context, s storage.Storage, path string, n int, o PushOptions) []AheadResult {
	if n <= 0 || o.DataDir == "" {
		return nil
	}
	names := readyFiles(filepath.Dir(path), filepath.Base(path), n)
	if len(names) == 0 {
		return nil
	}
	dir := filepath.Join(o.DataDir, AheadDirName)
	modes := pgperm.Of(o.DataDir)
	if err := modes.MkdirAll(dir); err != nil {
		return nil
	}
	pruneMarkers(dir)
	results := make([]AheadResult, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = pushAhead(ctx, s, filepath.Join(filepath.Dir(path), name), dir, modes, o)
		}()
	}
	wg.Wait()
	return results
}

func pushAhead(ctx context.Context, s storage.Storage, path, dir string, modes pgperm.Modes, o PushOptions) AheadResult {
	before, err := os.Stat(path)
	if err != nil {
		return AheadResult{PushResult: PushResult{Name: filepath.Base(path)}, Err: err}
	}
	res, err := Push(ctx, s, path, o)
	if err != nil {
		return AheadResult{PushResult: PushResult{Name: filepath.Base(path)}, Err: err}
	}
	after, err := os.Stat(path)
	if err != nil || !os.SameFile(before, after) || markerOf(before) != markerOf(after) {
		return AheadResult{PushResult: res, Err: errors.New("the file changed while it was pushed; PostgreSQL's call will push it")}
	}
	m := markerOf(after)
	m.Repo, m.Pushed = o.Repo, time.Now()
	data, _ := json.Marshal(m)
	tmp := filepath.Join(dir, "."+res.Name+".tmp")
	if err := modes.WriteFile(tmp, data); err != nil {
		return AheadResult{PushResult: res, Err: err}
	}
	if err := os.Rename(tmp, filepath.Join(dir, res.Name)); err != nil {
		os.Remove(tmp)
		return AheadResult{PushResult: res, Err: err}
	}
	return AheadResult{PushResult: res}
}

// readyFiles lists up to n WAL files with a .ready status in pg_wal (the
// directory of the file being pushed), oldest segment first, without
// skip. History files come first: recovery needs them before the new
// timeline's segments.
func readyFiles(walDir, skip string, n int) []string {
	entries, err := os.ReadDir(filepath.Join(walDir, "archive_status"))
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".ready")
		if !ok || name == skip {
			continue
		}
		if _, err := wal.ParseFileName(name); err != nil {
			continue
		}
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return wal.ArchiveLess(names[i], names[j]) })
	return names[:min(n, len(names))]
}

// pruneMarkers removes markers too old to be trusted.
func pruneMarkers(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > MarkerTTL {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// String describes a look-ahead result for a log line.
func (r AheadResult) String() string {
	if r.Err != nil {
		return fmt.Sprintf("%s: %v", r.Name, r.Err)
	}
	return r.Name
}
