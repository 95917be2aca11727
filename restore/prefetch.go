package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/walship/walship/internal/pgperm"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// Prefetching. PostgreSQL asks restore_command for one segment at a time
// and replays it before asking for the next, so a fetch that goes to the
// network each time makes replay wait for a round trip and a download
// per segment. wal-fetch therefore starts, next to the data directory, a
// detached prefetcher (one per data directory) that keeps the segments
// after the last one asked for downloaded and verified in a spool:
//
//	<data directory>/pgsql_tmp_walship_prefetch/
//	    lock                   held (flock) by the running prefetcher
//	    boot                   the machine's boot id when the spool was filled
//	    want                   the last segment wal-fetch was asked for
//	    <segment>              verified segments, ready to be renamed into pg_wal
//	    <segment>.inflight     a download in progress (wal-fetch waits for it)
//	    absent/<name>          "not archived" answers, for a standby's polling
//
// The name starts with pgsql_tmp, so PostgreSQL leaves the directory out
// of base backups, and it lives in the data directory, so a prefetched
// segment reaches pg_wal by rename; its directories and files get the
// data directory's modes (0700/0600, or 0750/0640 with group access).
// A prefetched file is the archived object, verified like any fetch
// (checksum, size, page header, system identifier); archived objects are
// never rewritten, so it cannot be stale, and it is used only for
// exactly the name asked for. Spool files are not fsynced: the spool is
// used only in the boot it was filled in (the page cache is then
// authoritative), so after a crash a file that looks complete but never
// reached the disk is never used. The window
// follows the requests (a new timeline's names replace the old ones), is
// bounded to Prefetch segments on disk, and the prefetcher removes the
// spool and exits when recovery ends or nothing was asked for a minute.

// SpoolName is the prefetch spool directory inside a data directory.
const SpoolName = "pgsql_tmp_walship_prefetch"

const (
	wantName    = "want"
	bootName    = "boot"
	lockName    = "lock"
	absentDir   = "absent"
	idleExit    = time.Minute
	pollPeriod  = 20 * time.Millisecond
	inflightExt = ".inflight"
	// AbsentTTL is how long a standby trusts a "not archived" answer for
	// a name before asking the archive again.
	AbsentTTL = 2 * time.Second
)

// Spool returns the prefetch spool of data directory dir.
func Spool(dir string) string { return filepath.Join(dir, SpoolName) }

// PrefetchLog is the helper's log inside the spool: it does not write to
// the server's log, whose pipe it would hold open after wal-fetch exits.
// It goes when the spool goes, at the end of recovery.
const PrefetchLog = "prefetch.log"

// TakePrefetched moves a prefetched copy of name into dest, if the spool
// holds one whose size and header match the segment (the content was
// verified when it was downloaded). It reports whether it did.
func TakePrefetched(spool, name, dest string) bool {
	if boot, err := os.ReadFile(filepath.Join(spool, bootName)); err != nil || string(boot) != bootID() {
		return false
	}
	path := filepath.Join(spool, name)
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	fn, err := wal.ParseFileName(name)
	ok := err == nil && fn.Kind == wal.KindSegment
	if ok {
		st, err := f.Stat()
		head := make([]byte, wal.LongPageHeaderSize)
		_, rerr := f.ReadAt(head, 0)
		ok = err == nil && rerr == nil
		if ok {
			var hdr wal.PageHeader
			hdr, err = wal.ParsePageHeader(head)
			ok = err == nil && int64(hdr.SegSize) == st.Size()
			if ok {
				_, err = wal.CheckSegmentHeader(head, fn, st.Size())
				ok = err == nil
			}
		}
	}
	f.Close()
	if !ok {
		os.Remove(path)
		return false
	}
	if err := os.Rename(path, dest); err != nil {
		// pg_wal on another file system: copy.
		if err := copyFile(path, dest, spoolModes(spool)); err != nil {
			return false
		}
		os.Remove(path)
	}
	return true
}

// copyFile copies src to dest through a temporary file of mode m.File
// and a rename (not synced: see Fetch).
func copyFile(src, dest string, m pgperm.Modes) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := m.CreateTemp(filepath.Dir(dest), ".walship-fetch-*")
	if err != nil {
		return err
	}
	_, err = io.Copy(tmp, in)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dest)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// AwaitPrefetch waits while the prefetcher downloads name, for at most
