// Package archive is the tertiary storage: one small interface with an S3
// implementation (minio-go) and a directory implementation.
package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) when an object does not exist.
var ErrNotFound = errors.New("archive object not found")

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key      string
	Size     int64
	ETag     string
	Modified time.Time // when it was stored (List only)
	// Incomplete: an upload cut short (S3 multipart parts, a file
	// archive's temporary file); List only. Delete(Key) removes it.
	Incomplete bool
}

// Archive stores immutable objects by key.
type Archive interface {
	// Put stores size bytes read from r under key. The archive checks the
	// bytes in transit (S3 checksums; local write with fsync) and the
	// returned info describes the stored object.
	Put(ctx context.Context, key string, r io.Reader, size int64) (ObjectInfo, error)
	// Get returns length bytes of key starting at off (length < 0: to the end).
	Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error)
	// Stat describes key, or returns an error wrapping ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// Delete removes key; deleting a missing key succeeds.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix, and for
	// every upload under it that was cut short.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Check verifies that the archive is reachable and usable.
	Check(ctx context.Context) error
	// String names the archive without secrets.
	String() string
}

// Open parses an archive URL:
//
//	s3://BUCKET[/PREFIX]?endpoint=HOST:PORT[&insecure=true][&region=R]
//	file:///DIR
//
// S3 credentials come from the environment (minio-go's credential chain).
//
// A spec of several URLs separated by spaces (--archive given more than
// once) keeps every object in each of them (Copies); the first is read
// first.
func Open(spec string) (Archive, error) {
	urls := URLs(spec)
	if len(urls) == 0 {
		return nil, fmt.Errorf("archive URL: none given")
	}
	all := make([]Archive, len(urls))
	for i, u := range urls {
		a, err := openOne(u)
		if err != nil {
			return nil, err
		}
		all[i] = a
	}
	return NewCopies(all...), nil
}

// URLs splits an archive spec into its URLs.
func URLs(spec string) []string { return strings.Fields(spec) }

// Spec joins archive URLs into a spec.
func Spec(urls []string) string { return strings.Join(urls, " ") }

func openOne(rawURL string) (Archive, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "file" {
		return NewDir(u.Path)
	}
	return newS3FromURL(u)
}

// Validate checks an archive spec without opening it (no side effect).
func Validate(spec string) error {
	urls := URLs(spec)
	if len(urls) == 0 {
		return fmt.Errorf("archive URL: none given")
	}
	seen := map[string]bool{}
	for _, u := range urls {
		if _, err := parseURL(u); err != nil {
			return err
		}
		if seen[u] {
			return fmt.Errorf("archive URL %s given twice: copies must be in different places", u)
		}
		seen[u] = true
	}
	return nil
}

func parseURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("archive URL: %w", err)
	}
	if u.User != nil {
		// Never keep a secret in a URL (it reaches configs, logs and status).
		return nil, fmt.Errorf("archive URL: no credentials in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("archive URL %q: file URLs take an absolute path (file:///DIR)", rawURL)
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("archive URL %q: missing directory", rawURL)
		}
		return u, nil
	case "s3":
		q := u.Query()
		if u.Host == "" {
			return nil, fmt.Errorf("archive URL: s3:// needs a bucket")
		}
		if q.Get("endpoint") == "" {
			return nil, fmt.Errorf("archive URL s3://%s: missing ?endpoint=HOST:PORT", u.Host)
		}
		for k := range q {
			if k != "endpoint" && k != "insecure" && k != "region" && k != "ca" && k != "checksum" {
				return nil, fmt.Errorf("archive URL s3://%s: unknown parameter %q", u.Host, k)
			}
		}
		if c := q.Get("checksum"); c != "" && c != "crc32c" && c != "md5" {
			return nil, fmt.Errorf("archive URL s3://%s: checksum=%s: want crc32c (the default) or md5", u.Host, c)
		}
		if q.Get("ca") != "" && q.Get("insecure") == "true" {
			return nil, fmt.Errorf("archive URL s3://%s: ca= is for TLS; it does not go with insecure=true", u.Host)
		}
		return u, nil
	}
	return nil, fmt.Errorf("archive URL %q: scheme must be s3:// or file://", rawURL)
}

// ReadFull reads exactly len(buf) bytes of key at off.
func ReadFull(ctx context.Context, a Archive, key string, off int64, buf []byte) error {
	rc, err := a.Get(ctx, key, off, int64(len(buf)))
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, buf); err != nil {
		return fmt.Errorf("read %s at %d: %w", key, off, err)
	}
	return nil
}
