package fusefs

import (
	"math"
	"testing"
)

func TestResidentSpans(t *testing.T) {
	var r residentSpans
	if r.covers(0, 1) {
		t.Fatal("empty covers")
	}
	r.add(100, 200)
	r.add(300, 400)
	r.add(200, 300) // joins both
	if !r.covers(100, 400) || len(r.spans) != 1 {
		t.Fatalf("merge: %v", r.spans)
	}
	r.add(0, 50)
	r.add(500, 600)
	if len(r.spans) != 3 || r.covers(40, 60) || !r.covers(0, 50) || !r.covers(550, 600) {
		t.Fatalf("apart: %v", r.spans)
	}
	r.add(10, 20) // inside
	r.add(40, 120)
	if len(r.spans) != 2 || !r.covers(0, 400) {
		t.Fatalf("overlap: %v", r.spans)
	}
	r.add(7, 7) // empty
	if len(r.spans) != 2 {
		t.Fatalf("empty span added: %v", r.spans)
	}
	for i := range maxSpans + 1 {
		r.add(int64(1000+10*i), int64(1005+10*i))
	}
	if len(r.spans) > maxSpans || !r.covers(1000+10*maxSpans, 1005+10*maxSpans) {
		t.Fatalf("cap: %d spans", len(r.spans))
	}
	r.all()
	if !r.covers(0, math.MaxInt64) {
		t.Fatal("all")
	}
}
