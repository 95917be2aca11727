package s3

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/walship/walship/storage"
)

const (
	// DefaultPartSize is the size of the first 1,000 parts of a
	// PutStream upload: streams up to 16 GiB use about 64 MiB of memory.
	DefaultPartSize = 16 << 20
	minPartSize     = 5 << 20 // S3's minimum for every part but the last
	maxPartSize     = 5 << 30 // and its maximum for any part
	maxParts        = 10_000
	// partsPerSize parts go out at one part size before it doubles, so
	// that 10,000 parts hold S3's largest object (5 TiB) from the default
	// part size (nearly so, 4.9 TiB, from the 5 MiB minimum), while a
	// 100 GiB stream ends with 64 MiB parts.
	partsPerSize = 1000
	// partsInFlight parts upload at once while the next one is read from
	// the stream: enough to keep a link busy, few enough to bound memory.
	partsInFlight = 3
	// abortTimeout bounds the clean-up after a failed stream, which also
	// runs once the caller's context has ended.
	abortTimeout = time.Minute
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// partSize is the size of part n (counted from 1) of a stream whose first
// parts have size base: it doubles after every 1,000 parts, up to 5 GiB.
// With base 16 MiB, part 1,001 starts after 16 GiB, part 2,001 after
// 48 GiB, part 3,001 after 112 GiB.
func partSize(base int64, n int) int64 {
	size := base
	for i := partsPerSize; i < n && size < maxPartSize; i += partsPerSize {
		size *= 2
	}
	return min(size, maxPartSize)
}

// PutStream implements storage.Storage.
//
// A stream shorter than one part is stored with one conditional
// PutObject, like Put. A longer one becomes a multipart upload: parts are
// read from r one after the other, each carrying its CRC32C, which the
// server verifies before it accepts the part, and up to three of them are
// uploaded at a time while the next one is read, so memory stays at about
// four parts (64 MiB with the default part size, more once parts grow
// after 1,000 of them). Each part, and each request around them, is
// retried with the options WithRetry put in ctx
// (storage.RetryOptionsFromContext), its attempts bounded by the stall
// timeout and by the retry timeout, which grows with the part size.
// CompleteMultipartUpload carries If-None-Match: *, so the object appears
// in one step, and never over another one; the composite CRC32C the
// server reports for it (the CRC32C of the parts' CRC32Cs) is checked.
//
// A key that already exists is refused with one HEAD before the stream
// is read. On any failure the upload is aborted, also after ctx ended.
// A process killed mid-stream cannot abort: its parts stay in the bucket
// as an incomplete multipart upload, invisible to List, Get and Stat but
// billed, until a lifecycle rule (AbortIncompleteMultipartUpload) removes
// it. The same happens if aborting fails, which the error then says.
// Should the server stop answering exactly while the upload is being
// completed, and stay silent through every retry, whether the object was
// stored cannot be known; the error then says so.
func (s *Storage) PutStream(ctx context.Context, key string, r io.Reader, meta map[string]string) (int64, error) {
	if err := checkKey(key); err != nil {
		return 0, storage.Permanent(fmt.Errorf("s3 put %s: %w", s.url(key), err))
	}
	if err := storage.CheckMetadata(meta); err != nil {
		return 0, fmt.Errorf("s3 put %s: %w", s.url(key), err)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("s3 put %s: %w", s.url(key), err)
	}
	if err := s.refuseExisting(ctx, key); err != nil {
		return 0, err
	}
	st := &stream{s: s, key: key, meta: meta, retry: storage.RetryOptionsFromContext(ctx)}
	buf := make([]byte, s.partSize)
	n, eof, err := fill(ctx, r, buf)
	if err != nil {
		return 0, fmt.Errorf("s3 put %s: %w", s.url(key), err)
	}
	if eof {
		if err := st.putSmall(ctx, buf[:n]); err != nil {
			return 0, err
		}
		return int64(n), nil
	}
	return st.putMultipart(ctx, r, buf)
}

// refuseExisting answers ErrExist before any of the stream is read when
// the key is already stored, so that a backup that cannot succeed fails
// at once rather than after uploading gigabytes. It only saves work: the
// conditional request at the end still decides, since another writer may
// store the key in the meantime. Answers that retrying cannot change (a
// missing bucket, a wrong region) are returned too, but not 403, which is
// also how S3 answers a missing key to a caller without s3:ListBucket;
// anything else is left for the upload to run into.
func (s *Storage) refuseExisting(ctx context.Context, key string) error {
	w := s.watch(ctx)
	defer w.stop()
	_, err := s.client.HeadObject(w.ctx, &s3.HeadObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.objectKey(key)),
	})
	switch {
	case err == nil:
		return fmt.Errorf("s3 put %s: %w", s.url(key), storage.ErrExist)
	case isNotFound(err), httpStatus(err) == http.StatusForbidden:
		// A caller without s3:ListBucket (a pushing host under least
		// privilege) gets 403 for a missing key: nothing is known, and
		// the upload's own requests say whether it may write.
		return nil
	}
	err = s.fail(ctx, "put", key, w, err)
	if storage.IsPermanent(err) || ctx.Err() != nil {
		return err
	}
	return nil
}

