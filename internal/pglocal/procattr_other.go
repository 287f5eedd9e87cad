//go:build unix && !linux

package pglocal

import "syscall"

// sysProcAttr returns the attributes for a server process: run as cred when
// it is not nil. Only Linux can tie the server's life to this process.
func sysProcAttr(cred *syscall.Credential, _ bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}
