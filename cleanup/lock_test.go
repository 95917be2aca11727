package cleanup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/basebackup"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// lockedStorage refuses to delete the keys in locked, the way the S3
// backend refuses an object under Object Lock retention.
type lockedStorage struct {
	storage.Storage
	locked map[string]*storage.RetentionError
}

func (l *lockedStorage) Delete(ctx context.Context, key string) error {
	if re := l.locked[key]; re != nil {
		return storage.Permanent(fmt.Errorf("delete %s: %w", key, re))
	}
	return l.Storage.Delete(ctx, key)
}

var until = time.Date(2026, 12, 8, 10, 15, 0, 0, time.UTC)

// lock returns the archive as the commands see it (with retries), with
// keys under compliance retention until until.
func (a *fakeArchive) lock(keys ...string) storage.Storage {
	l := &lockedStorage{Storage: a.s, locked: map[string]*storage.RetentionError{}}
	for _, k := range keys {
		l.locked[k] = &storage.RetentionError{Mode: "compliance", Until: until}
	}
	return storage.WithRetry(l, storage.RetryOptions{Attempts: 2, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
}

func (a *fakeArchive) listed() []string {
	inv, err := basebackup.Scan(context.Background(), a.s)
	if err != nil {
		a.t.Fatal(err)
	}
	var names []string
	for _, b := range inv.Backups {
		names = append(names, b.Name)
	}
	return names
}

func (a *fakeArchive) backupKeys(name string) []string {
	var keys []string
	for _, k := range a.keys() {
		if strings.HasPrefix(k, "basebackups/"+name+"/") {
			keys = append(keys, k)
		}
	}
	return keys
}

// TestRetentionRefusesBackup: the oldest of two backups to delete is
// under retention. It stays listed with all its files and the WAL it
// needs; the other goes whole; the error says until when.
func TestRetentionRefusesBackup(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 10)
	a.backup("base_1", 1, 2, t0)
	a.backup("base_2", 1, 5, t0.Add(time.Hour))
	a.backup("base_3", 1, 8, t0.Add(2*time.Hour))
	s := a.lock(a.backupKeys("base_1")...)

	p, err := PlanRetention(context.Background(), s, Policy{RetainFull: 1})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Execute(context.Background(), s, nil)
	t.Logf("%v", err)
	var refused *RefusedError
	var re *storage.RetentionError
	if !errors.As(err, &refused) || !errors.As(err, &re) {
		t.Fatalf("Execute: %v, want a *RefusedError matching a *storage.RetentionError", err)
	}
	want := "backup base_1: 2 objects are under Object Lock retention until 2026-12-08T10:15:00Z (compliance); delete after that; no WAL was removed; 1 other backup(s) deleted"
	if err.Error() != want {
		t.Errorf("error\n %q\nwant\n %q", err, want)
	}
	wantSet(t, "listed backups", a.listed(), []string{"base_1", "base_3"})
	wantSet(t, "backups", a.backupsLeft(), []string{"base_1", "base_3"})
	wantSet(t, "WAL", a.walLeft(), segNames(1, 1, 10))
}

// TestRetentionRefusesWAL: the backup goes, and so does the older WAL;
// the WAL under retention stays and the error counts it.
func TestRetentionRefusesWAL(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 10)
	a.backup("base_1", 1, 2, t0)
	a.backup("base_2", 1, 8, t0.Add(time.Hour))
	var locked []string
	for _, n := range segNames(1, 5, 7) {
		locked = append(locked, "wal/"+n+".zst")
	}
	s := a.lock(locked...)
	p, err := PlanRetention(context.Background(), s, Policy{RetainFull: 1})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Execute(context.Background(), s, nil)
	t.Logf("%v", err)
	want := "deleted 1 backup(s) and 4 of 7 WAL files; 3 are refused: " + segNames(1, 5, 5)[0] +
		" is under Object Lock retention until 2026-12-08T10:15:00Z (compliance); run backup-delete again after that"
	if err == nil || err.Error() != want {
		t.Errorf("error\n %v\nwant\n %q", err, want)
	}
	wantSet(t, "backups", a.backupsLeft(), []string{"base_2"})
	wantSet(t, "WAL", a.walLeft(), segNames(1, 5, 10))
}

// TestRetentionRefusesFiles: a backup's metadata record goes but a file
// of it is held: the backup is no longer listed, no WAL goes, and the
// error says so.
func TestRetentionRefusesFiles(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 10)
	a.backup("base_1", 1, 2, t0)
	a.backup("base_2", 1, 8, t0.Add(time.Hour))
	l := &lockedStorage{Storage: a.s, locked: map[string]*storage.RetentionError{
		"basebackups/base_1/base.tar.zst": {LegalHold: true},
	}}
	s := storage.WithRetry(l, storage.RetryOptions{Attempts: 1})
	p, err := PlanRetention(context.Background(), s, Policy{RetainFull: 1})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Execute(context.Background(), s, nil)
	t.Logf("%v", err)
	for _, part := range []string{"1 objects of the deleted backups are under an Object Lock legal hold", "no longer listed", "once the legal hold is lifted", "no WAL was removed"} {
		if err == nil || !strings.Contains(err.Error(), part) {
			t.Errorf("error %v does not say %q", err, part)
		}
	}
	wantSet(t, "listed backups", a.listed(), []string{"base_2"})
	wantSet(t, "WAL", a.walLeft(), segNames(1, 1, 10))
}

// TestWALCleanupRetention: wal-cleanup removes what retention allows and
// says how much stays.
func TestWALCleanupRetention(t *testing.T) {
	a := newFakeArchive(t)
	a.wal(1, 1, 10)
	s := a.lock("wal/"+segNames(1, 4, 4)[0]+".zst", "wal/"+segNames(1, 6, 6)[0]+".zst")
	removed, err := Archive(context.Background(), s, wal.SegmentFileName(1, 8, seg16), ArchiveOptions{})
	t.Logf("%v", err)
	want := "removed 5 of 7 WAL files older than " + segNames(1, 8, 8)[0] + "; 2 are refused: " + segNames(1, 4, 4)[0] +
		" is under Object Lock retention until 2026-12-08T10:15:00Z (compliance); they can be removed after that"
	if err == nil || err.Error() != want {
		t.Errorf("error\n %v\nwant\n %q", err, want)
	}
	if len(removed) != 5 {
		t.Errorf("removed %v, want 5 keys", removed)
	}
	wantSet(t, "WAL", a.walLeft(), segNames(1, 4, 4), segNames(1, 6, 6), segNames(1, 8, 10))
}
