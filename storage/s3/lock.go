package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/walship/walship/storage"
)

// Object Lock retention modes (Options.ObjectLockMode).
const (
	// LockCompliance: nobody, not even the account's root user, can
	// delete an object or shorten its retention before it ends.
	LockCompliance = "compliance"
	// LockGovernance: a credential with s3:BypassGovernanceRetention can
	// delete the object or lift its retention early.
	LockGovernance = "governance"
)

// maxLockDays bounds Options.ObjectLockDays (100 years, as AWS S3 does).
const maxLockDays = 36500

// objectLock is the retention every new object gets; days 0 means none.
type objectLock struct {
	days   int
	mode   types.ObjectLockMode
	exempt func(key string) bool
}

func checkObjectLock(days int, mode string) (objectLock, error) {
	if days < 0 || days > maxLockDays {
		return objectLock{}, fmt.Errorf("--object-lock-days %d: give 1 to %d days, or 0 for no Object Lock", days, maxLockDays)
	}
	var m types.ObjectLockMode
	switch strings.ToLower(mode) {
	case "", LockCompliance:
		m = types.ObjectLockModeCompliance
	case LockGovernance:
		m = types.ObjectLockModeGovernance
	default:
		return objectLock{}, fmt.Errorf("--object-lock-mode %q: use %s or %s", mode, LockCompliance, LockGovernance)
	}
	if days == 0 {
		return objectLock{}, nil
	}
	return objectLock{days: days, mode: m}, nil
}

// lockHeaders are the Object Lock settings of a write that starts now:
// none without Object Lock. S3 wants an integrity checksum on such a
// request; every walship write carries a CRC32C (a PutObject in a header,
// a multipart upload in each part).
func (s *Storage) lockHeaders(key string) (types.ObjectLockMode, *time.Time) {
	if s.lock.days == 0 || (s.lock.exempt != nil && s.lock.exempt(key)) {
		return "", nil
	}
	until := time.Now().Add(time.Duration(s.lock.days) * 24 * time.Hour).UTC()
	return s.lock.mode, &until
}

// lockProblem explains a write refused because the bucket cannot lock
// objects, or "" when err is something else.
func (s *Storage) lockProblem(op string, err error) string {
	if s.lock.days == 0 || (op != "put" && !strings.HasPrefix(op, "start multipart")) {
		return ""
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return ""
	}
	text := strings.ToLower(ae.ErrorCode() + " " + ae.ErrorMessage())
	if httpStatus(err) == http.StatusBadRequest && (strings.Contains(text, "object lock") || strings.Contains(text, "objectlock")) {
		return fmt.Sprintf("bucket %s has no Object Lock configuration: create it with object locking, or drop --object-lock-days", s.bucket)
	}
	return ""
}

// versioning remembers, for one Storage (one walship run), whether the
// bucket keeps object versions.
type versioning struct {
	mu    sync.Mutex
	known bool
	on    bool
}

// versioned reports whether the bucket keeps versions (versioning
// enabled, or suspended with versions left), asking the server once per
// Storage. Only deletes ask: archiving and restoring never pay for it. A
// bucket with Object Lock always keeps versions.
func (s *Storage) versioned(ctx context.Context) (bool, error) {
	if s.lock.days > 0 {
		return true, nil
	}
	s.vers.mu.Lock()
	defer s.vers.mu.Unlock()
	if s.vers.known {
		return s.vers.on, nil
	}
	w := s.watch(ctx)
	defer w.stop()
	out, err := s.client.GetBucketVersioning(w.ctx, &s3.GetBucketVersioningInput{Bucket: aws.String(s.bucket)})
	switch {
	case err == nil:
		s.vers.known, s.vers.on = true, out.Status != ""
	case apiCode(err) == "NotImplemented":
		// A server without versioning keeps no versions.
		s.vers.known, s.vers.on = true, false
	case apiCode(err) == "AccessDenied":
		return false, storage.Permanent(fmt.Errorf("s3 delete in %s: cannot tell whether the bucket keeps object versions: "+
			"grant s3:GetBucketVersioning (on a versioned bucket walship deletes every version, or an object would only be hidden): %w", s, err))
	default:
		return false, s.failAt(ctx, "delete", s.String()+" (asking whether the bucket keeps versions)", w, err)
	}
	return s.vers.on, nil
}

