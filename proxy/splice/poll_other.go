//go:build !linux

package splice

import (
	"net"
	"time"
)

// Without the poller every direction is driven by a goroutine of its own.

type poller struct{}

func pickPoller() *poller { return nil }

func (s *Session) startPolled(*dir) bool { return false }

func (s *Session) startInline() bool { return false }

func (s *Session) resume(*dir) {}

func (s *Session) unwatch(*dir) {}

// pollers is empty without the Linux poller.
var pollers struct{ all []poller }

// Registration is a backend socket registered with the poller before its
// session exists; there is no poller here, so Register always returns nil.
type Registration struct{}

func Register(net.Conn) *Registration { return nil }

func (r *Registration) Wait(time.Time) {}

func (r *Registration) SetUnread(bool) {}

func (r *Registration) Release() {}

func (r *Registration) pollerOf() *poller { return nil }

// Registered returns 0: there is no poller here.
func Registered() int { return 0 }
