package archive

import (
	"bytes"
	"fmt"
)

// Upper bounds of the small objects walship reads whole into memory. The
// sizes are recorded in the archive, so a damaged or hostile archive could
// otherwise make a reader allocate without limit.
const (
	MaxRecordSize   = 16 << 20 // backup.json, started.json, cluster.json
	MaxHistorySize  = 16 << 20 // a timeline history file
	MaxManifestSize = 1 << 30  // a backup manifest: about 8 million files
)

// ReadSmall reads the whole verified content of a small object (a record,
// a history file, a manifest). An object recorded as larger than limit is
// refused before anything is read, and the reader never returns more than
// the recorded size, so memory stays bounded by limit.
func ReadSmall(vr *VerifyingReader, limit int64) ([]byte, error) {
	size := vr.Size()
	if size < 0 || size > limit {
		return nil, fmt.Errorf("%w: %s is recorded as %d bytes, more than the %d such an object may hold; the archive is damaged or was tampered with",
			ErrCorrupt, vr.key, size, limit)
	}
	var buf bytes.Buffer
	buf.Grow(int(size) + bytes.MinRead)
	if _, err := buf.ReadFrom(vr); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
