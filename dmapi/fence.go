package dmapi

import "errors"

// Fence runs a commit (a stub change or an object deletion) only while
// this node still owns the filesystem at its epoch: its lease valid in
// the lapse generation its session was claimed in, and the repository
// confirming owner and epoch just before the commit. No lock is held
// across the commit: a takeover waits for the old owner's lease to lapse,
// and the file's storage right keeps other nodes off the file meanwhile
// (see package stub, "The per-file protocol"). A node that was replaced
// gets ErrFenced and commits nothing.
type Fence func(commit func() error) error

// ErrFenced: another node owns the filesystem now.
var ErrFenced = errors.New("fenced: this node no longer owns the filesystem")

// Run runs commit through the fence; a nil fence (a single node) lets it through.
func (f Fence) Run(commit func() error) error {
	if f == nil {
		return commit()
	}
	return f(commit)
}
