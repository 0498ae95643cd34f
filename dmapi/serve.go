package dmapi

import "sync"

// Serve lets the DM application hand a reader on its own node the bytes
// it waits for straight from memory, once they are verified, instead of
// after they reach the backing file. It is never sent to another node
// (a peer's reader reads the shared file), and an event that carries one
// is never merged with another (each reader has its own buffer).
//
// The reader's buffer is only touched while the reader waits: Fill and
// Close exclude each other, and after Close nothing fills it.
type Serve struct {
	Off int64 // the file offset of dest[0]

	mu     sync.Mutex
	dest   []byte
	n      int
	closed bool
}

// NewServe offers dest, to be filled from file offset off.
func NewServe(off int64, dest []byte) *Serve { return &Serve{Off: off, dest: dest} }

// End is the file offset just past the reader's buffer.
func (s *Serve) End() int64 { return s.Off + int64(len(s.dest)) }

// Fill lets fill write the reader's buffer, unless the reader has gone.
// fill returns how many bytes from the start of dest it wrote: all it
// could serve, or 0 when it could not serve the whole buffer (the reader
// then reads the backing file as before). Fill returns fill's count, or
// -1 when the reader has gone.
func (s *Serve) Fill(fill func(off int64, dest []byte) int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return -1
	}
	s.n = fill(s.Off, s.dest)
	return s.n
}

// Close ends the offer (after a Fill in progress) and returns how many
// bytes were filled.
func (s *Serve) Close() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.n
}
