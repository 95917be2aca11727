package s3

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// Server-side encryption modes for Options.SSE, as S3 names them in the
// x-amz-server-side-encryption header.
const (
	SSEAES256 = "AES256"  // SSE-S3: keys managed by the object store
	SSEKMS    = "aws:kms" // SSE-KMS: keys held in a key management service
)

// checkSSE validates the server-side encryption settings.
func checkSSE(mode, keyID string) error {
	switch mode {
	case "", SSEAES256, SSEKMS:
	default:
		return fmt.Errorf("invalid S3 server-side encryption %q: use %s or %s (--s3-sse)", mode, SSEAES256, SSEKMS)
	}
	if keyID != "" && mode != SSEKMS {
		return fmt.Errorf("an S3 KMS key id (--s3-sse-kms-key-id) needs --s3-sse %s", SSEKMS)
	}
	if strings.ContainsAny(keyID, " \t\r\n") {
		return fmt.Errorf("invalid S3 KMS key id %q: it holds white space (--s3-sse-kms-key-id takes a key id, ARN or alias)", keyID)
	}
	return nil
}

// sseHeaders are the values for the encryption fields of PutObject and
// CreateMultipartUpload; zero values leave the bucket's default.
func (s *Storage) sseHeaders() (types.ServerSideEncryption, *string) {
	var key *string
	if s.sseKeyID != "" {
		key = &s.sseKeyID
	}
	return types.ServerSideEncryption(s.sse), key
}

// isLoopback reports whether host (a name or an IP address, without a
// port) is this machine: localhost, 127.0.0.0/8 or ::1.
func isLoopback(host string) bool {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkTransport refuses an endpoint that would send credentials and
// data in clear over a network: plain http to another machine, unless
// allowHTTP.
func checkTransport(endpoint string, allowHTTP bool) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return fmt.Errorf("invalid S3 endpoint %q: %v", endpoint, err)
	}
	if u.Scheme == "http" && !allowHTTP && !isLoopback(u.Hostname()) {
		return fmt.Errorf("S3 endpoint %s is plain http to another machine, so credentials and WAL would cross the network in clear: use https:// (with --s3-ca-file for a private CA), or set --s3-allow-http on a network you trust", endpoint)
	}
	return nil
}

// errDowngrade marks a request refused by guardScheme.
var errDowngrade = errors.New("refused to send an S3 request without TLS")

// guardScheme returns a check for every request the HTTP client sends,
// redirects included (the SDK follows 307 and 308): none may leave over
// plain http after a redirect from https, nor reach another machine over
// plain http unless allowHTTP. It runs as the transport's proxy
// function, the one hook net/http calls for every request, redirected
// ones too, and then defers to next.
func guardScheme(allowHTTP bool, next func(*http.Request) (*url.URL, error)) func(*http.Request) (*url.URL, error) {
	return func(r *http.Request) (*url.URL, error) {
		if r.URL.Scheme != "https" {
			for via := r.Response; via != nil && via.Request != nil; via = via.Request.Response {
				if via.Request.URL.Scheme == "https" {
					return nil, fmt.Errorf("%w: %s redirected to plain http (%s://%s)", errDowngrade, via.Request.URL.Host, r.URL.Scheme, r.URL.Host)
				}
			}
			if !allowHTTP && !isLoopback(r.URL.Hostname()) {
				return nil, fmt.Errorf("%w: plain http to %s; use https, or set --s3-allow-http on a network you trust", errDowngrade, r.URL.Host)
			}
		}
		if next == nil {
			return nil, nil
		}
		return next(r)
	}
}

// tlsProblem explains a failed TLS handshake with the endpoint, or
// returns "" when err is no TLS failure. These are permanent: the
// certificate or the configuration must change.
func (s *Storage) tlsProblem(err error) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		verify   *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &hostname):
		return fmt.Sprintf("the TLS certificate of %s is not valid for host %s: use a host name the certificate names in --s3-endpoint, or get a certificate for this one", s.endpoint, hostname.Host)
	case errors.As(err, &unknown):
		return fmt.Sprintf("the TLS certificate of %s is signed by an authority this machine does not trust: pass that CA's certificate (PEM) with --s3-ca-file", s.endpoint)
	case errors.As(err, &invalid):
		return fmt.Sprintf("the TLS certificate of %s is not valid (expired, not yet valid, or not for a server): renew it, or check this machine's clock", s.endpoint)
	case errors.As(err, &verify):
		return fmt.Sprintf("the TLS certificate of %s could not be verified: check it, or pass its CA's certificate with --s3-ca-file", s.endpoint)
	case errors.As(err, &record), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		// net/http replaces the RecordHeaderError of an HTTP answer
		// with a plain error that says so.
		return fmt.Sprintf("%s does not answer TLS: if it serves plain http, write http:// in --s3-endpoint (and --s3-allow-http unless it is this machine)", s.endpoint)
	}
	return ""
}
