//go:build !linux

package splice

import "syscall"

// ackedBytes: the count of acknowledged bytes is read on Linux only.
func ackedBytes(syscall.RawConn) (int64, bool) { return 0, false }
