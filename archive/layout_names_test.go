package archive

import (
	"testing"

	"github.com/cascadefs/cascadefs/internal/testenv"
)

// The tests' view of the layout (which objects are a file's) is this one.
func TestLayoutNamesInTestenv(t *testing.T) {
	if testenv.JournalPrefix != JournalPrefix || testenv.MetaSuffix != metaSuffix || testenv.ScrubPrefix != ScrubPrefix {
		t.Fatalf("testenv has %q %q, the layout %q %q", testenv.JournalPrefix, testenv.MetaSuffix, JournalPrefix, metaSuffix)
	}
}
