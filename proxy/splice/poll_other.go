//go:build !linux

package splice

// Without the poller every direction is driven by a goroutine of its own.

func (s *Session) startPolled(*dir) bool { return false }

func (s *Session) unwatch(*dir) {}
