package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/walship/walship/codec"
	"github.com/walship/walship/storage"
)

// PutStream compresses everything read from r with c and stores it under
// key (which must carry c's extension) without holding it in memory. The
// digest of the uncompressed content is returned, not stored with the
// object: it is known only at the end, so the caller records it (base
// backups keep it in their metadata record, written last).
func PutStream(ctx context.Context, s storage.Storage, key string, r io.Reader, c codec.Codec) (Digest, int64, error) {
	pr, pw := io.Pipe()
	h := sha256.New()
	var n int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		zw, err := c.NewStreamWriter(pw)
		if err == nil {
			n, err = io.Copy(zw, io.TeeReader(r, h))
			if cerr := zw.Close(); err == nil {
				err = cerr
			}
		}
		pw.CloseWithError(err)
	}()
	stored, err := s.PutStream(ctx, key, pr, nil)
	// Unblock the compressor if the upload gave up early, and wait for it.
	pr.CloseWithError(fmt.Errorf("upload of %s ended", key))
	<-done
	if err != nil {
		return Digest{}, 0, err
	}
	return Digest{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, stored, nil
}
