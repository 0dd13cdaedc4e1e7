//go:build linux

package splice

import (
	"encoding/binary"
	"syscall"
	"unsafe"
)

// bytesAckedOffset is where struct tcp_info holds tcpi_bytes_acked (Linux
// 4.1 and later): the count of bytes the peer has acknowledged.
const bytesAckedOffset = 120

// ackedBytes returns how many bytes the peer of the socket rc has
// acknowledged, and false where that cannot be known (no raw socket, or a
// kernel without the counter). A peer whose count grows is reading what it
// is sent: it is alive, however slowly it reads.
func ackedBytes(rc syscall.RawConn) (int64, bool) {
	if rc == nil {
		return 0, false
	}
	var info [256]byte
	n := uint32(len(info))
	var e syscall.Errno
	err := rc.Control(func(fd uintptr) {
		_, _, e = syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0)
	})
	if err != nil || e != 0 || n < bytesAckedOffset+8 {
		return 0, false
	}
	return int64(binary.NativeEndian.Uint64(info[bytesAckedOffset:])), true
}
