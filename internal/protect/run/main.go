// Command run is `make protections`: it switches each protection of
// package protect off in turn, runs the tests that must then fail, and
// prints the table. It exits 1 if any of them passes or does not run.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cascadefs/cascadefs/internal/protect"
)

func main() {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "protections:", err)
		os.Exit(2)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bad := 0
	fmt.Println("| protection | where | test | with it off |\n| --- | --- | --- | --- |")
	for _, p := range protect.All {
		for _, tst := range p.Tests {
			start := time.Now()
			cmd := exec.Command("go", "test", "-tags", "failpoints", "-count=1", "-timeout", "20m", "-run", tst.Run, tst.Pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CASCADEFS_PROTECTION_OFF="+p.Name, "CASCADEFS_REQUIRE_ALL=1", "CASCADEFS_SIM_SEEDS=2000")
			got, err := cmd.CombinedOutput()
			outcome := fmt.Sprintf("FAILS, as it must (%s): %s", time.Since(start).Round(time.Second), firstFailure(string(got)))
			switch {
			case err == nil:
				outcome, bad = "PASSES: the protection is not shown", bad+1
			case !strings.Contains(string(got), "--- FAIL"):
				outcome, bad = "did not run: "+firstLine(string(got)), bad+1
			}
			fmt.Printf("| %s | %s | %s %s | %s |\n", p.Name, p.Where, tst.Pkg, strings.Trim(tst.Run, "^$"), outcome)
		}
	}
	if bad > 0 {
		fmt.Fprintf(os.Stderr, "protections: %d test(s) did not fail with their protection off\n", bad)
		os.Exit(1)
	}
}

// firstFailure is the first assertion a failing test printed (file:line:
// message), cut to a table cell.
func firstFailure(out string) string {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if strings.Contains(line, "_test.go:") && !strings.Contains(line, "time=") && !strings.Contains(line, " log:") && !strings.Contains(line, "seeds in") {
			return cell(line)
		}
	}
	return "(no assertion line)"
}

func firstLine(out string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	return cell(line)
}

func cell(s string) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}
