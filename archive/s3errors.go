package archive

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

// explain turns what an S3 server or the network said into a sentence an
// admin can act on, keeping the original error wrapped (errors.Is still
// sees it). Errors it does not know are returned as they are.
func (s *S3) explain(err error) error {
	if err == nil {
		return nil
	}
	if hint := s.hint(err); hint != "" {
		return fmt.Errorf("%s (%w)", hint, err)
	}
	return err
}

func (s *S3) hint(err error) string {
	key := os.Getenv("AWS_ACCESS_KEY_ID")
	if key == "" {
		key = os.Getenv("MINIO_ACCESS_KEY")
	}
	switch minio.ToErrorResponse(err).Code {
	case "NoSuchBucket":
		return fmt.Sprintf("bucket %q does not exist on %s: create it first (mc mb ALIAS/%s, or aws s3 mb s3://%s --endpoint-url %s)",
			s.bucket, s.endpoint, s.bucket, s.bucket, s.scheme()+"://"+s.endpoint)
	case "InvalidAccessKeyId", "XAdminUserNotFound": // the second: versitygw's
		return fmt.Sprintf("%s does not know the access key %q: check AWS_ACCESS_KEY_ID", s.endpoint, key)
	case "SignatureDoesNotMatch":
		return fmt.Sprintf("%s refused the signature: the secret key does not belong to access key %q; check AWS_SECRET_ACCESS_KEY", s.endpoint, key)
	case "RequestTimeTooSkewed":
		return fmt.Sprintf("this machine's clock and %s's differ by more than S3 allows (15 minutes): set the time right (chrony, or timedatectl set-ntp true)", s.endpoint)
	case "AccessDenied":
		return fmt.Sprintf("%s denied access key %q on bucket %q: its policy must allow s3:ListBucket, GetObject, PutObject and DeleteObject there", s.endpoint, key, s.bucket)
	case "BadDigest":
		if !s.md5 {
			return fmt.Sprintf("%s rejected the upload's CRC-32C. If every upload fails so, it does not verify S3 trailing checksums (versitygw v1.8.0 does not, over plain HTTP): add &checksum=md5 to the archive URL", s.endpoint)
		}
		return fmt.Sprintf("%s rejected the upload's MD5: the bytes changed on the way (the migration fails and can be run again)", s.endpoint)
	case "AuthorizationHeaderMalformed", "InvalidRegion":
		return fmt.Sprintf("%s expects another region: add &region=REGION to the archive URL", s.endpoint)
	}
	var unknown x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var record tls.RecordHeaderError
	msg := err.Error()
	switch {
	case errors.As(err, &unknown):
		if s.ca != "" {
			return fmt.Sprintf("the certificate of %s is not signed by the CA in %s", s.endpoint, s.ca)
		}
		return fmt.Sprintf("the certificate of %s is not signed by a CA this machine trusts: add &ca=FILE (the CA's PEM) to the archive URL", s.endpoint)
	case errors.As(err, &hostErr):
		return fmt.Sprintf("the certificate of %s is not for that name (%v): use a name it is for in endpoint=", s.endpoint, hostErr)
	case errors.As(err, &invalid):
		return fmt.Sprintf("the certificate of %s is not valid now (%v): renew it, or check this machine's clock", s.endpoint, invalid)
	case errors.As(err, &record), strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return fmt.Sprintf("%s does not speak TLS: add &insecure=true to the archive URL (plain HTTP), or give the server a certificate", s.endpoint)
	case strings.Contains(msg, "HTTP request to an HTTPS server"),
		strings.Contains(msg, "malformed HTTP response") && strings.Contains(msg, `\x15\x03`):
		return s.speaksTLSHint()
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("nothing listens at %s: is the object store running, and is endpoint= right?", s.endpoint)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Sprintf("the name in endpoint=%s does not resolve (%v)", s.endpoint, dnsErr)
	}
	return ""
}

// explainFirstContact is explain for the first request to the server
// (Check), which may also look at the server itself: some servers hang
// up on plain HTTP to their TLS port without a word. Not for every
// error: a GET broken mid-transfer must not cost a handshake.
func (s *S3) explainFirstContact(err error) error {
	if s.hint(err) == "" && s.insecure && hungUp(err) && speaksTLS(s.endpoint) {
		return fmt.Errorf("%s (%w)", s.speaksTLSHint(), err)
	}
	return s.explain(err)
}

func (s *S3) speaksTLSHint() string {
	return fmt.Sprintf("%s speaks TLS: remove insecure=true from the archive URL (and add &ca=FILE for a private CA)", s.endpoint)
}

func hungUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		strings.Contains(err.Error(), "Connection closed by foreign host")
}

// speaksTLS looks whether host answers a TLS handshake (nothing is sent
// over it): some servers hang up on plain HTTP without a word.
func speaksTLS(host string) bool {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func (s *S3) scheme() string {
	if s.insecure {
		return "http"
	}
	return "https"
}
