//go:build failpoints

package failpoint

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestOffByDefault(t *testing.T) {
	Setup("", "")
	for _, n := range All {
		if err := Hit(n); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
	}
}

func TestErrorOnNthHit(t *testing.T) {
	if err := Setup(MigrateAfterUpload+"=error@2", ""); err != nil {
		t.Fatal(err)
	}
	defer Setup("", "")
	got := []bool{}
	for i := 0; i < 3; i++ {
		got = append(got, errors.Is(Hit(MigrateAfterUpload), ErrInjected))
	}
	if got[0] || !got[1] || got[2] {
		t.Errorf("hits failed %v, want only the second", got)
	}
	if err := Setup(MigrateAfterUpload+"=error@2+", ""); err != nil {
		t.Fatal(err)
	}
	Hit(MigrateAfterUpload)
	second, third := Hit(MigrateAfterUpload), Hit(MigrateAfterUpload)
	if second == nil || third == nil {
		t.Error("@2+ must fail the second hit and every later one")
	}
}

func TestPauseUntilMarkerRemoved(t *testing.T) {
	dir := t.TempDir()
	if err := Setup(RecallAfterWrite+"=pause", dir); err != nil {
		t.Fatal(err)
	}
	defer Setup("", "")
	done := make(chan struct{})
	go func() { Hit(RecallAfterWrite); close(done) }()
	marker := filepath.Join(dir, RecallAfterWrite+".paused")
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("did not pause")
	case <-time.After(50 * time.Millisecond):
	}
	os.Remove(marker)
	<-done
}

func TestBadSpecsRefused(t *testing.T) {
	for _, spec := range []string{"nosuch=kill", MigrateAfterUpload, MigrateAfterUpload + "=explode",
		MigrateAfterUpload + "=kill@0", MigrateAfterUpload + "=pause"} {
		if err := Setup(spec, ""); err == nil {
			t.Errorf("%q accepted", spec)
		}
	}
	Setup("", "")
}

// A once- point acts in the first process that claims its marker only;
// a second Setup on the same directory stands for another process.
func TestOnceActsInOneProcess(t *testing.T) {
	dir := t.TempDir()
	defer Setup("", "")
	if err := Setup(TakeoverBeforeCommit+"=once-error@1", dir); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(Hit(TakeoverBeforeCommit), ErrInjected) {
		t.Fatal("first process: not fired")
	}
	if err := Setup(TakeoverBeforeCommit+"=once-error@1", dir); err != nil {
		t.Fatal(err)
	}
	if err := Hit(TakeoverBeforeCommit); err != nil {
		t.Fatalf("second process fired too: %v", err)
	}
	if err := Setup(TakeoverBeforeCommit+"=once-kill@1", ""); err == nil {
		t.Error("once- without a marker directory accepted")
	}
}