// fill reads from r until buf is full or r ends (eof), checking ctx
// between reads. An error from r comes back wrapped.
func fill(ctx context.Context, r io.Reader, buf []byte) (n int, eof bool, err error) {
	for n < len(buf) {
		if err := ctx.Err(); err != nil {
			return n, false, err
		}
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, fmt.Errorf("reading the stream: %w", err)
		}
	}
	return n, false, nil
}

// stream is one PutStream upload.
type stream struct {
	s     *Storage
	key   string
	meta  map[string]string
	retry storage.RetryOptions

	id        string // multipart upload ID
	mu        sync.Mutex
	parts     []types.CompletedPart // in the order they finished
	completed bool                  // the object is stored
}

// what names the stream in the messages of storage.Retry.
func (st *stream) what() string { return "put " + st.key }

// putSmall stores a stream that fits in one part with PutObject, retried
// like every part. If an attempt failed without a clear answer (the
// connection broke, the reply was lost) and a later one finds the key
// taken, the object there is checked: the earlier attempt may have stored
// it.
func (st *stream) putSmall(ctx context.Context, data []byte) error {
	sum := encodeCRC(crc32.Checksum(data, castagnoli))
	unsure := false
	return storage.Retry(ctx, st.retry, st.what(), func(ctx context.Context) error {
		body := &section{r: bytes.NewReader(data), size: int64(len(data))}
		defer body.detach()
		err := st.s.putObject(ctx, st.key, body, sum, st.meta)
		switch {
		case errors.Is(err, storage.ErrExist) && unsure:
			mine, herr := st.s.stored(ctx, st.key, int64(len(data)), sum)
			if herr != nil {
				return herr
			}
			if mine {
				return nil
			}
		case err != nil && !storage.IsPermanent(err):
			unsure = true
		}
		return err
	})
}

// putMultipart uploads a stream longer than one part; first is its first
// part, already read.
func (st *stream) putMultipart(ctx context.Context, r io.Reader, first []byte) (int64, error) {
	if err := st.create(ctx); err != nil {
		return 0, err
	}
	size, err := st.uploadParts(ctx, r, first)
	if err == nil {
		err = st.complete(ctx, size)
	}
	if err != nil {
		if !st.completed {
			err = st.abort(ctx, err)
		}
		return 0, err
	}
	return size, nil
}

// create starts the multipart upload. If an attempt creates an upload but
// its reply is lost, the retry starts another one and the first is left
// incomplete, for the bucket's lifecycle rule to remove.
func (st *stream) create(ctx context.Context) error {
	return storage.Retry(ctx, st.retry, st.what(), func(ctx context.Context) error {
		w := st.s.watch(ctx)
		defer w.stop()
		sse, sseKey := st.s.sseHeaders()
		lockMode, lockUntil := st.s.lockHeaders(st.key)
		out, err := st.s.client.CreateMultipartUpload(w.ctx, &s3.CreateMultipartUploadInput{
			Bucket:               aws.String(st.s.bucket),
			Key:                  aws.String(st.s.objectKey(st.key)),
			Metadata:             st.meta,
			ChecksumAlgorithm:    types.ChecksumAlgorithmCrc32c,
			ServerSideEncryption: sse,
			SSEKMSKeyId:          sseKey,
			// Each part carries its CRC32C, the checksum S3 requires
			// of an upload with retention.
			ObjectLockMode:            lockMode,
			ObjectLockRetainUntilDate: lockUntil,
		})
		if err != nil {
			return st.s.fail(ctx, "start multipart upload of", st.key, w, err)
		}
		st.id = aws.ToString(out.UploadId)
		return nil
	})
}

