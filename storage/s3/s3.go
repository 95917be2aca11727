// Package s3 keeps the archive in an S3-compatible bucket (AWS S3, MinIO,
// Ceph, …) through aws-sdk-go-v2, the only S3 client walship ships.
//
// Beyond what the storage package promises for every backend, it
// guarantees:
//   - Put is a single conditional PutObject (If-None-Match: *), so two
//     pushers of the same key cannot both win, and it carries a CRC32C of
//     the body that the server verifies before it stores anything.
//   - PutStream uploads a stream of unknown length (a base backup) as a
//     multipart upload: parts of 16 MiB (Options.PartSize) that double
//     after every 1,000 parts, each with a CRC32C the server verifies,
//     three uploading at a time, each retried on its own, and a final
//     CompleteMultipartUpload with If-None-Match: *. Memory stays at about
//     four parts. A failed upload is aborted; a stream shorter than one
//     part is a single conditional PutObject.
//   - Errors that retrying cannot fix (credentials, permissions, a missing
//     bucket, a wrong region) are marked storage.Permanent and say what to
//     change; network failures, timeouts and 5xx answers are not.
//   - DeleteBatch removes up to 1,000 objects with one DeleteObjects
//     request. A key the server refuses to delete for good (missing
//     s3:DeleteObject, or Object Lock retention or a legal hold) is a
//     permanent failure in the *storage.DeleteError; other per-key
//     failures are worth retrying.
//   - A missing bucket is never reported as a missing object.
//   - With Options.ObjectLockDays, every PutObject and
//     CreateMultipartUpload carries an Object Lock retention (mode and
//     retain-until date); a bucket without Object Lock refuses the first
//     write, with an error that says so.
//   - On a versioned bucket (asked once per Storage with
//     GetBucketVersioning, on the first delete), Delete and DeleteBatch
//     remove every version and delete marker of a key, so that a delete
//     frees the space or is refused; a delete refused because of Object
//     Lock is a *storage.RetentionError that says until when.
//   - TLS certificates are always verified (against the system's roots
//     plus Options.CAFile); a failed verification is a permanent error
//     that names the fix. Plain http goes only to this machine
//     (loopback) unless Options.AllowHTTP, and no request follows a
//     redirect from https to http.
//   - With Options.SSE, every PutObject and CreateMultipartUpload asks
//     the server to encrypt the object at rest (SSE-S3 or SSE-KMS).
//   - No call waits forever: connecting, the TLS handshake, waiting for an
//     answer and every stretch of an upload or download without progress
//     are bounded, with or without a deadline on the context. This covers
//     every part of a PutStream, which no overall timeout bounds (a base
//     backup may stream for hours).
//
// # Bucket set-up
//
// A walship process killed during a PutStream (or one that cannot reach
// the server to abort) leaves an incomplete multipart upload behind: it
// is never listed or read as an object, but its parts take space and are
// billed. Give the bucket a lifecycle rule that removes them, e.g. with
// the AWS CLI:
//
//	aws s3api put-bucket-lifecycle-configuration --bucket BUCKET \
//	  --lifecycle-configuration '{"Rules":[{"ID":"walship-abort-incomplete-uploads",
//	  "Status":"Enabled","Filter":{},"AbortIncompleteMultipartUpload":{"DaysAfterInitiation":2}}]}'
//
// That command replaces the bucket's lifecycle configuration: add the
// rule to an existing one instead. Two days is far longer than any backup
// runs. MinIO has no such rule: it
// removes incomplete uploads by itself once they are 24 hours old
// (setting api stale_uploads_expiry, MINIO_API_STALE_UPLOADS_EXPIRY).
//
// Objects written by PutStream carry a composite CRC32C (over the parts'
// CRC32Cs, "…-N"), which the server checked part by part on upload but
// which Get cannot check while reading; callers keep their own checksum
// of a stream's content (a base backup's metadata record holds it).
package s3

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go/logging"

	"github.com/walship/walship/storage"
)

