package protect

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// make protections: each protection switched off in turn, its tests must
// fail. A table of the outcomes is printed.
func TestEveryProtectionFailsItsTest(t *testing.T) {
	if os.Getenv("CASCADEFS_PROTECTIONS") != "1" {
		t.Skip("make protections runs this (CASCADEFS_PROTECTIONS=1)")
	}
	root := repoRoot(t)
	var table []string
	table = append(table, "| protection | where | test | with it off |", "| --- | --- | --- | --- |")
	for _, p := range All {
		for _, tst := range p.Tests {
			start := time.Now()
			cmd := exec.Command("go", "test", "-tags", "failpoints", "-count=1", "-timeout", "20m", "-run", tst.Run, tst.Pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CASCADEFS_PROTECTION_OFF="+p.Name, "CASCADEFS_REQUIRE_ALL=1", "CASCADEFS_SIM_SEEDS=2000")
			out, err := cmd.CombinedOutput()
			name := strings.Trim(tst.Run, "^$")
			outcome := fmt.Sprintf("FAILS, as it must (%s): %s", time.Since(start).Round(time.Second), firstFailure(string(out)))
			switch {
			case err == nil:
				outcome = "passes: the protection is not shown"
				t.Errorf("%s off: %s %s still passes", p.Name, tst.Pkg, name)
			case !strings.Contains(string(out), "--- FAIL"):
				outcome = "did not run"
				t.Errorf("%s off: %s %s did not run:\n%s", p.Name, tst.Pkg, name, out)
			}
			table = append(table, fmt.Sprintf("| %s | %s | %s %s | %s |", p.Name, p.Where, tst.Pkg, name, outcome))
			t.Logf("%s off: %s %s: %s", p.Name, tst.Pkg, name, outcome)
		}
	}
	fmt.Println(strings.Join(table, "\n"))
}

// firstFailure is the first assertion a failing test printed (file:line:
// message), cut to a table cell.
func firstFailure(out string) string {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.Index(line, "_test.go:"); i > 0 && !strings.Contains(line, "time=") && !strings.Contains(line, " log:") && !strings.Contains(line, "seeds in") {
			line = strings.ReplaceAll(line, "|", "/")
			if len(line) > 160 {
				line = line[:160] + "..."
			}
			return line
		}
	}
	return "(no assertion line)"
}
