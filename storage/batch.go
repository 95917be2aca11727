package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// BatchDeleter is implemented by backends that remove many objects in one request.
type BatchDeleter interface {
	// DeleteBatch removes keys (at most MaxBatch of them). Missing keys are not an error.
	// When some keys could not be removed, the error is a *DeleteError.
	DeleteBatch(ctx context.Context, keys []string) error
}

// MaxBatch is the most keys one DeleteBatch call takes.
const MaxBatch = 1000 // S3's DeleteObjects limit

// deleteWorkers bounds the Delete calls DeleteAll (and a retrying
// storage's DeleteBatch) makes at once on a backend without batches: enough
// to hide a round trip, few enough not to be throttled.
const deleteWorkers = 16

// DeleteError reports the keys a batch could not remove, each with its
// error, in the order they were given. The other keys of the batch were
// removed.
//
// It matches (errors.Is, errors.As) every per-key error, and IsPermanent
// reports true for it only when every failure is permanent: a batch with
// some keys worth retrying is worth retrying.
type DeleteError struct {
	Failed []KeyError
}

// KeyError is one key a batch could not remove, and why.
type KeyError struct {
	Key string
	Err error
}

// Error is one line: how many keys failed, then the first of them and its
// error, which carries the backend's hint (access denied, object lock…).
func (e *DeleteError) Error() string {
	if len(e.Failed) == 0 {
		return "delete: no object failed"
	}
	first := e.Failed[0]
	msg := "<nil>"
	if first.Err != nil {
		// One line whatever the backend wrote, for logs and exit messages.
		msg = strings.Join(strings.Fields(first.Err.Error()), " ")
	}
	if len(e.Failed) == 1 {
		return fmt.Sprintf("could not delete %s: %s", first.Key, msg)
	}
	return fmt.Sprintf("could not delete %d objects; the first, %s: %s", len(e.Failed), first.Key, msg)
}

// Unwrap returns the per-key errors. When not every failure is permanent,
// the Permanent marks are hidden from errors.As (and so from IsPermanent);
// errors.Is and errors.As for anything else still reach every error.
func (e *DeleteError) Unwrap() []error {
	all := len(e.Failed) > 0
	for _, f := range e.Failed {
		all = all && IsPermanent(f.Err)
	}
	errs := make([]error, 0, len(e.Failed))
	for _, f := range e.Failed {
		if f.Err == nil {
			continue
		}
		if all {
			errs = append(errs, f.Err)
		} else {
			errs = append(errs, unmarked{f.Err})
		}
	}
	return errs
}

// unmarked is err without its Permanent mark, for a DeleteError where
// other keys failed transiently.
type unmarked struct{ err error }

func (u unmarked) Error() string { return u.err.Error() }

func (u unmarked) Is(target error) bool { return errors.Is(u.err, target) }

func (u unmarked) As(target any) bool {
	if _, ok := target.(*permanentError); ok {
		return false
	}
	return errors.As(u.err, target)
}

// DeleteAll removes keys from s: in batches of MaxBatch when s is a
// BatchDeleter, otherwise with up to 16 concurrent Delete calls. progress
// (may be nil) is called after each batch/each key with the number removed
// so far; it is never called concurrently. It stops at the first failure
// (ctx cancellation included) and returns it; a *DeleteError when per-key
// failures were reported. Missing keys count as removed.
//
// Batches are sent one after another: a single DeleteObjects request
// already removes a thousand objects, and S3 throttles a prefix beyond
// a few thousand deletes a second.
func DeleteAll(ctx context.Context, s Storage, keys []string, progress func(done int)) error {
	bd, ok := s.(BatchDeleter)
	if !ok {
		return deleteEach(ctx, s, keys, progress)
	}
	done := 0
	for batch := range slices.Chunk(keys, MaxBatch) {
		if ctx.Err() != nil {
			return stoppedDeleting(ctx, s, done, len(keys))
		}
		if err := bd.DeleteBatch(ctx, batch); err != nil {
			return err
		}
		done += len(batch)
		if progress != nil {
			progress(done)
		}
	}
	return nil
}

// errDeleteStopped ends the Delete calls still running once one failed.
var errDeleteStopped = errors.New("deleting stopped: another key failed")

// deleteEach removes keys with up to deleteWorkers concurrent s.Delete
// calls and stops at the first failure: the keys that failed until then
// come back as a *DeleteError; the keys not tried yet are not in it.
func deleteEach(ctx context.Context, s Storage, keys []string, progress func(done int)) error {
	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var (
		mu     sync.Mutex
		next   int
		done   int
		failed []KeyError
		wg     sync.WaitGroup
	)
	for range min(deleteWorkers, len(keys)) {
		wg.Go(func() {
			for {
				mu.Lock()
				if next == len(keys) || wctx.Err() != nil {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()

				err := s.Delete(wctx, keys[i])

				mu.Lock()
				switch {
				case err == nil:
					done++
					if progress != nil {
						progress(done)
					}
				case wctx.Err() == nil:
					// Not a consequence of a cancellation, the
					// caller's or ours: the key's own failure.
					failed = append(failed, KeyError{Key: keys[i], Err: err})
					stop(errDeleteStopped)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	switch {
	case len(failed) > 0:
		return &DeleteError{Failed: failed}
	case done < len(keys):
		return stoppedDeleting(ctx, s, done, len(keys))
	}
	return nil
}

// stoppedDeleting reports that ctx ended a deletion of total keys after
// done of them.
func stoppedDeleting(ctx context.Context, s Storage, done, total int) error {
	return fmt.Errorf("delete from %s stopped after %d of %d objects: %w", s, done, total, context.Cause(ctx))
}
