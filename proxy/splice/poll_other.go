//go:build !linux

package splice

// Without the poller every direction is driven by a goroutine of its own.

type poller struct{}

func pickPoller() *poller { return nil }

func (s *Session) startPolled(*dir) bool { return false }

func (s *Session) startInline() bool { return false }

func (s *Session) resume(*dir) {}

func (s *Session) unwatch(*dir) {}

// pollers is empty without the Linux poller.
var pollers struct{ all []poller }
