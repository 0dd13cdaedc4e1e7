//go:build !linux

package splice

import (
	"errors"
	"net"
	"syscall"
)

// rawConnOf returns nil: without a probe for readability, reads block in
// Read with a pooled buffer.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

func (d *dir) ready(uintptr) bool { return true }

// probeFn returns the callback pump waits on src with.
func (d *dir) probeFn() func(fd uintptr) bool { return d.ready }

// canInline: inline sessions need the Linux poller.
const canInline = false

var errWouldBlock = errors.New("would block")

// rawIO is the Linux read state; elsewhere there are no inline reads.
type rawIO struct{}

func (d *dir) readNow([]byte, *rawIO) (int, error) { return 0, errWouldBlock }

func (p *peer) writeNow([]byte) (int, error) { return 0, errWouldBlock }

func writeFd(uintptr, []byte) (int, error) { return 0, errWouldBlock }
