package recall

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// A stream whose every buffer is written and lent to a reader's reply
// that is never sent (the kernel dropped the request) still gets a
// buffer for its next chunk, and leaves the lent bytes as they were.
func TestTakePieceWhenEveryBufferIsLent(t *testing.T) {
	f := &fileRecall{}
	f.cond = sync.NewCond(&f.mu)
	s := &stream{end: 1 << 30}
	for i := range streamPieces {
		p := &piece{buf: bytes.Repeat([]byte{byte(i)}, 16), off: int64(i) * 16, written: true, readers: 1}
		p.data = p.buf
		s.pieces = append(s.pieces, p)
	}
	lent := s.pieces[0].buf
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	go wakeAtEnd(ctx, f)
	p, _, err := f.takePiece(ctx, s, 16)
	if err != nil {
		t.Fatalf("no buffer while every one is lent: %v", err)
	}
	copy(p.buf, bytes.Repeat([]byte{0xEE}, 16)) // the receiver fills it
	if !bytes.Equal(lent, bytes.Repeat([]byte{0}, 16)) {
		t.Fatal("a lent buffer was reused in place")
	}
	if len(s.pieces) != streamPieces {
		t.Fatalf("the stream holds %d buffers, bound %d", len(s.pieces), streamPieces)
	}
}

// A buffer that holds a chunk not yet written is never taken, lent or not.
func TestTakePieceWaitsForUnwritten(t *testing.T) {
	f := &fileRecall{}
	f.cond = sync.NewCond(&f.mu)
	s := &stream{end: 1 << 30}
	for i := range streamPieces {
		p := &piece{buf: make([]byte, 16), off: int64(i) * 16, readers: i % 2}
		p.data = p.buf
		s.pieces = append(s.pieces, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	go wakeAtEnd(ctx, f)
	if p, _, err := f.takePiece(ctx, s, 16); err == nil {
		t.Fatalf("took the buffer of unwritten chunk at %d", p.off)
	}
}

// wakeAtEnd wakes a takePiece that waits, once ctx ends (as fetchFrom does).
func wakeAtEnd(ctx context.Context, f *fileRecall) {
	<-ctx.Done()
	f.mu.Lock()
	f.cond.Broadcast()
	f.mu.Unlock()
}
