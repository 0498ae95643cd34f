package fusefs

import (
	"container/list"
	"sync"

	"golang.org/x/sys/unix"
)

// dirCache keeps descriptors (O_RDONLY: *at calls, fsync, fstat) of the
// directories used last, so
// that a lookup, create or unlink in a directory does not open it by
// handle each time. A descriptor names the same inode as the handle: a
// directory renamed or removed meanwhile behaves as it would by handle.
// Bounded (an empty directory kept open costs next to nothing), and a
// descriptor is closed only once no call uses it (refs).
type dirCache struct {
	mu     sync.Mutex
	max    int
	lru    *list.List // of *dirEntry, most recent first
	byNode map[*node]*list.Element
}

type dirEntry struct {
	n    *node
	fd   int
	refs int
	gone bool // evicted: closed at its last put
}

func newDirCache(max int) *dirCache {
	return &dirCache{max: max, lru: list.New(), byNode: map[*node]*list.Element{}}
}

// get returns a descriptor of directory n and the func that gives it
// back.
func (c *dirCache) get(n *node) (int, func(), error) {
	c.mu.Lock()
	if el := c.byNode[n]; el != nil {
		e := el.Value.(*dirEntry)
		e.refs++
		c.lru.MoveToFront(el)
		c.mu.Unlock()
		return e.fd, func() { c.put(e) }, nil
	}
	c.mu.Unlock()
	fd, err := n.open(unix.O_RDONLY | unix.O_DIRECTORY)
	if err != nil {
		return -1, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byNode[n]; el != nil { // another call opened it meanwhile
		unix.Close(fd)
		e := el.Value.(*dirEntry)
		e.refs++
		return e.fd, func() { c.put(e) }, nil
	}
	e := &dirEntry{n: n, fd: fd, refs: 1}
	c.byNode[n] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		c.evictLocked(c.lru.Back())
	}
	return fd, func() { c.put(e) }, nil
}

func (c *dirCache) put(e *dirEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.refs--; e.gone && e.refs == 0 {
		unix.Close(e.fd)
	}
}

func (c *dirCache) evictLocked(el *list.Element) {
	e := c.lru.Remove(el).(*dirEntry)
	delete(c.byNode, e.n)
	e.gone = true
	if e.refs == 0 {
		unix.Close(e.fd)
	}
}

// drop forgets n (the kernel forgot it).
func (c *dirCache) drop(n *node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byNode[n]; el != nil {
		c.evictLocked(el)
	}
}

// close forgets everything (at unmount).
func (c *dirCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.lru.Len() > 0 {
		c.evictLocked(c.lru.Back())
	}
}