// Options says where the archive lives. Credentials are not here: they
// come from the standard AWS chain (environment, profiles, web identity,
// instance role), like every other AWS tool's.
type Options struct {
	Bucket string
	Prefix string // key prefix inside the bucket; may be empty
	// Endpoint is the URL of an S3-compatible server
	// ("http://127.0.0.1:9000"). Empty means AWS S3, or AWS_ENDPOINT_URL.
	Endpoint string
	// Region defaults to AWS_REGION or the profile's region; with an
	// endpoint and no region anywhere it is "us-east-1", which is what
	// most S3-compatible servers expect.
	Region    string
	PathStyle bool   // address buckets as endpoint/bucket, not bucket.endpoint
	CAFile    string // PEM certificates to trust besides the system's
	// AllowHTTP permits a plain http:// endpoint on a host other than
	// this machine (loopback). Without it such an endpoint is refused:
	// credentials and data would cross the network in clear.
	AllowHTTP bool
	// SSE asks the server to encrypt new objects at rest: "" (the
	// bucket's default), SSEAES256 (keys managed by S3) or SSEKMS.
	SSE string
	// SSEKMSKeyID names the KMS key for SSEKMS; empty means the
	// account's default key. Only valid with SSEKMS.
	SSEKMSKeyID string
	// StallTimeout fails a call that waits this long for an answer, or
	// moves no data for this long during an upload or download (a Get
	// body that is not read for this long fails too). Zero means
	// DefaultStallTimeout.
	StallTimeout time.Duration
	// PartSize is the size of the first 1,000 parts of a PutStream
	// upload, from 5 MiB to 5 GiB; zero means DefaultPartSize. A
	// stream holds about four parts in memory (three uploading, one
	// filling).
	PartSize int64
	// ObjectLockDays, when positive, gives every object written an S3
	// Object Lock retention of that many days from its upload, in
	// ObjectLockMode (LockCompliance when empty, or LockGovernance).
	// The bucket must have been created with Object Lock.
	ObjectLockDays int
	ObjectLockMode string
	// ObjectLockExempt, when set, names keys written without a lock:
	// objects that are replaced as a matter of course (wal-stream's
	// snapshots of the segment in progress), which a lock would keep
	// from being replaced.
	ObjectLockExempt func(key string) bool
}

// DefaultStallTimeout is generous enough for a server that is slow but
// alive, and short enough that a hung connection does not hold up
// archiving while pg_wal fills.
const DefaultStallTimeout = 2 * time.Minute

const (
	dialTimeout         = 10 * time.Second
	tlsHandshakeTimeout = 10 * time.Second
	// maxPutSize is the largest object S3 accepts in one PutObject.
	maxPutSize = 5 << 30
)

// Storage is an archive in one bucket under one prefix. It is safe for
// concurrent use.
type Storage struct {
	client   *s3.Client
	bucket   string
	prefix   string // without leading or trailing slash; may be empty
	endpoint string // for messages
	stall    time.Duration
	partSize int64 // of a stream's first parts
	counts   *requestCounts
	sse      string     // Options.SSE
	sseKeyID string     // Options.SSEKMSKeyID
	lock     objectLock // Options.ObjectLockDays and ObjectLockMode
	vers     versioning // whether the bucket keeps versions, once known
}

var (
	_ storage.Storage      = (*Storage)(nil)
	_ storage.BatchDeleter = (*Storage)(nil)
)