// uploadParts reads the rest of the stream part by part and uploads the
// parts, up to partsInFlight at a time. It returns the stream's length
// once every part is stored, or the first failure, after waiting for the
// uploads still running.
func (st *stream) uploadParts(ctx context.Context, r io.Reader, buf []byte) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	failed := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
			cancel(err) // stops the other parts and the reading
		}
	}
	// A part's buffer goes back to free once its upload ended, before
	// its slot is released, so that no more than partsInFlight+1
	// buffers exist at a time (the one being filled, the ones being
	// sent): the reader allocates only when free is empty.
	slots := make(chan struct{}, partsInFlight)
	free := make(chan []byte, partsInFlight+1)
	n, eof := len(buf), false
	var size int64
	for part := 1; ; part++ {
		data := buf[:n]
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			failed(fmt.Errorf("s3 put %s: %w", st.s.url(st.key), context.Cause(ctx)))
			break
		}
		wg.Go(func() {
			if err := st.uploadPart(ctx, part, data); err != nil {
				failed(err)
			}
			select {
			case free <- data[:cap(data)]:
			default:
			}
			<-slots
		})
		size += int64(n)
		if eof {
			break
		}
		if part == maxParts {
			failed(storage.Permanent(fmt.Errorf("s3 put %s: the stream is longer than the %d parts S3 allows (%d bytes so far): raise the part size", st.s.url(st.key), maxParts, size)))
			break
		}
		next := partSize(st.s.partSize, part+1)
		buf = nil
		select {
		case b := <-free:
			if int64(cap(b)) >= next {
				buf = b[:next]
			}
		default:
		}
		if buf == nil {
			buf = make([]byte, next)
		}
		var err error
		n, eof, err = fill(ctx, r, buf)
		if err != nil {
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			failed(fmt.Errorf("s3 put %s: %w", st.s.url(st.key), err))
			break
		}
		if n == 0 && eof {
			break // the stream ended with the last part
		}
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return size, nil
}

// uploadPart stores one part, retrying it with backoff. The retry
// timeout covers a part of DefaultPartSize and grows in proportion for
// larger parts; the stall timeout still ends an attempt that stops moving.
func (st *stream) uploadPart(ctx context.Context, part int, data []byte) error {
	sum := encodeCRC(crc32.Checksum(data, castagnoli))
	o := st.retry
	o.Timeout *= time.Duration(max(1, (int64(len(data))+DefaultPartSize-1)/DefaultPartSize))
	op := fmt.Sprintf("upload part %d of", part)
	var etag string
	err := storage.Retry(ctx, o, st.what(), func(ctx context.Context) error {
		w := st.s.watch(ctx)
		defer w.stop()
		body := &section{r: bytes.NewReader(data), size: int64(len(data)), progress: w.progress}
		defer body.detach()
		out, err := st.s.client.UploadPart(w.ctx, &s3.UploadPartInput{
			Bucket:            aws.String(st.s.bucket),
			Key:               aws.String(st.s.objectKey(st.key)),
			UploadId:          aws.String(st.id),
			PartNumber:        aws.Int32(int32(part)),
			Body:              body,
			ContentLength:     aws.Int64(int64(len(data))),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
			ChecksumCRC32C:    aws.String(sum),
		})
		if err != nil {
			return st.s.fail(ctx, op, st.key, w, err)
		}
		if got := aws.ToString(out.ChecksumCRC32C); got != "" && got != sum {
			// Sending the part again replaces what the server kept.
			return fmt.Errorf("s3 %s %s: %s reports CRC32C %s for the part, walship sent %s", op, st.s.url(st.key), st.s.endpoint, got, sum)
		}
		etag = aws.ToString(out.ETag)
		return nil
	})
	if err != nil {
		return err
	}
	st.mu.Lock()
	st.parts = append(st.parts, types.CompletedPart{
		PartNumber:     aws.Int32(int32(part)),
		ETag:           aws.String(etag),
		ChecksumCRC32C: aws.String(sum),
	})
	st.mu.Unlock()
	return nil
}

// complete makes the object visible with a conditional
// CompleteMultipartUpload. As in putSmall, a retry that finds the key
// taken after an attempt without a clear answer checks whether that
// attempt stored it.
func (st *stream) complete(ctx context.Context, size int64) error {
	slices.SortFunc(st.parts, func(a, b types.CompletedPart) int {
		return cmp.Compare(aws.ToInt32(a.PartNumber), aws.ToInt32(b.PartNumber))
	})
	sum := compositeCRC(st.parts)
	unsure := false
	err := storage.Retry(ctx, st.retry, st.what(), func(ctx context.Context) error {
		w := st.s.watch(ctx)
		defer w.stop()
		out, err := st.s.client.CompleteMultipartUpload(w.ctx, &s3.CompleteMultipartUploadInput{
			Bucket:          aws.String(st.s.bucket),
			Key:             aws.String(st.s.objectKey(st.key)),
			UploadId:        aws.String(st.id),
			IfNoneMatch:     aws.String("*"),
			MultipartUpload: &types.CompletedMultipartUpload{Parts: st.parts},
		})
		if err != nil {
			if httpStatus(err) == http.StatusPreconditionFailed {
				if unsure {
					mine, herr := st.s.stored(ctx, st.key, size, sum)
					if herr != nil {
						return herr
					}
					if mine {
						st.completed = true
						return nil
					}
				}
				return fmt.Errorf("s3 put %s: %w", st.s.url(st.key), storage.ErrExist)
			}
			err = st.s.fail(ctx, "complete multipart upload of", st.key, w, err)
			if !storage.IsPermanent(err) {
				unsure = true
			}
			return err
		}
		st.completed = true
		// Servers that report the checksum in another form (a full-object
		// CRC, no part count) are not second-guessed.
		if got := aws.ToString(out.ChecksumCRC32C); strings.Contains(got, "-") && got != sum {
			return st.corrupt(ctx, got, sum)
		}
		return nil
	})
	if err != nil && unsure && !st.completed && !errors.Is(err, storage.ErrExist) {
		// Out of attempts, the last ones without an answer: the object
		// may be stored all the same. Look once more.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		mine, herr := st.s.stored(cctx, st.key, size, sum)
		switch {
		case herr == nil && mine:
			st.completed = true
			return nil
		case herr != nil:
			// The one case where the outcome cannot be known: the
			// server stopped answering as the object was being made
			// visible. The abort that follows cannot undo a completion.
			return fmt.Errorf("%w; %s may or may not have stored the object (checking failed too: %v): Stat it before relying on it either way", err, st.s.endpoint, herr)
		}
	}
	return err
}

