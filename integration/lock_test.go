package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/minio/minio-go/v7"
)

// On a bucket with S3 object lock, an upload is locked (COMPLIANCE) for
// the retention, so nobody deletes it, the test's own client neither; a
// deleted file's object is locked again to the end of its retention, a
// live file's again and again from each session's start; the
// DESTROY queue waits for a lock to end (here after the retention was
// set to 0), then deletes every version, leaving nothing behind.
func TestObjectLock(t *testing.T) {
	m := testenv.StartMinIO(t)
	d := testenv.NewDaemon(t, m.LockedBucket(t, "locked"), m.EnvList(), "--retention", "1m")
	d.Start()
	writeRandom(t, d.M("a"), 100<<10)
	writeRandom(t, d.M("b"), 100<<10)
	writeRandom(t, d.M("live"), 100<<10)
	// Locks are wall-clock dates: every time here is one (Round(0) drops
	// the monotonic reading), so a step of the clock cannot fail the test.
	uploaded := time.Now().Round(0)
	d.MustCLI("migrate", d.M("a"), d.M("b"), d.M("live"))
	keys := map[string]string{"a": state(t, d, "a").Object, "b": state(t, d, "b").Object}
	live := state(t, d, "live").Object
	ctx := context.Background()
	lockOf := func(key string) (minio.RetentionMode, time.Time) {
		t.Helper()
		mode, until, err := m.Client.GetObjectRetention(ctx, "locked", key, "")
		if err != nil || mode == nil || until == nil {
			t.Fatalf("%s: no lock: %v", key, err)
		}
		return *mode, *until
	}
	versions := func(prefix string) []minio.ObjectInfo {
		t.Helper()
		var out []minio.ObjectInfo
		for o := range m.Client.ListObjects(ctx, "locked", minio.ListObjectsOptions{Prefix: prefix, WithVersions: true, Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			out = append(out, o)
		}
		return out
	}
	for n, k := range keys {
		for _, obj := range []string{k, k + ".meta"} {
			mode, until := lockOf(obj)
			if mode != minio.Compliance || until.Before(uploaded.Add(time.Minute)) || until.After(time.Now().Add(62*time.Second)) {
				t.Fatalf("%s: %s locked %s until %v, want COMPLIANCE for the retention", n, obj, mode, until)
			}
		}
		for _, v := range versions(k) {
			if err := m.Client.RemoveObject(ctx, "locked", v.Key, minio.RemoveObjectOptions{VersionID: v.VersionID, GovernanceBypass: true}); err == nil {
				t.Fatalf("%s: a locked version was deleted with the archive's own key", n)
			}
		}
	}

	// A deleted file's object: locked to the end of its retention.
	deleted := time.Now().Round(0)
	must(t, os.Remove(d.M("a")))
	testenv.WaitFor(t, "the deleted file's lock extended", 20*time.Second, func() bool {
		_, until := lockOf(keys["a"])
		return !until.Before(deleted.Add(time.Minute))
	})

	// A live file's locks are extended by a pass at each session's
	// start (then every half retention).
	time.Sleep(time.Until(uploaded.Add(5 * time.Second)))
	d.Stop()
	restarted := time.Now().Round(0)
	d.Start()
	testenv.WaitFor(t, "the live file's locks extended", 20*time.Second, func() bool {
		for _, k := range []string{live, live + ".meta"} {
			if _, until := lockOf(k); until.Before(restarted.Add(time.Minute)) {
				return false
			}
		}
		return true
	})

	// Retention 0 now: the DESTROY queue deletes at once, as far as the
	// locks let it.
	d.Stop()
	d.Args = []string{"--retention", "0"}
	d.Start()
	must(t, os.Remove(d.M("b")))
	testenv.WaitFor(t, "the DESTROY waiting for the locks", 20*time.Second, func() bool {
		return strings.Count(d.Log(), "the DESTROY waits for its lock to end") >= 2
	})
	for n, k := range keys {
		if len(versions(k)) == 0 {
			t.Fatalf("%s: the object went before its lock ended", n)
		}
	}
	testenv.WaitFor(t, "both objects deleted once their locks ended", 100*time.Second, func() bool {
		return len(versions(keys["a"])) == 0 && len(versions(keys["b"])) == 0
	})
	if since := time.Now().Round(0).Sub(uploaded); since < time.Minute {
		t.Fatalf("deleted %v after the upload, inside its lock", since)
	}
	for n, k := range keys {
		if v := versions(k); len(v) != 0 {
			t.Errorf("%s: left behind: %+v", n, v)
		}
	}
}
