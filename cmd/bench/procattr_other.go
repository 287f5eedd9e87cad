//go:build !linux

package main

import "syscall"

// serviceProcAttr puts the service in a process group of its own, which
// keeps a Ctrl-C in the terminal away from it (run stops it, after reading
// its memory).
func serviceProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
