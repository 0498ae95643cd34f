package dmapi

import "errors"

// Fence runs a commit (a stub change or an object deletion) only while
// this node still owns the filesystem at its epoch, checked under the
// repository lock, so that at most one node commits for a filesystem at
// any epoch. A node that was replaced gets ErrFenced and commits nothing.
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