// deleteVersions removes keys from a versioned bucket for good: every
// version and delete marker of each, found with ListObjectVersions and
// deleted by version ID with DeleteObjects. A DeleteObject without a
// version ID would only add a delete marker, which hides the object
// without freeing its space and which Object Lock allows: an object
// under retention would look deleted while it stays stored and billed.
//
// Keys refused come back as a *storage.DeleteError. The first refused for
// lack of access is looked at with HeadObject: when it is under Object
// Lock retention or a legal hold, its error is a *storage.RetentionError
// that says until when.
func (s *Storage) deleteVersions(ctx context.Context, keys []string) error {
	index := make(map[string]int, len(keys)) // bucket key → position in keys
	objects := make([]string, 0, len(keys))
	for i, key := range keys {
		if err := checkKey(key); err != nil {
			return storage.Permanent(fmt.Errorf("s3 delete %s: %w", s.url(key), err))
		}
		if _, dup := index[s.objectKey(key)]; !dup {
			index[s.objectKey(key)] = i
			objects = append(objects, s.objectKey(key))
		}
	}
	slices.Sort(objects)
	ids, err := s.listVersions(ctx, objects, index)
	if err != nil {
		return err
	}
	var refused []types.Error
	for chunk := range slices.Chunk(ids, storage.MaxBatch) {
		w := s.watch(ctx)
		out, err := s.client.DeleteObjects(w.ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(s.bucket),
			Delete: &types.Delete{Objects: chunk, Quiet: aws.Bool(true)},
		})
		w.stop()
		if err != nil {
			where := s.url(keyOf(s, chunk[0]))
			if len(chunk) > 1 {
				where = fmt.Sprintf("%s and %d more versions", where, len(chunk)-1)
			}
			return s.failAt(ctx, "delete", where, w, err)
		}
		for _, e := range out.Errors {
			if code := aws.ToString(e.Code); code != "NoSuchKey" && code != "NoSuchVersion" {
				refused = append(refused, e)
			}
		}
	}
	return s.versionFailures(ctx, keys, index, refused)
}

// keyOf is the archive key of an object identifier.
func keyOf(s *Storage, id types.ObjectIdentifier) string {
	return strings.TrimPrefix(aws.ToString(id.Key), s.prefix+"/")
}

// listVersions returns every version and delete marker of the objects
// (bucket keys, sorted) that index holds. It lists from just before the
// first object to the last under their common prefix, so that a batch of
// neighbouring keys (retention deletes WAL in name order) costs about one
// listing page per thousand versions.
func (s *Storage) listVersions(ctx context.Context, objects []string, index map[string]int) ([]types.ObjectIdentifier, error) {
	if len(objects) == 0 {
		return nil, nil
	}
	first, last := objects[0], objects[len(objects)-1]
	prefix := commonPrefix(first, last)
	in := &s3.ListObjectVersionsInput{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)}
	// Listing starts after the key marker: first without its last
	// character sorts before first and after every key before it that
	// does not begin with it.
	if _, n := utf8.DecodeLastRuneInString(first); len(first)-n > len(prefix) {
		in.KeyMarker = aws.String(first[:len(first)-n])
	}
	var ids []types.ObjectIdentifier
	for {
		w := s.watch(ctx)
		out, err := s.client.ListObjectVersions(w.ctx, in)
		w.stop()
		if err != nil {
			if httpStatus(err) == http.StatusForbidden {
				return nil, storage.Permanent(fmt.Errorf("s3 list versions of %s: access denied: deleting from a versioned bucket needs s3:ListBucketVersions and s3:DeleteObjectVersion: %w", s.url(strings.TrimPrefix(first, s.prefix+"/")), err))
			}
			return nil, s.failAt(ctx, "list versions of", "s3://"+s.bucket+"/"+prefix+"*", w, err)
		}
		for _, v := range out.Versions {
			if _, ok := index[aws.ToString(v.Key)]; ok {
				ids = append(ids, types.ObjectIdentifier{Key: v.Key, VersionId: v.VersionId})
			}
		}
		for _, m := range out.DeleteMarkers {
			if _, ok := index[aws.ToString(m.Key)]; ok {
				ids = append(ids, types.ObjectIdentifier{Key: m.Key, VersionId: m.VersionId})
			}
		}
		next := aws.ToString(out.NextKeyMarker)
		if !aws.ToBool(out.IsTruncated) || next > last || next == "" {
			return ids, nil
		}
		in.KeyMarker, in.VersionIdMarker = out.NextKeyMarker, out.NextVersionIdMarker
	}
}

