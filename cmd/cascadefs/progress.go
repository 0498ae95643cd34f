package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// progress draws a bar on a terminal when the work is large enough to wait
// for; elsewhere it stays silent and the summary line says it all.
type progress struct {
	op          string
	on          bool
	files, done int
	bytes, sent int64
}

func newProgress(op string) *progress { return &progress{op: op} }

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (p *progress) plan(files int, bytes int64) {
	p.files, p.bytes = files, bytes
	p.on = isTerminal(os.Stderr) && (bytes >= 64<<20 || files >= 20)
	p.draw()
}

func (p *progress) advance(moved int64) {
	p.done++
	p.sent += moved
	p.draw()
}

func (p *progress) draw() {
	if !p.on {
		return
	}
	const width = 30
	frac := 0.0
	if p.files > 0 {
		frac = float64(p.done) / float64(p.files)
	}
	n := int(frac * width)
	fmt.Fprintf(os.Stderr, "\r%s [%s%s] %d/%d files, %s", p.op, strings.Repeat("#", n), strings.Repeat(" ", width-n), p.done, p.files, human(p.sent))
}

// printf prints a line above the bar.
func (p *progress) printf(format string, args ...any) {
	if p.on {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
	fmt.Fprintf(os.Stderr, format, args...)
	p.draw()
}

func (p *progress) finish() {
	if p.on {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
}