// New configures access to the bucket. It does not contact the server, so
// a wrong setting shows up on the first call, as a permanent error that
// says what to fix.
func New(ctx context.Context, o Options) (*Storage, error) {
	if o.Bucket == "" || strings.Contains(o.Bucket, "/") {
		return nil, storage.Permanent(fmt.Errorf("invalid S3 bucket name %q: fix --repo (s3://bucket/prefix)", o.Bucket))
	}
	prefix := strings.Trim(o.Prefix, "/")
	if strings.Contains(prefix, "//") {
		return nil, storage.Permanent(fmt.Errorf("invalid S3 prefix %q: it has an empty path element; fix --repo", o.Prefix))
	}
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, storage.Permanent(fmt.Errorf("invalid S3 endpoint %q: want http://host:port or https://host", o.Endpoint))
		}
	}
	stall := o.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	partSize := o.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	if partSize < minPartSize || partSize > maxPartSize {
		return nil, storage.Permanent(fmt.Errorf("S3 part size %d is outside what S3 accepts (5 MiB to 5 GiB)", o.PartSize))
	}
	if err := checkSSE(o.SSE, o.SSEKMSKeyID); err != nil {
		return nil, storage.Permanent(err)
	}
	lock, err := checkObjectLock(o.ObjectLockDays, o.ObjectLockMode)
	if err != nil {
		return nil, storage.Permanent(err)
	}
	lock.exempt = o.ObjectLockExempt

	var roots *x509.CertPool
	if o.CAFile != "" {
		var err error
		if roots, err = loadCAFile(o.CAFile); err != nil {
			return nil, storage.Permanent(err)
		}
	}
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = dialTimeout
			d.KeepAlive = 30 * time.Second
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = tlsHandshakeTimeout
			tr.ResponseHeaderTimeout = stall
			if tr.TLSClientConfig == nil {
				tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			}
			// Certificates are always verified; there is no setting to
			// turn that off.
			tr.TLSClientConfig.InsecureSkipVerify = false
			if roots != nil {
				tr.TLSClientConfig.RootCAs = roots
			}
			tr.Proxy = guardScheme(o.AllowHTTP, tr.Proxy)
		})

	counts := &requestCounts{n: map[string]int64{}}
	loadOpts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		// Errors are returned, not logged: walship decides what to print.
		config.WithLogger(logging.Nop{}),
	}
	if o.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(o.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, storage.Permanent(fmt.Errorf("load AWS configuration: %w (check AWS_PROFILE, ~/.aws/config and ~/.aws/credentials)", err))
	}

	s := &Storage{bucket: o.Bucket, prefix: prefix, stall: stall, partSize: partSize, counts: counts, sse: o.SSE, sseKeyID: o.SSEKMSKeyID, lock: lock}
	var noRegion bool
	var endpoint string // as the SDK resolved it; "" for AWS S3
	s.client = s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		// BaseEndpoint may also have come from AWS_ENDPOINT_URL(_S3).
		if so.BaseEndpoint != nil {
			endpoint = *so.BaseEndpoint
			s.endpoint = *so.BaseEndpoint
			if so.Region == "" {
				so.Region = "us-east-1"
			}
		}
		noRegion = so.Region == ""
		s.endpoint = cmp.Or(s.endpoint, "AWS S3 in "+so.Region)
		so.UsePathStyle = o.PathStyle
		// Wrapped here, not in the shared configuration, whose loader
		// needs the buildable client itself (for AWS_CA_BUNDLE).
		so.HTTPClient = countingClient{next: so.HTTPClient, counts: counts}
		// One attempt per call: storage.WithRetry owns retries, with
		// walship's backoff and time budget. SDK retries underneath
		// would multiply attempts and hide how long a call really took.
		so.Retryer = aws.NopRetryer{}
		// Objects walship reads back all carry a checksum; for the rest
		// there is nothing to say.
		so.DisableLogOutputChecksumValidationSkipped = true
	})
	if noRegion {
		return nil, storage.Permanent(errors.New("no AWS region configured for s3://" + o.Bucket + ": set AWS_REGION (or region in ~/.aws/config)"))
	}
	if err := checkTransport(endpoint, o.AllowHTTP); err != nil {
		return nil, storage.Permanent(err)
	}
	return s, nil
}

func loadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read S3 CA file: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("S3 CA file %s holds no PEM certificate", path)
	}
	return roots, nil
}

// String names the archive as s3://bucket/prefix.
func (s *Storage) String() string {
	if s.prefix == "" {
		return "s3://" + s.bucket
	}
	return "s3://" + s.bucket + "/" + s.prefix
}

// objectKey is the bucket key of an archive key.
func (s *Storage) objectKey(key string) string {
	if s.prefix == "" {
		return key
	}
	return s.prefix + "/" + key
}

