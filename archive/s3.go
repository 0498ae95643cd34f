package archive

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cascadefs/cascadefs/internal/protect"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 is an archive in an S3 bucket, under an optional key prefix.
type S3 struct {
	client   *minio.Client
	bucket   string
	prefix   string
	endpoint string
	insecure bool
	ca       string // PEM file of a private CA (&ca=FILE)
	md5      bool   // uploads carry Content-MD5 instead of a trailing CRC-32C (&checksum=md5)
	// locking: the bucket has object lock (read by Check); retention:
	// how long uploads of files are locked (SetRetention).
	locking   atomic.Bool
	retention atomic.Int64
}

// partSize is the multipart unit for large uploads; parts go up in parallel.
const partSize = 64 << 20

func newS3FromURL(u *url.URL) (*S3, error) {
	q := u.Query()
	endpoint := q.Get("endpoint")
	insecure := q.Get("insecure") == "true"
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{}, &credentials.EnvMinio{}, &credentials.FileAWSCredentials{},
	})
	opts := &minio.Options{
		Creds:           creds,
		Secure:          !insecure,
		Region:          q.Get("region"),
		TrailingHeaders: true, // lets PUTs carry CRC-32C checksums the server verifies
	}
	ca := q.Get("ca")
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("archive s3://%s: ca: %w", u.Host, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("archive s3://%s: ca %s holds no PEM certificate", u.Host, ca)
		}
		tr, err := minio.DefaultTransport(true)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
		opts.Transport = tr
	}
	client, err := minio.New(endpoint, opts)
	if err != nil {
		return nil, fmt.Errorf("archive s3://%s: %w", u.Host, err)
	}
	return &S3{client: client, bucket: u.Host, prefix: strings.Trim(u.Path, "/"), endpoint: endpoint, insecure: insecure, ca: ca,
		md5: q.Get("checksum") == "md5"}, nil
}

func (s *S3) String() string {
	return "s3://" + path.Join(s.bucket, s.prefix) + "?endpoint=" + s.endpoint
}

func (s *S3) key(k string) string {
	if s.prefix == "" {
		return k
	}
	return s.prefix + "/" + k
}

func (s *S3) Check(ctx context.Context) error {
	// A listing, not a HEAD of the bucket: its error has a body that says
	// what is wrong (a wrong secret and a missing bucket look alike to a HEAD).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	objects := s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, MaxKeys: 1})
	if o, ok := <-objects; ok && o.Err != nil { // the first answer is enough; cancel stops the rest
		return fmt.Errorf("archive %s: %w", s, s.explainFirstContact(o.Err))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// A bucket with object lock keeps versions: deletes go by version,
	// and uploads are locked for the retention. A store that cannot say
	// (no such configuration, not implemented, not allowed) locks nothing
	// that cascadefs asks for.
	enabled, _, _, _, err := s.client.GetObjectLockConfig(ctx, s.bucket)
	s.locking.Store(err == nil && enabled == "Enabled")
	return nil
}

// Locks reports whether the bucket has object lock enabled.
func (s *S3) Locks() bool { return s.locking.Load() }

// SetRetention locks the objects of later uploads for d (COMPLIANCE
// mode: nobody, the root account neither, deletes them before).
func (s *S3) SetRetention(d time.Duration) { s.retention.Store(int64(d)) }

// LockUntil extends every version of key to be locked until until.
func (s *S3) LockUntil(ctx context.Context, key string, until time.Time) error {
	versions, err := s.versions(ctx, key)
	if err != nil {
		return err
	}
	mode := minio.Compliance
	for _, v := range versions {
		if v.IsDeleteMarker {
			continue
		}
		if v.VersionID == "null" {
			v.VersionID = ""
		}
		// Only ever extended: a lock that ends later stays (where the
		// store's answer does not parse, the request is made, and a
		// COMPLIANCE lock refuses to be shortened).
		if _, cur, err := s.client.GetObjectRetention(ctx, s.bucket, s.key(key), v.VersionID); err == nil && cur != nil && !cur.Before(until) {
			continue
		}
		u := lockEnd(until)
		err := s.client.PutObjectRetention(ctx, s.bucket, s.key(key), minio.PutObjectRetentionOptions{Mode: &mode, RetainUntilDate: &u, VersionID: v.VersionID})
		if resp := minio.ToErrorResponse(err); resp.Code == "AccessDenied" && lockWords.MatchString(resp.Message) {
			continue // refused as a shortening: the lock ends later already
		}
		if err != nil {
			return s.wrap("lock", key, err)
		}
	}
	return nil
}

// lockEnd is until rounded up to the whole second, in UTC. An object
// lock's date travels in whole seconds (a PUT's header is RFC 3339), and
// the store would cut the fraction off: the lock would end up to a
// second before the retention.
func lockEnd(until time.Time) time.Time {
	if up := until.Truncate(time.Second); up.Before(until) {
		until = up.Add(time.Second)
	}
	return until.UTC()
}

// versions lists the versions (and delete markers) of key itself.
func (s *S3) versions(ctx context.Context, key string) ([]minio.ObjectInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []minio.ObjectInfo
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.key(key), WithVersions: true, Recursive: true}) {
		if o.Err != nil {
			return nil, s.wrap("list versions", key, o.Err)
		}
		if o.Key == s.key(key) {
			out = append(out, o)
		}
	}
	return out, nil
}

