//go:build unix

package splice

import "syscall"

// raiseFileLimit raises the open-file limit to its maximum and returns it.
func raiseFileLimit() (cur uint64) {
	var l syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	l.Cur = l.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return uint64(l.Cur) // int64 on some systems
}
