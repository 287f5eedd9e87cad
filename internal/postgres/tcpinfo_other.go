//go:build !linux

package postgres

import "net"

// unacknowledged is false where TCP_INFO is not read.
func unacknowledged(*net.TCPConn) bool { return false }
