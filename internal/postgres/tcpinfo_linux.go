package postgres

import (
	"net"

	"golang.org/x/sys/unix"
)

// unacknowledged reports whether c has sent data its peer has not
// acknowledged: a server that is slow to answer still acknowledges.
func unacknowledged(c *net.TCPConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var unacked uint32
	_ = raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			unacked = info.Unacked
		}
	})
	return unacked > 0
}
