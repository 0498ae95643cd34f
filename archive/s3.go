package archive

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"strings"

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
	return ctx.Err()
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
	// Core.GetObject hands back the HTTP body itself: minio.Object would pass
	// every Read through a goroutine, which costs a tenth of a recall's CPU.
	body, _, _, err := minio.Core{Client: s.client}.GetObject(ctx, s.bucket, s.key(key), opts)
	if err != nil {
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
	if err := s.client.RemoveObject(ctx, s.bucket, s.key(key), minio.RemoveObjectOptions{}); err != nil {
		return s.wrap("delete", key, err)
	}
	// The parts of a multipart upload cut short by a crash go too.
	if err := s.client.RemoveIncompleteUpload(ctx, s.bucket, s.key(key)); err != nil {
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
