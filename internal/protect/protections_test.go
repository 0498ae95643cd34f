package protect

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// repoRoot is the module's directory.
func repoRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// The table names unique protections and tests that exist.
func TestTableNamesRealTests(t *testing.T) {
	root := repoRoot(t)
	seen := map[string]bool{}
	for _, p := range All {
		if seen[p.Name] {
			t.Errorf("protection %s listed twice", p.Name)
		}
		seen[p.Name] = true
		if len(p.Tests) == 0 {
			t.Errorf("protection %s has no test", p.Name)
		}
		for _, tst := range p.Tests {
			name := strings.TrimSuffix(strings.TrimPrefix(tst.Run, "^"), "$")
			files, _ := filepath.Glob(filepath.Join(root, tst.Pkg, "*_test.go"))
			found := false
			for _, f := range files {
				b, _ := os.ReadFile(f)
				if strings.Contains(string(b), "func "+name+"(") {
					found = true
				}
			}
			if !found {
				t.Errorf("protection %s: no test %s in %s", p.Name, name, tst.Pkg)
			}
		}
	}
}
