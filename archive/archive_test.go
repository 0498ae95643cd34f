package archive_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/archive"
	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/minio/minio-go/v7"
)

// exercise runs the same contract against every backend.
func exercise(t *testing.T, a archive.Archive) {
	ctx := context.Background()
	if err := a.Check(ctx); err != nil {
		t.Fatalf("check: %v", err)
	}
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	info, err := a.Put(ctx, "fs/1/obj", bytes.NewReader(data), int64(len(data)))
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("put: %v %+v", err, info)
	}
	st, err := a.Stat(ctx, "fs/1/obj")
	if err != nil || st.Size != int64(len(data)) {
		t.Fatalf("stat: %v %+v", err, st)
	}
	for _, r := range [][2]int64{{0, 10}, {1 << 20, 4096}, {int64(len(data)) - 5, 5}, {0, int64(len(data))}} {
		buf := make([]byte, r[1])
		if err := archive.ReadFull(ctx, a, "fs/1/obj", r[0], buf); err != nil {
			t.Fatalf("get %v: %v", r, err)
		}
		if !bytes.Equal(buf, data[r[0]:r[0]+r[1]]) {
			t.Fatalf("get %v: wrong bytes", r)
		}
	}
	rc, err := a.Get(ctx, "fs/1/obj", 100, -1)
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(rest, data[100:]) {
		t.Fatal("get to end: wrong bytes")
	}
	// A short reader must not leave an object behind.
	if _, err := a.Put(ctx, "fs/1/short", bytes.NewReader(data[:10]), 20); err == nil {
		t.Fatal("put of a short stream succeeded")
	}
	if _, err := a.Stat(ctx, "fs/1/short"); !errors.Is(err, archive.ErrNotFound) {
		t.Fatalf("short put left an object: %v", err)
	}
	if err := a.Delete(ctx, "fs/1/obj"); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "fs/1/obj"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := a.Stat(ctx, "fs/1/obj"); !errors.Is(err, archive.ErrNotFound) {
		t.Fatalf("stat after delete: %v", err)
	}
	rc, err = a.Get(ctx, "fs/1/obj", 0, 10)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, archive.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestDir(t *testing.T) {
	a, err := archive.Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a)
}

func TestS3(t *testing.T) {
	m := testenv.StartMinIO(t)
	m.Env(t)
	a, err := archive.Open(m.Bucket(t, "archive-test") + "")
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a)
	m.Bucket(t, "archive-test2")
	prefixed, _ := archive.Open(m.URL("archive-test2/some/prefix"))
	exercise(t, prefixed)
}

func TestBadURLs(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "s3://", "s3://bucket", "s3://b?endpoint=h:1&bogus=1", "file://host/dir", "file://"} {
		if _, err := archive.Open(u); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}

func TestS3Unreachable(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	a, err := archive.Open("s3://b?endpoint=127.0.0.1:1&insecure=true")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5e9)
	defer cancel()
	if err := a.Check(ctx); err == nil {
		t.Fatal("unreachable archive passed its check")
	}
}

