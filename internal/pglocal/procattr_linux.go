package pglocal

import "syscall"

// sysProcAttr returns the attributes for a server process: run as cred when
// it is not nil and, with dieWithParent, killed when the thread that
// started it dies, so a killed test binary leaves no server behind.
func sysProcAttr(cred *syscall.Credential, dieWithParent bool) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Credential: cred}
	if dieWithParent {
		attr.Pdeathsig = syscall.SIGKILL
	}
	return attr
}

// adoptOrphans makes this process the parent of the servers that pg_ctl
// starts and leaves behind (PR_SET_CHILD_SUBREAPER), so that Stop can reap
// them: where PID 1 reaps no orphans, as in some containers, every stopped
// server would otherwise stay a zombie.
func adoptOrphans() {
	const prSetChildSubreaper = 36
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
}
