package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/migrate"
	"github.com/cascadefs/cascadefs/stub"
	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"
)

// importRun runs `cascadefs import --json` with args.
func importRun(t *testing.T, d *testenv.Daemon, args ...string) migrate.ImportReport {
	t.Helper()
	out, errOut, err := d.CLI(append([]string{"import", "--json"}, args...)...)
	var rep migrate.ImportReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || err != nil {
		t.Fatalf("import %v: %v %v\n%s%s", args, err, jerr, out, errOut)
	}
	return rep
}

// recordOf reads the stub record of the backing file p.
func recordOf(t *testing.T, p string) *stub.Record {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	rec, err := stub.ReadRecord(fd)
	if err != nil || rec == nil {
		t.Fatalf("%s: record %v %v", p, rec, err)
	}
	return rec
}

// Objects that another program wrote become stubs with `cascadefs
// import`: size, mtime and the directory's owner; ranged and full reads
// give their bytes (a full read makes their checksums); an object changed
// since reads EIO with a sentence; a path taken, a key that names no
// path, and objects cascadefs wrote are left alone; and whatever happens
// to a stub, the object it came from is never deleted.
func TestImport(t *testing.T) {
	m := testenv.StartMinIO(t)
	d := testenv.NewDaemon(t, m.Bucket(t, "arch"), m.EnvList())
	d.Start()
	ctx := context.Background()
	if err := m.Client.MakeBucket(ctx, "data", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	put := func(bucket, key string, b []byte) minio.UploadInfo {
		t.Helper()
		info, err := m.Client.PutObject(ctx, bucket, key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{})
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		return info
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	// big: more chunks than a record holds checksums for (a checksum
	// object is made at its first full recall).
	objects := map[string][]byte{"a.jpg": random(3<<20 + 5), "2021/b.bin": random(300 << 10), "empty": nil, "big": random(64<<20 + 1)}
	for k, b := range objects {
		put("data", "photos/"+k, b)
	}
	put("data", "photos/dir/", nil)                        // a "directory" marker
	put("data", "photos/.cascadefs-import-x", []byte("x")) // a name import keeps for itself
	put("data", "elsewhere", []byte("not under the prefix"))
	stat, err := m.Client.StatObject(ctx, "data", "photos/a.jpg", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.Mkdir(d.M("imported"), 0o755))
	must(t, os.Chown(d.M("imported"), 64123, 64124))

	rep := importRun(t, d, "--dry-run", "s3://data/photos", d.M("imported"))
	if rep.Objects != 5 || rep.Made != 4 || rep.BadNames != 1 || rep.Bytes != 3<<20+5+300<<10+64<<20+1 {
		t.Fatalf("dry run: %+v", rep)
	}
	if names, _ := os.ReadDir(d.M("imported")); len(names) != 0 {
		t.Fatalf("a dry run made %v", names)
	}
	rep = importRun(t, d, "s3://data/photos", d.M("imported"))
	if rep.Made != 4 || rep.BadNames != 1 || rep.Failed != 0 {
		t.Fatalf("import: %+v", rep)
	}
	var st unix.Stat_t
	must(t, unix.Stat(d.M("imported/a.jpg"), &st))
	if st.Size != 3<<20+5 || st.Uid != 64123 || st.Gid != 64124 || st.Mode&0o7777 != 0o644 || st.Mtim.Sec != stat.LastModified.Unix() {
		t.Fatalf("imported stub: size %d owner %d:%d mode %o mtime %d (object %v)", st.Size, st.Uid, st.Gid, st.Mode&0o7777, st.Mtim.Sec, stat.LastModified)
	}
	if e := state(t, d, "imported/a.jpg"); e.State != "migrated" || e.Origin != "data/photos/a.jpg" || !e.Unverified {
		t.Fatalf("ls of an imported file: %+v", e)
	}
	if rec := recordOf(t, d.B("imported/a.jpg")); !rec.Imported || !rec.Unverified || rec.OriginKey != "photos/a.jpg" {
		t.Fatalf("imported record: %+v", rec)
	}
	if rep := importRun(t, d, "s3://data/photos", d.M("imported")); rep.Made != 0 || rep.Existing != 4 {
		t.Fatalf("a second import: %+v", rep)
	}

	// Reads: ranged first, then whole (which makes the checksums).
	f, err := os.Open(d.M("imported/a.jpg"))
	must(t, err)
	got := make([]byte, 4096)
	_, err = f.ReadAt(got, 2<<20+7)
	f.Close()
	if err != nil || !bytes.Equal(got, objects["a.jpg"][2<<20+7:2<<20+7+4096]) {
		t.Fatalf("ranged read of an imported stub: %v", err)
	}
	for k, want := range objects {
		if b, err := os.ReadFile(d.M("imported/" + k)); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("%s reads other bytes: %v", k, err)
		}
	}
	// The reader is answered before the recall's commit: wait for it.
	stateAfterRead(t, d, "imported/a.jpg")
	stateAfterRead(t, d, "imported/big")
	if rec := recordOf(t, d.B("imported/a.jpg")); rec.State != stub.Premigrated || rec.Unverified || !rec.Imported {
		t.Fatalf("after a full read: %+v", rec)
	}
	if rec := recordOf(t, d.B("imported/big")); rec.Unverified || rec.InlineSums() {
		t.Fatalf("big after a full read: %+v", rec)
	}
	if rep, clean := scrubRun(t, d, d.M("imported")); !clean || rep.Files != 3 {
		t.Fatalf("scrub of imported files: %+v", rep)
	}
	// Released again (nothing uploaded: the object is its copy), read again.
	d.MustCLI("migrate", d.M("imported/a.jpg"))
	if e := state(t, d, "imported/a.jpg"); e.State != "migrated" {
		t.Fatalf("imported file after migrate: %q", e.State)
	}
	testenv.DropCaches()
	if b, err := os.ReadFile(d.M("imported/a.jpg")); err != nil || !bytes.Equal(b, objects["a.jpg"]) {
		t.Fatalf("imported file read after a release: %v", err)
	}

	// The origin changed behind cascadefs: EIO, and a sentence.
	d.MustCLI("migrate", d.M("imported/a.jpg"))
	put("data", "photos/a.jpg", random(100))
	testenv.DropCaches()
	if _, err := os.ReadFile(d.M("imported/a.jpg")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a stub whose object changed: %v", err)
	}
	if _, errOut, err := d.CLI("recall", d.M("imported/a.jpg")); err == nil || !strings.Contains(errOut, "changed since it was imported") {
		t.Fatalf("recall of a stub whose object changed: %v %s", err, errOut)
	}
	d.MustCLI("migrate", d.M("imported/big"))
	testenv.DropCaches()
	if b, err := os.ReadFile(d.M("imported/big")); err != nil || !bytes.Equal(b, objects["big"]) {
		t.Fatalf("big read again, checked by its checksum object: %v", err)
	}
	if rep, clean := scrubRun(t, d, d.M("imported")); clean || rep.BadCount != 1 {
		t.Fatalf("scrub after the origin changed: %+v", rep)
	}

	// Objects cascadefs wrote are not imported; a user's object beside
	// them is.
	writeRandom(t, d.M("own"), 100<<10)
	d.MustCLI("migrate", d.M("own"))
	put("arch", "notes.txt", []byte("the user's own"))
	must(t, os.Mkdir(d.M("fromarch"), 0o755))
	if rep := importRun(t, d, "s3://arch", d.M("fromarch")); rep.Made != 1 || rep.Ours < 2 {
		t.Fatalf("import of the archive's own bucket: %+v", rep)
	}
	if b, err := os.ReadFile(d.M("fromarch/notes.txt")); err != nil || string(b) != "the user's own" {
		t.Fatalf("notes.txt: %q %v", b, err)
	}

	// Deleting or rewriting stubs never deletes what they came from.
	must(t, os.Remove(d.M("imported/a.jpg")))
	must(t, os.WriteFile(d.M("imported/2021/b.bin"), []byte("rewritten"), 0o644))
	must(t, os.Remove(d.M("fromarch/notes.txt")))
	put("arch", "t1/user/file", []byte("not cascadefs's, under its filesystem's prefix"))
	time.Sleep(3 * time.Second) // the DESTROY queue's passes
	out := d.MustCLI("reconcile", "--json", "--grace", "0s", d.M("."))
	var rrep migrate.ReconcileReport
	if err := json.Unmarshal([]byte(out), &rrep); err != nil || rrep.Deleted != 0 || rrep.NotOurs != 1 {
		t.Fatalf("reconcile: %v %+v", err, rrep)
	}
	for bucket, keys := range map[string][]string{"data": {"photos/a.jpg", "photos/2021/b.bin", "photos/empty"}, "arch": {"notes.txt", "t1/user/file"}} {
		for _, k := range keys {
			if _, err := m.Client.StatObject(ctx, bucket, k, minio.StatObjectOptions{}); err != nil {
				t.Errorf("%s/%s: gone: %v", bucket, k, err)
			}
		}
	}
}
