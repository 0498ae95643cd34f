package testenv

import (
	"bufio"
	"reflect"
	"strings"
	"testing"
)

func TestParseTrace(t *testing.T) {
	out := `100 pwrite64(7</b/x>, "abc"..., 131072, 0) = 131072
101 fdatasync(7</b/x> <unfinished ...>
100 fsetxattr(7</b/x>, "user.cascadefs.stub", "CFSR\1"..., 80, 0) = 0
101 <... fdatasync resumed>) = 0
100 unlinkat(AT_FDCWD</>, "/a/t1/5/k", 0) = -1 ENOENT (No such file or directory)
100 renameat(AT_FDCWD</>, "/a/t1/5/.put-k-1", AT_FDCWD</>, "/a/t1/5/k") = 0
100 unlinkat(9</b/d>, "name", 0) = 0
100 +++ exited with 0 +++
`
	calls, err := ParseTrace(bufio.NewScanner(strings.NewReader(out)))
	if err != nil {
		t.Fatal(err)
	}
	type brief struct {
		Name       string
		Paths      []string
		OK         bool
		Start, End int
	}
	var got []brief
	for _, c := range calls {
		got = append(got, brief{c.Name, c.Paths, c.OK, c.Start, c.End})
	}
	want := []brief{
		{"pwrite64", []string{"/b/x"}, true, 0, 0},
		{"fdatasync", []string{"/b/x"}, true, 1, 3},
		{"fsetxattr", []string{"/b/x"}, true, 2, 2},
		{"unlinkat", []string{"/a/t1/5/k"}, false, 4, 4},
		{"renameat", []string{"/a/t1/5/.put-k-1", "/a/t1/5/k"}, true, 5, 5},
		{"unlinkat", []string{"/b/d/name"}, true, 6, 6},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}
