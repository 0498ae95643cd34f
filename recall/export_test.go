package recall

// SetBeforeDrop runs fn between the look at a premigrated file and its
// drop, where a release can slip in.
func SetBeforeDrop(m *Manager, fn func()) { m.beforeDrop = fn }
