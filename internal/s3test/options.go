package s3test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Options set up a server for what a test needs beyond plain S3.
type Options struct {
	// KMS starts the server with a built-in KMS key (KMSKeyID), so that
	// it encrypts objects at rest on request: SSE-S3 (AES256), and
	// SSE-KMS with that key.
	KMS bool
	// TLS serves HTTPS only, with a self-signed certificate made for
	// this server and valid for 127.0.0.1 alone (not "localhost"), so a
	// client must trust CAFile and address the server by IP.
	TLS bool
}

// KMSKeyID names the key of a server started with Options.KMS.
const KMSKeyID = "walship-test-key"

// kmsKey is KMSKeyID's 32 bytes, base64: a test key, nothing to protect.
const kmsKey = "d2Fsc2hpcC1zM3Rlc3Qta21zLWtleS0zMi1ieXRlcyE="

// tlsFiles is the certificate of a TLS server and how to trust it.
type tlsFiles struct {
	certsDir string // public.crt and private.key, as minio --certs-dir wants
	caFile   string // the certificate, for clients to trust
	tr       *http.Transport
}

// newTLSFiles makes a self-signed ECDSA certificate for 127.0.0.1 under
// dir.
func newTLSFiles(dir string) (*tlsFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "walship test MinIO"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	f := &tlsFiles{certsDir: filepath.Join(dir, "certs"), caFile: filepath.Join(dir, "ca.crt")}
	if err := os.Mkdir(f.certsDir, 0o700); err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	for path, data := range map[string][]byte{
		filepath.Join(f.certsDir, "public.crt"):  certPEM,
		filepath.Join(f.certsDir, "private.key"): keyPEM,
		f.caFile:                                 certPEM,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	// The CA file is for walship, which may run as another OS user.
	if err := os.Chmod(f.caFile, 0o644); err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	f.tr = &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
	}
	return f, nil
}

// transport is the HTTP transport that trusts the server's certificate;
// nil (the default transport) without TLS.
func (s *Server) transport() http.RoundTripper {
	if s.tls == nil {
		return nil
	}
	return s.tls.tr
}

// CAFile is the PEM certificate a client must trust to reach a server
// started with Options.TLS (readable by any OS user); "" without TLS.
func (s *Server) CAFile() string {
	if s.tls == nil {
		return ""
	}
	return s.tls.caFile
}

// Credentials are temporary credentials of a server.
type Credentials struct {
	AccessKey, SecretKey, SessionToken string
}

// Restricted returns temporary credentials that may do only what the IAM
// policy document policy allows. They come from STS AssumeRole, called
// as the root user with policy as the session policy, which MinIO
// evaluates with the same engine as a user's policy (the root user's
// own rights do not widen it). They last an hour.
func (s *Server) Restricted(t testing.TB, policy string) Credentials {
	t.Helper()
	sts := &credentials.STSAssumeRole{
		STSEndpoint: s.Endpoint(),
		Options: credentials.STSAssumeRoleOptions{
			AccessKey:       accessKey,
			SecretKey:       secretKey,
			Policy:          policy,
			Location:        Region,
			DurationSeconds: 3600,
		},
		Client: &http.Client{Timeout: 30 * time.Second},
	}
	if tr := s.transport(); tr != nil {
		sts.Client.Transport = tr
	}
	// The client's timeout bounds the request.
	v, err := sts.RetrieveWithCredContext(&credentials.CredContext{Client: sts.Client, Endpoint: s.Endpoint()})
	if err != nil {
		t.Fatalf("s3test: AssumeRole with a session policy: %v", err)
	}
	return Credentials{AccessKey: v.AccessKeyID, SecretKey: v.SecretAccessKey, SessionToken: v.SessionToken}
}

// EnvWith is Env with the credentials c instead of the root user's.
func (s *Server) EnvWith(c Credentials) []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + c.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + c.SecretKey,
		"AWS_SESSION_TOKEN=" + c.SessionToken,
		"AWS_REGION=" + Region,
		"AWS_ENDPOINT_URL=" + s.Endpoint(),
		"AWS_EC2_METADATA_DISABLED=true",
	}
}
