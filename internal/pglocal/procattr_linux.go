package pglocal

import "syscall"

// sysProcAttr returns the attributes for a server process: run as cred when
// it is not nil and, for an ephemeral server, killed when the thread that
// started it dies, so a killed test binary leaves no server behind.
func sysProcAttr(cred *syscall.Credential, ephemeral bool) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Credential: cred}
	if ephemeral {
		attr.Pdeathsig = syscall.SIGKILL
	}
	return attr
}
