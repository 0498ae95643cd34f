package migrate

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/dmapi"
	"github.com/cascadefs/cascadefs/internal/fakes"
	"github.com/cascadefs/cascadefs/stub"
	"golang.org/x/sys/unix"
)

// Three versions of a file deleted one after another: undelete takes the
// newest, or with a time the one that was current then; it never
// replaces a file, and what it brought back is no longer kept.
func TestUndeletePicksTheVersion(t *testing.T) {
	root := t.TempDir()
	store := &memStore{m: map[string][]byte{}}
	q := newQueue(t, store, root, &destroyed{})
	q.SetRetention(time.Hour)
	var commits []time.Time
	for i, key := range []string{"t/1/a", "t/2/b", "t/3/c"} {
		f := stubFile(t, root, "f", key)
		year := time.Date(2020+i, 1, 1, 0, 0, 0, 0, time.UTC)
		os.Chtimes(f.Name(), year, year)
		token, err := q.Prepare(int(f.Fd()), "f", key, dmapi.Deleted)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(f.Name())
		q.Commit(token)
		commits = append(commits, time.Now())
		time.Sleep(10 * time.Millisecond)
	}
	if kept, _ := q.Kept("."); len(kept) != 3 || kept[0].Key != "t/3/c" {
		t.Fatalf("kept: %+v", kept)
	}
	tree := fakes.Root(t, root)
	key := func(rel string) string {
		rec, err := stub.ReadRecordAt(filepath.Join(root, rel))
		if err != nil || rec == nil || rec.State != stub.Migrated {
			t.Fatalf("%s: %+v %v", rel, rec, err)
		}
		return rec.Key
	}
	// Current between the first and the second delete: the second version.
	at := commits[0].Add(5 * time.Millisecond)
	if _, err := q.Undelete(tree, nil, UndeleteRequest{Path: "f", At: at, To: "f.at"}); err != nil {
		t.Fatal(err)
	}
	if k := key("f.at"); k != "t/2/b" {
		t.Errorf("version at %v: %s", at, k)
	}
	if _, err := q.Undelete(tree, nil, UndeleteRequest{Path: "f"}); err != nil {
		t.Fatal(err)
	}
	if k := key("f"); k != "t/3/c" {
		t.Errorf("newest version: %s", k)
	}
	var st unix.Stat_t
	unix.Stat(filepath.Join(root, "f"), &st)
	if st.Size != 4 || st.Mtim.Sec != time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC).Unix() {
		t.Errorf("undeleted f: size %d mtime %d", st.Size, st.Mtim.Sec)
	}
	if _, err := q.Undelete(tree, nil, UndeleteRequest{Path: "f", To: "f"}); err == nil {
		t.Error("undeleted over an existing file")
	}
	if _, err := q.Undelete(tree, nil, UndeleteRequest{Path: "f", To: "f.at"}); !errors.Is(err, ErrTargetExists) {
		t.Errorf("undelete onto an existing file: %v", err)
	}
	if kept, _ := q.Kept("."); len(kept) != 1 || kept[0].Key != "t/1/a" {
		t.Errorf("kept after two undeletes: %+v", kept)
	}
	if entries, _ := filepath.Glob(filepath.Join(root, undeletePrefix+"*")); len(entries) != 0 {
		t.Errorf("hidden files left: %v", entries)
	}
}