// limit, and then takes it like TakePrefetched. It reports false at once
// when no download of name is in progress.
func AwaitPrefetch(ctx context.Context, spool, name, dest string, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	marker := filepath.Join(spool, name+inflightExt)
	for {
		if TakePrefetched(spool, name, dest) {
			return true
		}
		if _, err := os.Stat(marker); err != nil || time.Now().After(deadline) || ctx.Err() != nil {
			return TakePrefetched(spool, name, dest)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// spoolModes returns the modes of the spool's directories and files:
// the data directory's (PostgreSQL's rule), as for anything in it.
func spoolModes(spool string) pgperm.Modes { return pgperm.Of(filepath.Dir(spool)) }

// Want records that wal-fetch was asked for name, for the prefetcher.
func Want(spool, name string) error {
	m := spoolModes(spool)
	if err := m.MkdirAll(spool); err != nil {
		return err
	}
	tmp := filepath.Join(spool, wantName+".tmp"+fmt.Sprint(os.Getpid()))
	if err := m.WriteFile(tmp, []byte(name)); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(spool, wantName))
}

// PrefetcherRunning reports whether a prefetcher holds the spool's lock.
func PrefetcherRunning(spool string) bool {
	f, err := os.Open(filepath.Join(spool, lockName))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// RecentlyAbsent reports whether the archive answered "not archived" for
// name within AbsentTTL.
func RecentlyAbsent(spool, name string) bool {
	st, err := os.Stat(filepath.Join(spool, absentDir, name))
	return err == nil && time.Since(st.ModTime()) < AbsentTTL
}

// MarkAbsent records a "not archived" answer for name.
func MarkAbsent(spool, name string) {
	m := spoolModes(spool)
	dir := filepath.Join(spool, absentDir)
	if m.MkdirAll(dir) == nil {
		m.WriteFile(filepath.Join(dir, name), nil)
	}
}

// PrefetchOptions configures Prefetch.
type PrefetchOptions struct {
	FetchOptions
	Spool    string // the spool directory (Spool(DataDir))
	Window   int    // segments kept ahead of the last one asked for
	Parallel int    // downloads at once
	SegSize  int64
	Logger   *slog.Logger
}

// Prefetch runs the prefetcher until recovery ends, nothing is asked for
// idleExit, or ctx ends; then it removes the spool. It returns at once
// when another prefetcher holds the spool.
func Prefetch(ctx context.Context, s storage.Storage, o PrefetchOptions) error {
	if o.Window <= 0 {
		return nil
	}
	o.Parallel = max(1, min(o.Parallel, o.Window))
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := spoolModes(o.Spool)
	if err := m.MkdirAll(o.Spool); err != nil {
		return err
	}
	lock, err := m.OpenFile(filepath.Join(o.Spool, lockName), os.O_RDWR)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil // another one runs
	}
	// Whatever an earlier prefetcher left may predate a crash: start
	// empty, and record the boot the new files belong to.
	entries, _ := os.ReadDir(o.Spool)
	for _, e := range entries {
		if e.Name() != lockName && e.Name() != wantName && e.Name() != PrefetchLog {
			os.RemoveAll(filepath.Join(o.Spool, e.Name()))
		}
	}
	// This helper's own stderr: kept, but bounded.
	if st, err := os.Stat(filepath.Join(o.Spool, PrefetchLog)); err == nil && st.Size() > 1<<20 {
		os.Truncate(filepath.Join(o.Spool, PrefetchLog), 0)
	}
	if err := m.WriteFile(filepath.Join(o.Spool, bootName), []byte(bootID())); err != nil {
		return err
	}
	p := &prefetcher{s: s, o: o, log: log, inflight: map[string]bool{}, absent: map[string]time.Time{}}
	defer p.cleanup()
	return p.run(ctx)
}

type prefetcher struct {
	s   storage.Storage
	o   PrefetchOptions
	log *slog.Logger

	mu       sync.Mutex
	inflight map[string]bool
	absent   map[string]time.Time // name → when the archive said "not archived"
	wg       sync.WaitGroup
	sem      chan struct{}
}

func (p *prefetcher) run(ctx context.Context) error {
	p.sem = make(chan struct{}, p.o.Parallel)
	ctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); p.wg.Wait() }()
	lastWant, lastChange := "", time.Now()
	for {
		if !inRecovery(p.o.DataDir) {
			p.log.Debug("recovery ended: prefetcher exits")
			return nil
		}
		data, err := os.ReadFile(filepath.Join(p.o.Spool, wantName))
		want := strings.TrimSpace(string(data))
		if err == nil && want != lastWant {
			lastWant, lastChange = want, time.Now()
		}
		if time.Since(lastChange) > idleExit {
			p.log.Debug("nothing asked for a minute: prefetcher exits")
			return nil
		}
		if fn, err := wal.ParseFileName(lastWant); err == nil && fn.Kind == wal.KindSegment {
			p.step(ctx, fn)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pollPeriod):
		}
	}
}