// corrupt handles an object whose checksum differs from the parts sent:
// it is taken away again, so that nothing wrong stays visible.
func (st *stream) corrupt(ctx context.Context, got, want string) error {
	err := storage.Permanent(fmt.Errorf("s3 put %s: %s reports CRC32C %s for the completed object, walship sent parts adding up to %s: the server did not store what was sent", st.s.url(st.key), st.s.endpoint, got, want))
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	if derr := st.s.Delete(dctx, st.key); derr != nil {
		return fmt.Errorf("%w; removing it failed too, delete it by hand: %v", err, derr)
	}
	return err
}

// abort removes the parts of a failed upload and returns cause, with a
// note if the parts could not be removed. It runs even when ctx has
// ended, with a short time limit of its own. It runs after every part
// upload has returned, since a part arriving after the abort would
// survive it.
func (st *stream) abort(ctx context.Context, cause error) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	o := storage.RetryOptions{Attempts: 3, Timeout: abortTimeout / 3, MinBackoff: 250 * time.Millisecond, MaxBackoff: 2 * time.Second, Logger: st.retry.Logger}
	err := storage.Retry(actx, o, "abort "+st.key, func(ctx context.Context) error {
		w := st.s.watch(ctx)
		defer w.stop()
		_, err := st.s.client.AbortMultipartUpload(w.ctx, &s3.AbortMultipartUploadInput{
			Bucket:   aws.String(st.s.bucket),
			Key:      aws.String(st.s.objectKey(st.key)),
			UploadId: aws.String(st.id),
		})
		if err != nil && apiCode(err) != "NoSuchUpload" {
			return st.s.fail(ctx, "abort multipart upload of", st.key, w, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w; the parts uploaded so far could not be removed (%v): they stay in the bucket as an incomplete multipart upload, invisible to walship but billed, until a lifecycle rule (AbortIncompleteMultipartUpload) removes them", cause, err)
	}
	return cause
}

// stored reports whether the object under key has the given size and
// CRC32C: whether an earlier attempt whose reply was lost stored it,
// rather than another writer. A different object of the same size and
// checksum would pass for ours; with a 32-bit CRC over different content
// that is a 1 in 4 billion chance, taken only after a lost reply.
func (s *Storage) stored(ctx context.Context, key string, size int64, sum string) (bool, error) {
	w := s.watch(ctx)
	defer w.stop()
	out, err := s.client.HeadObject(w.ctx, &s3.HeadObjectInput{
		Bucket:       aws.String(s.bucket),
		Key:          aws.String(s.objectKey(key)),
		ChecksumMode: types.ChecksumModeEnabled,
	})
	if err != nil {
		if isNotFound(err) {
			// The key was taken a moment ago; whatever took it is
			// gone. Another attempt will tell.
			return false, fmt.Errorf("s3 put %s: %s refused the write because the key exists, but the object is gone", s.url(key), s.endpoint)
		}
		return false, s.fail(ctx, "stat", key, w, err)
	}
	return aws.ToInt64(out.ContentLength) == size && aws.ToString(out.ChecksumCRC32C) == sum, nil
}

// compositeCRC is the checksum S3 reports for a multipart object whose
// parts carried CRC32Cs: the CRC32C of the parts' checksums, followed by
// the number of parts.
func compositeCRC(parts []types.CompletedPart) string {
	h := crc32.New(castagnoli)
	for _, p := range parts {
		b, _ := base64.StdEncoding.DecodeString(aws.ToString(p.ChecksumCRC32C))
		h.Write(b)
	}
	return fmt.Sprintf("%s-%d", encodeCRC(h.Sum32()), len(parts))
}
