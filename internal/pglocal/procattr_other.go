//go:build unix && !linux

package pglocal

import "syscall"

// sysProcAttr returns the attributes for a server process: run as cred when
// it is not nil. Only Linux can tie the process's life to this one.
func sysProcAttr(cred *syscall.Credential, _ bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}

// adoptOrphans does nothing: only Linux lets a process adopt its orphans.
func adoptOrphans() {}
