package dmapi

import "sync"

// Serve lets the DM application hand a reader on its own node the bytes
// it waits for straight from memory, once they are verified, instead of
// after they reach the backing file. It is never sent to another node
// (a peer's reader reads the shared file), and an event that carries one
// is never merged with another (each reader has its own buffer).
//
// The reader's buffer is only touched while the reader waits: Fill and
// Close exclude each other, and after Close nothing fills it. The answer
// may also lend memory of the DM application (its checked chunks), which
// the reader sends as it is and gives back with the answer's release.
type Serve struct {
	Off int64 // the file offset of dest[0]

	mu      sync.Mutex
	dest    []byte
	answer  [][]byte
	release func()
	closed  bool
}

// NewServe offers dest, to be filled from file offset off.
func NewServe(off int64, dest []byte) *Serve { return &Serve{Off: off, dest: dest} }

// End is the file offset just past the reader's buffer.
func (s *Serve) End() int64 { return s.Off + int64(len(s.dest)) }

// Fill lets fill answer the reader, unless the reader has gone. fill
// returns the answer: slices in file order, each of dest or of memory it
// lends until release is called (nil when it lends none), together as
// long as dest (cut at the file's size); or nothing when it could not
// serve all of it (the reader then reads the backing file as before).
// Fill returns the answer's length, or -1 when the reader has gone.
func (s *Serve) Fill(fill func(off int64, dest []byte) (answer [][]byte, release func())) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return -1
	}
	if s.release != nil { // an answer filled before is replaced
		s.release()
	}
	s.answer, s.release = fill(s.Off, s.dest)
	n := 0
	for _, b := range s.answer {
		n += len(b)
	}
	return n
}

// Close ends the offer (after a Fill in progress) and hands the answer
// over. The caller sends it, or drops it, and then calls release, when
// not nil: until then the lent memory is not reused in place.
func (s *Serve) Close() (answer [][]byte, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	answer, release = s.answer, s.release
	s.answer, s.release = nil, nil
	return answer, release
}