// url names one object in messages.
func (s *Storage) url(key string) string { return "s3://" + s.bucket + "/" + s.objectKey(key) }

// Put uploads the object with one conditional PutObject.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string) error {
	if err := checkKey(key); err != nil {
		return storage.Permanent(fmt.Errorf("s3 put %s: %w", s.url(key), err))
	}
	if err := storage.CheckMetadata(meta); err != nil {
		return fmt.Errorf("s3 put %s: %w", s.url(key), err)
	}
	if size < 0 || size > maxPutSize {
		return storage.Permanent(fmt.Errorf("s3 put %s: size %d is outside what one S3 PUT takes (0 to 5 GiB)", s.url(key), size))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3 put %s: %w", s.url(key), err)
	}
	start, err := body.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("s3 put %s: %w", s.url(key), err)
	}
	// The CRC32C travels as a header, so every S3 implementation that
	// knows flexible checksums verifies it before storing the object, and
	// no trailer (aws-chunked) support is needed. Reading the body first
	// also refuses one that is shorter or longer than size.
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	if err := storage.CopyBody(ctx, h, body, size); err != nil {
		return fmt.Errorf("s3 put %s: %w", s.url(key), err)
	}
	sum := encodeCRC(h.Sum32())
	sec := &section{r: body, base: start, size: size}
	defer sec.detach()
	if _, err := sec.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("s3 put %s: rewinding the body: %w", s.url(key), err)
	}
	err = s.putObject(ctx, key, sec, sum, meta)
	if err != nil && !storage.IsPermanent(err) && ctx.Err() == nil && httpStatus(err) == 0 {
		// A server refusing the conditional write because the key exists
		// may answer and close the connection before it has read the
		// body; the client then sees a broken connection (no answer at
		// all), not the 412, and retrying would only repeat it. Ask
		// whether the key exists.
		if _, serr := s.Stat(ctx, key); serr == nil {
			return fmt.Errorf("s3 put %s: %w (the upload broke off; the key is stored)", s.url(key), storage.ErrExist)
		}
	}
	return err
}

// putObject stores body, whose CRC32C is sum, with one conditional
// PutObject.
func (s *Storage) putObject(ctx context.Context, key string, body *section, sum string, meta map[string]string) error {
	w := s.watch(ctx)
	defer w.stop()
	body.progress = w.progress
	sse, sseKey := s.sseHeaders()
	lockMode, lockUntil := s.lockHeaders(key)
	out, err := s.client.PutObject(w.ctx, &s3.PutObjectInput{
		Bucket:               aws.String(s.bucket),
		Key:                  aws.String(s.objectKey(key)),
		Body:                 body,
		ContentLength:        aws.Int64(body.size),
		IfNoneMatch:          aws.String("*"),
		Metadata:             meta,
		ChecksumAlgorithm:    types.ChecksumAlgorithmCrc32c,
		ChecksumCRC32C:       aws.String(sum),
		ServerSideEncryption: sse,
		SSEKMSKeyId:          sseKey,
		// With Object Lock: the CRC32C above is the integrity
		// checksum S3 requires of a write with retention.
		ObjectLockMode:            lockMode,
		ObjectLockRetainUntilDate: lockUntil,
	})
	if err != nil {
		if httpStatus(err) == http.StatusPreconditionFailed {
			return fmt.Errorf("s3 put %s: %w", s.url(key), storage.ErrExist)
		}
		return s.fail(ctx, "put", key, w, err)
	}
	if got := aws.ToString(out.ChecksumCRC32C); got != "" && got != sum {
		return storage.Permanent(fmt.Errorf("s3 put %s: %s reports CRC32C %s for the stored object, walship sent %s: the server did not store what was sent", s.url(key), s.endpoint, got, sum))
	}
	return nil
}