func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) (ObjectInfo, error) {
	opts := minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    partSize,
		NumThreads:  4,
		Checksum:    minio.ChecksumCRC32C, // checked by the server before it stores the object
	}
	if s.md5 {
		opts.Checksum, opts.SendContentMd5 = minio.ChecksumNone, true
	}
	if r := time.Duration(s.retention.Load()); r > 0 && s.locking.Load() && lockable(key) && !protect.Off(protect.ObjectLock) {
		opts.Mode, opts.RetainUntilDate = minio.Compliance, lockEnd(time.Now().Add(r))
	}
	info, err := s.client.PutObject(ctx, s.bucket, s.key(key), r, size, opts)
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("archive put %s: %w", key, s.explain(err))
	}
	if info.Size != size {
		return ObjectInfo{}, fmt.Errorf("archive put %s: stored %d of %d bytes", key, info.Size, size)
	}
	return ObjectInfo{Key: key, Size: info.Size, ETag: info.ETag}, nil
}

func (s *S3) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	return s.get(ctx, key, off, length, "")
}

// GetMatch is Get of the object as it was when its ETag was etag: an
// object replaced since is ErrChanged.
func (s *S3) GetMatch(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error) {
	return s.get(ctx, key, off, length, etag)
}

func (s *S3) get(ctx context.Context, key string, off, length int64, etag string) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	if length == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	if length > 0 {
		if err := opts.SetRange(off, off+length-1); err != nil {
			return nil, err
		}
	} else if off > 0 {
		if err := opts.SetRange(off, 0); err != nil {
			return nil, err
		}
	}
	if etag != "" {
		if err := opts.SetMatchETag(etag); err != nil {
			return nil, err
		}
	}
	// Core.GetObject hands back the HTTP body itself: minio.Object would pass
	// every Read through a goroutine, which costs a tenth of a recall's CPU.
	body, _, _, err := minio.Core{Client: s.client}.GetObject(ctx, s.bucket, s.key(key), opts)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "PreconditionFailed" {
			return nil, fmt.Errorf("archive get %s/%s: %w", s.bucket, key, ErrChanged)
		}
		return nil, s.wrap("get", key, err)
	}
	return &s3Reader{body: body, s: s, key: key}, nil
}

// s3Reader names the object in errors of a broken transfer.
type s3Reader struct {
	body io.ReadCloser
	s    *S3
	key  string
}

func (r *s3Reader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if err != nil && err != io.EOF {
		err = r.s.wrap("get", r.key, err)
	}
	return n, err
}

func (r *s3Reader) Close() error { return r.body.Close() }

func (s *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	info, err := s.client.StatObject(ctx, s.bucket, s.key(key), minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, s.wrap("stat", key, err)
	}
	return ObjectInfo{Key: key, Size: info.Size, ETag: info.ETag}, nil
}

func (s *S3) Delete(ctx context.Context, key string) error {
	if s.locking.Load() {
		if err := s.deleteVersions(ctx, key); err != nil {
			return err
		}
	} else if err := s.client.RemoveObject(ctx, s.bucket, s.key(key), minio.RemoveObjectOptions{}); err != nil {
		return s.wrap("delete", key, err)
	}
	// The parts of a multipart upload cut short by a crash go too.
	if err := s.client.RemoveIncompleteUpload(ctx, s.bucket, s.key(key)); err != nil {
		return s.wrap("delete", key, err)
	}
	return nil
}

// lockWords: what a store says when it refuses a delete for a lock.
var lockWords = regexp.MustCompile(`(?i)object lock|worm`)

// deleteVersions deletes every version of key (in a versioned bucket a
// plain delete only hides the data behind a delete marker). A version
// still locked is a LockedError: the caller tries again after it.
func (s *S3) deleteVersions(ctx context.Context, key string) error {
	versions, err := s.versions(ctx, key)
	if err != nil {
		return err
	}
	for _, v := range versions {
		if v.VersionID == "null" {
			v.VersionID = "" // a store that keeps no versions (versitygw's POSIX backend)
		}
		err := s.client.RemoveObject(ctx, s.bucket, s.key(key), minio.RemoveObjectOptions{VersionID: v.VersionID})
		if err == nil {
			continue
		}
		_, until, rerr := s.client.GetObjectRetention(ctx, s.bucket, s.key(key), v.VersionID)
		if rerr == nil && until != nil && until.After(time.Now()) {
			return &LockedError{Key: key, Until: *until}
		}
		// A store whose retention answer does not parse (versitygw
		// 1.8) still says why it refused.
		if resp := minio.ToErrorResponse(err); resp.Code == "AccessDenied" && lockWords.MatchString(resp.Message) {
			return &LockedError{Key: key}
		}
		return s.wrap("delete", key, err)
	}
	return nil
}

func (s *S3) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutines when fn fails
	strip := func(k string) string {
		if s.prefix == "" {
			return k
		}
		return strings.TrimPrefix(k, s.prefix+"/")
	}
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true}) {
		if o.Err != nil {
			return s.wrap("list", prefix, o.Err)
		}
		if err := fn(ObjectInfo{Key: strip(o.Key), Size: o.Size, ETag: o.ETag, Modified: o.LastModified}); err != nil {
			return err
		}
	}
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, s.key(prefix), true) {
		if u.Err != nil {
			return s.wrap("list uploads", prefix, u.Err)
		}
		if err := fn(ObjectInfo{Key: strip(u.Key), Size: u.Size, Modified: u.Initiated, Incomplete: true}); err != nil {
			return err
		}
	}
	return nil
}

func (s *S3) wrap(op, key string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchKey, "NoSuchObject", "NotFound":
		return fmt.Errorf("archive %s %s: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("archive %s %s: %w", op, key, s.explain(err))
}