// step moves the window to the segments after want: removes what falls
// out of it and starts downloads of what is missing, in order, stopping
// at a segment the archive does not hold yet.
func (p *prefetcher) step(ctx context.Context, want wal.FileName) {
	seg, err := want.SegNo(p.o.SegSize)
	if err != nil {
		return
	}
	window := map[string]bool{}
	var names []string
	for i := 1; i <= p.o.Window; i++ {
		name := wal.SegmentFileName(want.TLI, seg+wal.SegNo(i), p.o.SegSize)
		window[name] = true
		names = append(names, name)
	}
	entries, _ := os.ReadDir(p.o.Spool)
	present := map[string]bool{}
	for _, e := range entries {
		fn, err := wal.ParseFileName(e.Name())
		if err != nil || fn.Kind != wal.KindSegment {
			continue
		}
		if !window[e.Name()] {
			os.Remove(filepath.Join(p.o.Spool, e.Name())) // consumed elsewhere, or another timeline
			continue
		}
		present[e.Name()] = true
	}
	for _, name := range names {
		if present[name] {
			continue
		}
		p.mu.Lock()
		busy := p.inflight[name]
		when, gone := p.absent[name]
		p.mu.Unlock()
		if gone && time.Since(when) < AbsentTTL {
			return // not archived yet: nothing after it is either
		}
		if busy {
			continue
		}
		select {
		case p.sem <- struct{}{}:
		default:
			return // all download slots busy
		}
		p.mu.Lock()
		p.inflight[name] = true
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.sem }()
			p.fetch(ctx, name)
		}()
	}
}

func (p *prefetcher) fetch(ctx context.Context, name string) {
	start := time.Now()
	marker := filepath.Join(p.o.Spool, name+inflightExt)
	spoolModes(p.o.Spool).WriteFile(marker, nil)
	_, err := Fetch(ctx, p.s, name, filepath.Join(p.o.Spool, name), p.o.FetchOptions)
	os.Remove(marker)
	p.mu.Lock()
	delete(p.inflight, name)
	if errors.Is(err, ErrNotFound) {
		p.absent[name] = time.Now()
	} else {
		delete(p.absent, name)
	}
	p.mu.Unlock()
	switch {
	case errors.Is(err, ErrNotFound):
		MarkAbsent(p.o.Spool, name)
	case err != nil && ctx.Err() == nil:
		p.log.Warn(fmt.Sprintf("prefetch of %s failed (wal-fetch will fetch it itself): %v", name, err), "file", name)
	case err == nil:
		p.log.Debug("prefetched", "file", name, "ms", time.Since(start).Milliseconds())
	}
}

// cleanup removes the spool's files; the lock goes with the directory.
func (p *prefetcher) cleanup() {
	os.RemoveAll(p.o.Spool)
}

// inRecovery reports whether the data directory still asks for recovery.
func inRecovery(dir string) bool {
	for _, f := range []string{"standby.signal", "recovery.signal"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// bootID identifies the current boot of the machine ("" when unknown,
// which makes the spool unusable rather than trusted).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "unknown-" + fmt.Sprint(os.Getpid())
	}
	return strings.TrimSpace(string(b))
}