// What an admin gets wrong in an archive URL or its credentials comes back
// as a sentence that says what to do, for a real MinIO over HTTP and TLS.
func TestS3ErrorsAreSentences(t *testing.T) {
	m := testenv.StartMinIO(t)
	m.Env(t)
	m.Bucket(t, "there")
	mt := testenv.StartMinIOTLS(t)
	mt.Bucket(t, "there")
	otherCA := t.TempDir()
	testenv.WriteTestCA(t, otherCA)
	check := func(url string) error {
		t.Helper()
		a, err := archive.Open(url)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return a.Check(ctx)
	}
	plain := "s3://there?endpoint=" + m.Endpoint + "&insecure=true"
	for _, c := range []struct {
		name, url string
		env       [2]string
		want      []string
	}{
		{"missing bucket", "s3://nothere?endpoint=" + m.Endpoint + "&insecure=true", [2]string{}, []string{`bucket "nothere" does not exist`, "create it", "mc mb"}},
		{"wrong secret", plain, [2]string{"AWS_SECRET_ACCESS_KEY", "wrong-secret"}, []string{"secret key does not belong", "AWS_SECRET_ACCESS_KEY"}},
		{"unknown key", plain, [2]string{"AWS_ACCESS_KEY_ID", "nobody"}, []string{`does not know the access key "nobody"`}},
		{"https to plain HTTP", "s3://there?endpoint=" + m.Endpoint, [2]string{}, []string{"does not speak TLS", "insecure=true"}},
		{"nothing listens", fmt.Sprintf("s3://there?endpoint=127.0.0.1:%d&insecure=true", testenv.FreePort(t)), [2]string{}, []string{"nothing listens"}},
		{"private CA not given", "s3://there?endpoint=" + mt.Endpoint, [2]string{}, []string{"not signed by a CA this machine trusts", "&ca=FILE"}},
		{"another CA", "s3://there?endpoint=" + mt.Endpoint + "&ca=" + filepath.Join(otherCA, "ca.pem"), [2]string{}, []string{"not signed by the CA in " + filepath.Join(otherCA, "ca.pem")}},
		{"plain HTTP to TLS", "s3://there?endpoint=" + mt.Endpoint + "&insecure=true", [2]string{}, []string{"speaks TLS", "remove insecure=true"}},
		{"ca with insecure", "s3://there?endpoint=" + mt.Endpoint + "&insecure=true&ca=" + mt.CA, [2]string{}, []string{"does not go with insecure=true"}},
		{"ca not PEM", "s3://there?endpoint=" + mt.Endpoint + "&ca=/etc/hostname", [2]string{}, []string{"holds no PEM certificate"}},
		{"bad checksum option", plain + "&checksum=sha1", [2]string{}, []string{"want crc32c (the default) or md5"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.env[0] != "" {
				t.Setenv(c.env[0], c.env[1])
			}
			err := check(c.url)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	if testenv.S3Server() == "versitygw" {
		// A server that does not verify trailing checksums says so at the
		// first upload, with what to do.
		a, err := archive.Open(plain)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.Put(context.Background(), "k", strings.NewReader("bytes"), 5)
		if err == nil || !strings.Contains(err.Error(), "&checksum=md5") {
			t.Errorf("an upload with a trailing checksum to versitygw: %v", err)
		}
	}
	// The private CA given: the archive works over TLS.
	a, err := archive.Open(mt.Bucket(t, "tls-archive"))
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a)
}

// A bucket with object lock: the contract holds (a delete removes every
// version, not only the current one behind a marker); with a retention,
// an upload is locked (COMPLIANCE) and nobody deletes it, this archive
// neither, which says until when; a lock is extended, never shortened;
// once it ends the delete goes through. The journal is never locked.
func TestS3ObjectLock(t *testing.T) {
	m := testenv.StartMinIO(t)
	m.Env(t)
	a, err := archive.Open(m.LockedBucket(t, "locked"))
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a)
	l, ok := archive.LockerOf(a)
	if !ok {
		t.Fatal("a bucket with object lock is not seen as locking")
	}
	ctx := context.Background()
	versions := func(key string) int {
		n := 0
		for o := range m.Client.ListObjects(ctx, "locked", minio.ListObjectsOptions{Prefix: key, WithVersions: true, Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			n++
		}
		return n
	}
	if n := versions("fs/1/"); n != 0 {
		t.Fatalf("%d versions or markers left after the deletes", n)
	}

	l.SetRetention(3 * time.Second)
	locked := time.Now()
	data := []byte("locked bytes")
	for _, k := range []string{"fs/2/obj", archive.JournalPrefix + "fs/batch"} {
		if _, err := a.Put(ctx, k, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Delete(ctx, archive.JournalPrefix+"fs/batch"); err != nil {
		t.Fatalf("a journal batch was locked: %v", err)
	}
	for o := range m.Client.ListObjects(ctx, "locked", minio.ListObjectsOptions{Prefix: "fs/2/obj", WithVersions: true}) {
		if err := m.Client.RemoveObject(ctx, "locked", o.Key, minio.RemoveObjectOptions{VersionID: o.VersionID, GovernanceBypass: true}); err == nil {
			t.Fatal("a locked version was deleted by another client")
		}
	}
	// lockedTill checks a refused delete: locked, until after end
	// (versitygw 1.8 does not say until when).
	lockedTill := func(err error, end time.Time) {
		t.Helper()
		var le *archive.LockedError
		if !errors.As(err, &le) || !errors.Is(err, archive.ErrLocked) ||
			(le.Until.IsZero() && m.Kind == "minio") || (!le.Until.IsZero() && le.Until.Before(end)) {
			t.Fatalf("delete of a locked object: %v", err)
		}
	}
	lockedTill(a.Delete(ctx, "fs/2/obj"), locked.Add(2*time.Second))
	if err := l.LockUntil(ctx, "fs/2/obj", locked.Add(6*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := l.LockUntil(ctx, "fs/2/obj", locked.Add(time.Second)); err != nil {
		t.Fatalf("a shorter lock asked for: %v", err)
	}
	time.Sleep(time.Until(locked.Add(4 * time.Second)))
	lockedTill(a.Delete(ctx, "fs/2/obj"), locked.Add(5*time.Second)) // after the upload's lock, inside the extended one
	time.Sleep(time.Until(locked.Add(7 * time.Second)))
	if err := a.Delete(ctx, "fs/2/obj"); err != nil {
		t.Fatalf("delete after the lock ended: %v", err)
	}
	if n := versions("fs/2/"); n != 0 {
		t.Fatalf("%d versions or markers left", n)
	}
	if _, ok := archive.LockerOf(mustOpen(t, m.Bucket(t, "plain"))); ok {
		t.Fatal("a plain bucket is seen as locking")
	}
}

func mustOpen(t *testing.T, url string) archive.Archive {
	t.Helper()
	a, err := archive.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	return a
}
