package storage

import (
	"context"
	"fmt"
	"io"
)

// CheckMetadata reports whether meta follows the rules every backend
// accepts: keys are non-empty lower-case ASCII letters, digits, '-' and
// '_' (S3 folds user metadata keys to lower case, so anything else would
// not round-trip); values are printable ASCII without leading or trailing
// spaces (HTTP headers trim them).
func CheckMetadata(meta map[string]string) error {
	for k, v := range meta {
		if k == "" {
			return Permanent(fmt.Errorf("metadata key is empty"))
		}
		for _, c := range []byte(k) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return Permanent(fmt.Errorf("metadata key %q: only lower-case letters, digits, '-' and '_' are allowed", k))
			}
		}
		for _, c := range []byte(v) {
			if c < 0x20 || c > 0x7e {
				return Permanent(fmt.Errorf("metadata %s=%q: values must be printable ASCII", k, v))
			}
		}
		if v != "" && (v[0] == ' ' || v[len(v)-1] == ' ') {
			return Permanent(fmt.Errorf("metadata %s=%q: values must not start or end with a space", k, v))
		}
	}
	return nil
}

// CopyBody copies exactly size bytes from body to w, checking ctx between
// chunks so that a cancelled Put stops promptly. A body that ends early
// or holds more than size bytes is an error: storing it would archive a
// truncated or mislabelled object. Backends use it to fill their temporary
// object before making it visible.
func CopyBody(ctx context.Context, w io.Writer, body io.Reader, size int64) error {
	if size < 0 {
		return Permanent(fmt.Errorf("negative object size %d", size))
	}
	buf := make([]byte, min(size+1, 256<<10))
	var done int64
	for done < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(body, buf[:min(int64(len(buf)), size-done)])
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			done += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return Permanent(fmt.Errorf("body ended after %d of %d bytes", done, size))
		}
		if err != nil {
			return fmt.Errorf("reading body: %w", err)
		}
	}
	// One more byte would mean size understated the body.
	if n, _ := io.ReadFull(body, buf[:1]); n > 0 {
		return Permanent(fmt.Errorf("body is longer than the declared %d bytes", size))
	}
	return ctx.Err()
}

// CopyStream copies r to w until r reports io.EOF, checking ctx between
// chunks so that a cancelled PutStream stops promptly, and returns the
// number of bytes copied. An error from r comes back wrapped ("reading
// the stream: …", still matching it with errors.Is); an error from w comes
// back as is, so a backend can tell its own failure from its caller's.
// It holds one 256 KiB buffer, whatever the length of the stream.
func CopyStream(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return done, werr
			}
			done += int64(n)
		}
		if err == io.EOF {
			return done, ctx.Err()
		}
		if err != nil {
			return done, fmt.Errorf("reading the stream: %w", err)
		}
	}
}
