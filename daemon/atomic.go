package daemon

import "sync"

// atomicAccess holds a DMAccess that changes rarely.
type atomicAccess struct {
	mu sync.RWMutex
	v  DMAccess
}

func (a *atomicAccess) Load() DMAccess {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.v
}

func (a *atomicAccess) Store(v DMAccess) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.v = v
}