func commonPrefix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}

// versionFailures turns the versions a DeleteObjects refused into a
// *storage.DeleteError with one entry per key, in the order of keys, or
// nil when there are none.
func (s *Storage) versionFailures(ctx context.Context, keys []string, index map[string]int, refused []types.Error) error {
	type failure struct {
		pos     int
		version string
		locked  bool // refused in a way Object Lock would be
		storage.KeyError
	}
	var failed []failure
	seen := map[int]bool{}
	for _, e := range refused {
		pos, ok := index[aws.ToString(e.Key)]
		if !ok || seen[pos] {
			continue
		}
		seen[pos] = true
		code, msg := aws.ToString(e.Code), aws.ToString(e.Message)
		apiErr := &smithy.GenericAPIError{Code: code, Message: msg}
		var err error
		locked := false
		switch {
		case code == "AccessDenied":
			// AWS S3's answer for a version under retention, too.
			locked = true
			err = storage.Permanent(fmt.Errorf("s3 delete %s: access denied: deleting from a versioned bucket needs s3:DeleteObjectVersion, "+
				"and an object under S3 Object Lock retention or a legal hold cannot be deleted before it ends: %w", s.url(keys[pos]), apiErr))
		case lockRefusal(msg):
			// MinIO's: InvalidRequest, "Object is WORM protected …".
			locked = true
			err = storage.Permanent(fmt.Errorf("s3 delete %s: the object is under S3 Object Lock retention or a legal hold, which must end before it can be deleted: %w", s.url(keys[pos]), apiErr))
		default:
			err = s.keyFailure(keys[pos], e)
		}
		failed = append(failed, failure{pos, aws.ToString(e.VersionId), locked, storage.KeyError{Key: keys[pos], Err: err}})
	}
	if len(failed) == 0 {
		return nil
	}
	slices.SortFunc(failed, func(a, b failure) int { return a.pos - b.pos })
	for i, f := range failed {
		if !f.locked {
			continue
		}
		if re := s.retention(ctx, f.Key, f.version); re != nil {
			failed[i].Err = storage.Permanent(fmt.Errorf("s3 delete %s: %w", s.url(f.Key), re))
		}
		break // one look is enough to say why
	}
	de := &storage.DeleteError{Failed: make([]storage.KeyError, len(failed))}
	for i, f := range failed {
		de.Failed[i] = f.KeyError
	}
	return de
}

// retention reads the Object Lock state of one version of key, and
// returns it when it keeps the version from being deleted now; nil when
// it does not, or when it cannot be read (the caller's error stands).
func (s *Storage) retention(ctx context.Context, key, version string) *storage.RetentionError {
	w := s.watch(ctx)
	defer w.stop()
	in := &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.objectKey(key))}
	if version != "" {
		in.VersionId = aws.String(version)
	}
	out, err := s.client.HeadObject(w.ctx, in)
	if err != nil {
		return nil
	}
	re := &storage.RetentionError{
		Mode:      strings.ToLower(string(out.ObjectLockMode)),
		LegalHold: out.ObjectLockLegalHoldStatus == types.ObjectLockLegalHoldStatusOn,
	}
	if until := aws.ToTime(out.ObjectLockRetainUntilDate); until.After(time.Now()) {
		re.Until = until.UTC()
	}
	if re.Until.IsZero() && !re.LegalHold {
		return nil
	}
	return re
}

// lockRefusal reports whether a refusal's message speaks of Object Lock.
func lockRefusal(message string) bool {
	m := strings.ToLower(message)
	return strings.Contains(m, "worm") || strings.Contains(m, "object lock") || strings.Contains(m, "objectlock") ||
		strings.Contains(m, "retention") || strings.Contains(m, "legal hold")
}
