package archive

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/wal"
)

// IsPartialSnapshot reports whether key is one of wal-stream's snapshots
// of a segment in progress (see PartialPrefix).
func IsPartialSnapshot(key string) bool { return strings.HasPrefix(key, PartialPrefix) }

// PartialPrefix holds snapshots of segments wal-stream is still
// receiving (wal-stream --partial-interval):
//
//	partial/<segment>.<bytes, 8 hex digits><ext>
//
// Each snapshot is a new object (nothing is rewritten); wal-stream removes
// older snapshots of a segment once a newer one is stored, and all of
// them once the complete segment is archived. wal-fetch uses them only
// when asked (--partial), for a disaster restore that must reach the
// newest WAL of a primary lost for good.
const PartialPrefix = "partial/"

// PartialKey is the key of a snapshot of the first n bytes of segment.
func PartialKey(segment string, n int64, c codec.Codec) string {
	return fmt.Sprintf("%s%s.%08X%s", PartialPrefix, segment, n, c.Ext())
}

// Partial is one stored snapshot.
type Partial struct {
	Key   string
	Bytes int64 // bytes of the segment it holds
}

// ListPartials returns the snapshots of segment, smallest first.
func ListPartials(ctx context.Context, s storage.Storage, segment string) ([]Partial, error) {
	var out []Partial
	err := s.List(ctx, PartialPrefix+segment+".", func(o storage.ObjectInfo) error {
		base, _ := codec.Split(strings.TrimPrefix(o.Key, PartialPrefix+segment+"."))
		n, err := strconv.ParseUint(base, 16, 40)
		if err != nil || len(base) != 8 || fmt.Sprintf("%08X", n) != base {
			return nil // not a snapshot: PartialKey writes 8 upper-case digits
		}
		out = append(out, Partial{Key: o.Key, Bytes: int64(n)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Bytes < out[j].Bytes })
	return out, nil
}

// PutPartial stores a snapshot of the first n bytes of the segment file f
// (a .partial being received). It never overwrites: a snapshot of the
// same length stored before is fine.
func PutPartial(ctx context.Context, s storage.Storage, segment string, f *os.File, n int64, c codec.Codec) (string, error) {
	if _, err := wal.ParseFileName(segment); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadName, err)
	}
	obj, err := prepare(f, n, c)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", f.Name(), err)
	}
	defer obj.close()
	if obj.digest.Size != n {
		return "", fmt.Errorf("%w: %s holds %d bytes, not %d", ErrInvalid, f.Name(), obj.digest.Size, n)
	}
	key := PartialKey(segment, n, c)
	err = s.Put(ctx, key, obj.body, obj.size, obj.digest.meta())
	if err != nil && !errors.Is(err, storage.ErrExist) {
		return "", err
	}
	return key, nil
}
