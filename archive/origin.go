package archive

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Objects cascadefs did not write (cascadefs import) stay where they are:
// in a bucket of the S3 service of a filesystem's first copy, read with
// its credentials, bound to the ETag they had when imported, and never
// deleted by cascadefs.

// ErrChanged: an imported object was replaced or changed since.
var ErrChanged = errors.New("the object changed since it was imported")

// ErrNotS3: imports need an S3 archive.
var ErrNotS3 = errors.New("imports need an S3 archive as the first copy")

// Origin is the bucket of the first copy's S3 service that holds
// imported objects (its credentials, endpoint and TLS; no prefix).
func Origin(a Archive, bucket string) (*S3, error) {
	first, _ := CopyOf(a, 0)
	s, ok := first.(*S3)
	if !ok {
		return nil, ErrNotS3
	}
	return &S3{client: s.client, bucket: bucket, endpoint: s.endpoint, insecure: s.insecure, ca: s.ca, md5: s.md5}, nil
}

// ParseImportURL reads the bucket and prefix of s3://BUCKET[/PREFIX] (a
// query, if any, must name the first copy's endpoint: imports read
// through it).
func ParseImportURL(a Archive, raw string) (bucket, prefix string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return "", "", fmt.Errorf("%q: want s3://BUCKET[/PREFIX]", raw)
	}
	first, _ := CopyOf(a, 0)
	s, ok := first.(*S3)
	if !ok {
		return "", "", ErrNotS3
	}
	if ep := u.Query().Get("endpoint"); ep != "" && ep != s.endpoint {
		return "", "", fmt.Errorf("%q: on another S3 service than the archive's (%s): imports read with the archive's credentials", raw, s.endpoint)
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	return u.Host, prefix, nil
}

// Wrote reports whether the object key of bucket is one cascadefs writes
// in the archive a: an object, checksums or description of a migration,
// a journal batch or a scrub state, under a's first copy's prefix.
func Wrote(a Archive, bucket, key string) bool {
	first, _ := CopyOf(a, 0)
	s, ok := first.(*S3)
	if !ok || bucket != s.bucket {
		return false
	}
	rest := key
	if s.prefix != "" {
		var under bool
		if rest, under = strings.CutPrefix(key, s.prefix+"/"); !under {
			return false
		}
	}
	if strings.HasPrefix(rest, JournalPrefix) || strings.HasPrefix(rest, ScrubPrefix) {
		return true
	}
	data, _ := DataKeyOf(rest)
	parts := strings.Split(data, "/")
	if len(parts) != 3 {
		return false
	}
	_, err := strconv.ParseUint(parts[1], 10, 64)
	return err == nil && parts[0] != "" && genPattern.MatchString(parts[2])
}

// genPattern is what NewKey makes of a migration's generation.
var genPattern = regexp.MustCompile(`^[0-9]+-[0-9a-f]{12}$`)