// Get opens the object. The download is watched for stalls until the
// reader is closed.
func (s *Storage) Get(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return nil, storage.ObjectInfo{}, storage.Permanent(fmt.Errorf("s3 get %s: %w", s.url(key), err))
	}
	w := s.watch(ctx)
	out, err := s.client.GetObject(w.ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.objectKey(key)),
		// The SDK then checks the stored CRC32C as the body is read.
		ChecksumMode: types.ChecksumModeEnabled,
	})
	if err != nil {
		w.stop()
		if apiCode(err) == "NoSuchKey" {
			// Only an object answers NoSuchKey: the bucket is there.
			return nil, storage.ObjectInfo{}, fmt.Errorf("s3 get %s: %w", s.url(key), storage.ErrNotExist)
		}
		if isNotFound(err) {
			return nil, storage.ObjectInfo{}, s.notFound(ctx, "get", key)
		}
		return nil, storage.ObjectInfo{}, s.fail(ctx, "get", key, w, err)
	}
	info := storage.ObjectInfo{
		Key:      key,
		Size:     aws.ToInt64(out.ContentLength),
		ModTime:  aws.ToTime(out.LastModified),
		Metadata: lowerKeys(out.Metadata),
	}
	return &objectReader{s: s, ctx: ctx, key: key, body: out.Body, w: w}, info, nil
}

// Stat reads the object's size and metadata with HeadObject.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return storage.ObjectInfo{}, storage.Permanent(fmt.Errorf("s3 stat %s: %w", s.url(key), err))
	}
	w := s.watch(ctx)
	defer w.stop()
	out, err := s.client.HeadObject(w.ctx, &s3.HeadObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.objectKey(key)),
	})
	if err != nil {
		if isNotFound(err) {
			return storage.ObjectInfo{}, s.notFound(ctx, "stat", key)
		}
		return storage.ObjectInfo{}, s.fail(ctx, "stat", key, w, err)
	}
	return storage.ObjectInfo{
		Key:      key,
		Size:     aws.ToInt64(out.ContentLength),
		ModTime:  aws.ToTime(out.LastModified),
		Metadata: lowerKeys(out.Metadata),
	}, nil
}

// List walks ListObjectsV2 pages; S3 returns keys in lexical (UTF-8 byte)
// order.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if strings.HasPrefix(prefix, "/") {
		return storage.Permanent(fmt.Errorf("s3 list %s: invalid prefix %q: keys are relative", s, prefix))
	}
	strip := ""
	if s.prefix != "" {
		strip = s.prefix + "/"
	}
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket),
		Prefix: aws.String(strip + prefix),
	})
	for pages.HasMorePages() {
		// One watchdog per page, so time spent in fn does not count.
		w := s.watch(ctx)
		page, err := pages.NextPage(w.ctx)
		w.stop()
		if err != nil {
			return s.fail(ctx, "list", prefix+"*", w, err)
		}
		for _, o := range page.Contents {
			k, ok := strings.CutPrefix(aws.ToString(o.Key), strip)
			if !ok {
				continue
			}
			err := fn(storage.ObjectInfo{
				Key:     k,
				Size:    aws.ToInt64(o.Size),
				ModTime: aws.ToTime(o.LastModified),
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes the object; S3 answers a delete of a missing key with
// success. On a versioned bucket it removes every version of the key
// (deleteVersions).
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return storage.Permanent(fmt.Errorf("s3 delete %s: %w", s.url(key), err))
	}
	if v, err := s.versioned(ctx); err != nil {
		return err
	} else if v {
		err := s.deleteVersions(ctx, []string{key})
		var de *storage.DeleteError
		if errors.As(err, &de) && len(de.Failed) == 1 {
			return de.Failed[0].Err
		}
		return err
	}
	w := s.watch(ctx)
	defer w.stop()
	_, err := s.client.DeleteObject(w.ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.objectKey(key)),
	})
	if err != nil && apiCode(err) != "NoSuchKey" {
		return s.fail(ctx, "delete", key, w, err)
	}
	return nil
}

