package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/walship/walship/storage"
)

// policyHint says which permission a call of kind op needs.
func policyHint(op string) string {
	switch {
	case op == "get" || op == "stat":
		// Without s3:ListBucket, S3 answers a missing key with 403.
		return "reading needs s3:GetObject; without s3:ListBucket a missing object is answered 403 too"
	case op == "list":
		return "listing needs s3:ListBucket"
	case op == "delete":
		return "deleting needs s3:DeleteObject"
	default:
		return "writing needs s3:PutObject"
	}
}

// httpStatus is the status of the server's answer, or 0 when there was none.
func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// apiCode is the S3 error code ("NoSuchKey", "AccessDenied", …). Answers
// without a body (HEAD) only have one derived from the status ("NotFound").
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// isNotFound reports a 404 not known to be about the bucket: NoSuchKey, or
// the bodiless 404 of a HEAD, which notFound then tells apart.
func isNotFound(err error) bool {
	code := apiCode(err)
	return code == "NoSuchKey" || httpStatus(err) == http.StatusNotFound && code != "NoSuchBucket"
}

func (s *Storage) noBucket() string {
	return fmt.Sprintf("bucket %s does not exist at %s: create it or fix --repo", s.bucket, s.endpoint)
}

// fail describes a failed call in the operator's terms and marks what
// retrying cannot fix as storage.Permanent. ctx is the caller's context, w
// the call's watchdog.
func (s *Storage) fail(ctx context.Context, op, key string, w *watchdog, err error) error {
	where := s.url(key)
	if op == "list" {
		where = s.String() + "/" + strings.TrimSuffix(key, "*") + "*"
	}
	return s.failAt(ctx, op, where, w, err)
}

// failAt is fail for a call that where names in messages.
func (s *Storage) failAt(ctx context.Context, op, where string, w *watchdog, err error) error {
	wrap := func(format string, args ...any) error {
		return fmt.Errorf("s3 %s %s: %s: %w", op, where, fmt.Sprintf(format, args...), err)
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("s3 %s %s: %w", op, where, context.Cause(ctx))
	case w.stalled():
		// Not the SDK's error: it says "context canceled", and this is
		// no cancellation but a server that stopped answering.
		return fmt.Errorf("s3 %s %s: no answer from %s for %v: %w", op, where, s.endpoint, s.stall, os.ErrDeadlineExceeded)
	}

	status, code := httpStatus(err), apiCode(err)
	if errors.Is(err, errDowngrade) {
		return storage.Permanent(fmt.Errorf("s3 %s %s: %w", op, where, err))
	}
	if why := s.tlsProblem(err); why != "" && status == 0 {
		return storage.Permanent(wrap("%s", why))
	}
	if why := s.lockProblem(op, err); why != "" {
		return storage.Permanent(wrap("%s", why))
	}
	if status == 0 {
		var sendErr *smithyhttp.RequestSendError
		var netErr net.Error
		switch {
		case errors.As(err, &netErr) && netErr.Timeout():
			return wrap("no answer from %s in time", s.endpoint)
		case errors.As(err, &sendErr):
			return wrap("cannot reach %s", s.endpoint)
		case errors.As(err, &netErr):
			return wrap("network error talking to %s", s.endpoint)
		case strings.Contains(err.Error(), "get identity"), strings.Contains(err.Error(), "credentials"):
			return storage.Permanent(wrap("no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, a web identity or an instance role"))
		default:
			// The request was never sent: the SDK refused it, which
			// sending it again will not change.
			return storage.Permanent(wrap("request not sent"))
		}
	}

	switch code {
	case "NoSuchBucket":
		return storage.Permanent(wrap("%s", s.noBucket()))
	case "InvalidBucketName":
		return storage.Permanent(wrap("%q is not a valid bucket name: fix --repo", s.bucket))
	case "InvalidAccessKeyId":
		return storage.Permanent(wrap("access denied to %s: %s does not know the access key; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", s, s.endpoint))
	case "SignatureDoesNotMatch":
		return storage.Permanent(wrap("access denied to %s: the secret key does not match the access key; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", s))
	case "RequestTimeTooSkewed":
		return storage.Permanent(wrap("this machine's clock is too far from %s's: synchronise it (NTP)", s.endpoint))
	case "ExpiredToken", "InvalidToken", "TokenRefreshRequired":
		return storage.Permanent(wrap("the session credentials are expired or invalid: refresh them (AWS_SESSION_TOKEN, AWS_PROFILE)"))
	case "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException":
		return storage.Permanent(wrap("%s", s.wrongRegion(err)))
	case "BadDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch", "IncompleteBody":
		// Corrupted on the way, or the source changed while it was
		// read; the server stored nothing, and a new attempt reads the
		// source again.
		return wrap("%s received data that does not match its checksum", s.endpoint)
	case "RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable", "OperationAborted":
		return wrap("%s is busy or failing (%s); try again", s.endpoint, code)
	case "ConditionalRequestConflict":
		return wrap("another write of this key is in progress; try again")
	case "EntityTooLarge":
		return storage.Permanent(wrap("object too large for one S3 PUT"))
	case "NotImplemented":
		if op == "put" || strings.HasPrefix(op, "complete") {
			return storage.Permanent(wrap("%s does not support conditional writes (If-None-Match: *), which walship needs to never overwrite a file; upgrade it or use another S3 server", s.endpoint))
		}
		return storage.Permanent(wrap("%s does not implement this request", s.endpoint))
	}

	switch {
	case status == http.StatusForbidden:
		return storage.Permanent(wrap("access denied to %s: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy (%s)", s, policyHint(op)))
	case status == http.StatusMovedPermanently:
		return storage.Permanent(wrap("%s", s.wrongRegion(err)))
	case status == http.StatusConflict, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return wrap("%s answered %d; try again", s.endpoint, status)
	case status >= 500:
		return wrap("%s failed (%d)", s.endpoint, status)
	case status >= 400:
		return storage.Permanent(wrap("%s rejected the request (%d %s)", s.endpoint, status, code))
	default:
		return wrap("unexpected answer %d from %s", status, s.endpoint)
	}
}

// wrongRegion names the bucket's region when the server said it.
func (s *Storage) wrongRegion(err error) string {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		if r := re.Response.Header.Get("X-Amz-Bucket-Region"); r != "" {
			return fmt.Sprintf("bucket %s is in region %s: set AWS_REGION=%s", s.bucket, r, r)
		}
	}
	return fmt.Sprintf("bucket %s is in another region: set AWS_REGION to the bucket's region", s.bucket)
}

// keyFailure is the error for key from one entry of a DeleteObjects
// answer's Errors, or nil when the object is gone anyway (NoSuchKey).
// AccessDenied is permanent; anything else is worth another try.
func (s *Storage) keyFailure(key string, e types.Error) error {
	code := aws.ToString(e.Code)
	apiErr := &smithy.GenericAPIError{Code: code, Message: aws.ToString(e.Message)}
	switch code {
	case "NoSuchKey":
		return nil
	case "AccessDenied":
		return storage.Permanent(fmt.Errorf("s3 delete %s: access denied: the credentials lack s3:DeleteObject, "+
			"or the object is under S3 Object Lock retention or a legal hold, which must end before it can be deleted: %w", s.url(key), apiErr))
	case "":
		return fmt.Errorf("s3 delete %s: %s did not delete it and gave no reason; try again: %w", s.url(key), s.endpoint, apiErr)
	default:
		return fmt.Errorf("s3 delete %s: %s did not delete it (%s); try again: %w", s.url(key), s.endpoint, code, apiErr)
	}
}
