package cleanup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/walship/walship/archive"
	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
)

// RefusedError reports objects the storage would not delete because they
// are under retention (S3 Object Lock) or a legal hold. What could go
// went, in an order that leaves the archive consistent; the message says
// what stays, until when, and what to do. It matches the storage's
// error (errors.Is, errors.As), a *storage.RetentionError among them.
type RefusedError struct {
	msg string
	err error
}

func (e *RefusedError) Error() string { return e.msg }
func (e *RefusedError) Unwrap() error { return e.err }

// refusal finds, in a failed delete, the first object refused because of
// retention: its key ("" when the error does not name it) and why. ok is
// false when nothing was refused for that reason.
func refusal(err error) (key string, re *storage.RetentionError, ok bool) {
	var de *storage.DeleteError
	if errors.As(err, &de) {
		for _, f := range de.Failed {
			if errors.As(f.Err, &re) {
				return f.Key, re, true
			}
		}
	}
	if errors.As(err, &re) {
		return "", re, true
	}
	return "", nil, false
}

// afterRetention says when a refused delete can succeed.
func afterRetention(re *storage.RetentionError) string {
	if re.LegalHold {
		return "once the legal hold is lifted"
	}
	return "after that"
}

// deleteRetained removes keys in this order, in batches, like
// storage.DeleteAll, but goes on past objects refused because of
// retention (the refusals are returned; the objects after a retained one
// are often retained too, but not always). Any other failure stops it and
// is returned.
func deleteRetained(ctx context.Context, s storage.Storage, keys []string) ([]storage.KeyError, error) {
	var refused []storage.KeyError
	for chunk := range slices.Chunk(keys, storage.MaxBatch) {
		// A storage without batches stops at the first key refused:
		// the others are sent again, without it. Each round drops at
		// least one key; a batch takes one round more, of keys already
		// gone.
		pending := chunk
		for len(pending) > 0 {
			err := storage.DeleteAll(ctx, s, pending, nil)
			if err == nil {
				break
			}
			var de *storage.DeleteError
			if _, _, ok := refusal(err); !ok || !errors.As(err, &de) || len(de.Failed) == 0 {
				return refused, err
			}
			refused = append(refused, de.Failed...)
			failed := map[string]bool{}
			for _, f := range de.Failed {
				failed[f.Key] = true
			}
			pending = slices.DeleteFunc(slices.Clone(pending), func(k string) bool { return failed[k] })
		}
	}
	slices.SortStableFunc(refused, func(a, b storage.KeyError) int { return strings.Compare(a.Key, b.Key) })
	return refused, nil
}

// walRefused describes WAL files kept by retention: "40 are refused:
// 000000010000000000000030 is under Object Lock retention until … (compliance)".
func walRefused(refused []storage.KeyError) (string, *storage.RetentionError) {
	key, re, _ := refusal(&storage.DeleteError{Failed: refused})
	name, _ := codec.Split(strings.TrimPrefix(key, archive.WALPrefix))
	return fmt.Sprintf("%d are refused: %s is %s", len(refused), name, re), re
}
