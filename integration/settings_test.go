package integration

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cascadefs/cascadefs/internal/testenv"
	"github.com/cascadefs/cascadefs/repo"
)

// Stored settings that stop parsing (a key of a newer release during a
// rolling upgrade, a hand edit) leave a running filesystem on its last
// good settings, said in the log and in status, which is unhealthy until
// they parse again. Before, the node fell back to every default: no
// quota, the default thresholds, and nothing said.
func TestBadStoredSettingsKeepTheLastGood(t *testing.T) {
	c := testenv.NewCluster(t, "", nil, "n1")
	c.MustCLI("fs", "set", "--repo", c.Repo, testenv.FSName, "high=80", "low=50", "quota=1GiB")
	c.Start("n1")

	type space struct {
		High, Low int
		Quota     int64
	}
	look := func() (settingsError string, sp space, healthy bool) {
		out, _, err := c.CLI("status", "--json")
		var rep struct {
			Cluster struct {
				FS []struct {
					SettingsError string `json:"settings_error"`
					Session       struct {
						Space *struct {
							High  int   `json:"high"`
							Low   int   `json:"low"`
							Quota int64 `json:"quota"`
						} `json:"space"`
					} `json:"session"`
				} `json:"filesystems"`
			} `json:"cluster"`
		}
		if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || len(rep.Cluster.FS) != 1 {
			t.Fatalf("status --json: %v %q", jerr, out)
		}
		f := rep.Cluster.FS[0]
		if f.Session.Space != nil {
			sp = space{f.Session.Space.High, f.Session.Space.Low, f.Session.Space.Quota}
		}
		return f.SettingsError, sp, err == nil
	}
	testenv.WaitFor(t, "the session with the set thresholds", 20*time.Second, func() bool {
		e, sp, ok := look()
		return e == "" && sp.High == 80 && sp.Low == 50 && sp.Quota == 1<<30 && ok
	})

	// What `fs set` refuses, written straight into the repository.
	r, err := repo.OpenURL(c.Repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	setStored := func(kv map[string]string) {
		t.Helper()
		if err := r.UpdateFS(context.Background(), testenv.FSName, func(f *repo.FS) error { f.Settings = kv; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setStored(map[string]string{"high": "90", "low": "50", "quota": "1GiB", "compression": "zstd"})
	testenv.WaitFor(t, "status to name the settings that do not parse", 20*time.Second, func() bool {
		e, _, _ := look()
		return strings.Contains(e, `"compression"`)
	})
	e, sp, healthy := look()
	if sp.High != 80 || sp.Low != 50 || sp.Quota != 1<<30 {
		t.Errorf("with unparsable settings the session runs on %+v, want the last good high=80 low=50 quota=1GiB", sp)
	}
	if healthy {
		t.Errorf("status exits 0 while the stored settings do not parse (%s)", e)
	}
	if human, _, _ := c.CLI("status"); !strings.Contains(human, "SETTINGS DO NOT PARSE") {
		t.Errorf("status does not say the settings do not parse:\n%s", human)
	}
	if log := c.Nodes["n1"].Log(); !strings.Contains(log, "stored settings do not parse; keeping the last good ones") {
		t.Errorf("no log line for the settings that do not parse:\n%s", log)
	}

	// Mended, they are used at once and the error is gone.
	setStored(map[string]string{"high": "90", "low": "50", "quota": "1GiB"})
	testenv.WaitFor(t, "the mended settings in use", 20*time.Second, func() bool {
		e, sp, ok := look()
		return e == "" && sp.High == 90 && ok
	})
}