// DeleteBatch removes up to storage.MaxBatch objects with one
// DeleteObjects request. S3 reports a missing key as deleted; keys it
// could not delete come back as a *storage.DeleteError, those refused for
// lack of permission or because of Object Lock as permanent failures. On
// a versioned bucket it removes every version of each key
// (deleteVersions).
func (s *Storage) DeleteBatch(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) > storage.MaxBatch {
		return storage.Permanent(fmt.Errorf("s3 delete in %s: %d keys in one batch, S3 takes at most %d: split them (storage.DeleteAll does)", s, len(keys), storage.MaxBatch))
	}
	objects := make([]types.ObjectIdentifier, len(keys))
	index := make(map[string]int, len(keys)) // bucket key → position in keys
	for i, key := range keys {
		if err := checkKey(key); err != nil {
			return storage.Permanent(fmt.Errorf("s3 delete %s: %w", s.url(key), err))
		}
		objects[i] = types.ObjectIdentifier{Key: aws.String(s.objectKey(key))}
		index[s.objectKey(key)] = i
	}
	if v, err := s.versioned(ctx); err != nil {
		return err
	} else if v {
		return s.deleteVersions(ctx, keys)
	}
	w := s.watch(ctx)
	defer w.stop()
	// The SDK sends the checksum header S3 requires of this request
	// (a CRC32 of the body; AWS used to want Content-MD5).
	out, err := s.client.DeleteObjects(w.ctx, &s3.DeleteObjectsInput{
		Bucket: aws.String(s.bucket),
		Delete: &types.Delete{Objects: objects, Quiet: aws.Bool(true)},
	})
	if err != nil {
		where := s.url(keys[0])
		if len(keys) > 1 {
			where = fmt.Sprintf("%s and %d more", where, len(keys)-1)
		}
		return s.failAt(ctx, "delete", where, w, err)
	}
	return s.keyFailures(keys, index, out.Errors)
}

// keyFailures maps the Errors of a DeleteObjects answer for keys (index
// gives each bucket key's position in keys) to a *storage.DeleteError
// that lists them in the order of keys, or nil when none of them counts.
func (s *Storage) keyFailures(keys []string, index map[string]int, errs []types.Error) error {
	type failure struct {
		pos int
		storage.KeyError
	}
	var failed []failure
	for _, e := range errs {
		object := aws.ToString(e.Key)
		pos, ok := index[object]
		key := ""
		if ok {
			key = keys[pos]
		} else {
			// Not a key that was sent: report it as the server named it.
			pos, key = len(keys), strings.TrimPrefix(object, s.prefix+"/")
		}
		if err := s.keyFailure(key, e); err != nil {
			failed = append(failed, failure{pos, storage.KeyError{Key: key, Err: err}})
		}
	}
	if len(failed) == 0 {
		return nil
	}
	slices.SortStableFunc(failed, func(a, b failure) int { return a.pos - b.pos })
	de := &storage.DeleteError{Failed: make([]storage.KeyError, len(failed))}
	for i, f := range failed {
		de.Failed[i] = f.KeyError
	}
	return de
}

// notFound turns a 404 for an object into ErrNotExist, but only once the
// bucket is known to exist: a HEAD answers 404 with no body for a missing
// bucket too, and a missing bucket reported as "no such WAL segment" would
// end a disaster-recovery restore early instead of stopping it.
func (s *Storage) notFound(ctx context.Context, op, key string) error {
	w := s.watch(ctx)
	defer w.stop()
	_, err := s.client.HeadBucket(w.ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	switch {
	case err == nil:
		return fmt.Errorf("s3 %s %s: %w", op, s.url(key), storage.ErrNotExist)
	case httpStatus(err) == http.StatusNotFound:
		return storage.Permanent(fmt.Errorf("s3 %s %s: %s: %w", op, s.url(key), s.noBucket(), err))
	default:
		return s.fail(ctx, op, key, w, err)
	}
}

// checkKey refuses keys that are not slash-separated relative paths, so
// that no key can name something outside the prefix or collide with
// another after S3 keeps it verbatim.
func checkKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	for elem := range strings.SplitSeq(key, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return fmt.Errorf("invalid key %q: want a relative path without empty, . or .. elements", key)
		}
	}
	return nil
}

func lowerKeys(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}
