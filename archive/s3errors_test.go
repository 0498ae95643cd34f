package archive

import (
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
)

// The answers a test cannot make a real server give (a clock skew needs
// a clock 15 minutes off; a region a multi-region store).
func TestS3HintsForServerCodes(t *testing.T) {
	s := &S3{bucket: "b", endpoint: "s3.example:9000"}
	for code, want := range map[string]string{
		"RequestTimeTooSkewed":         "clock",
		"AccessDenied":                 "policy must allow",
		"AuthorizationHeaderMalformed": "&region=",
	} {
		if got := s.hint(minio.ErrorResponse{Code: code}); !strings.Contains(got, want) {
			t.Errorf("%s: %q lacks %q", code, got, want)
		}
	}
	if got := s.hint(minio.ErrorResponse{Code: "SlowDown"}); got != "" {
		t.Errorf("an unknown code got a hint: %q", got)
	}
}
