package pglocal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// scratchLock, in a scratch directory, is locked by the process that made
// the directory for as long as it lives.
const scratchLock = "lock"

// Scratch is a new directory for a throwaway server (see MkdirScratch),
// locked by this process until Remove or its death, so that a later
// process can tell the directories of dead processes from those in use.
type Scratch struct {
	dir  string
	lock *os.File
}

// NewScratch first removes the scratch directories named prefix* that
// this user's processes left behind when they died without cleaning up
// (a test binary killed at its timeout, a benchmark stopped with SIGKILL),
// stopping any server still running in one; then creates a new directory
// and locks it. Returns an error when it cannot create or lock it.
func NewScratch(prefix string) (*Scratch, error) {
	removeAbandoned(prefix)
	dir, err := MkdirScratch(prefix)
	if err != nil {
		return nil, err
	}
	// Locked before it gets its name, so that no other process ever finds
	// the directory with an unlocked lock file.
	tmp := filepath.Join(dir, scratchLock+".new")
	f, err := os.OpenFile(tmp, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			err = os.Rename(tmp, filepath.Join(dir, scratchLock))
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return &Scratch{dir: dir, lock: f}, nil
}

// Dir returns the directory.
func (s *Scratch) Dir() string { return s.dir }

// Remove removes the directory with everything in it and releases its
// lock. A server in it must be stopped first.
func (s *Scratch) Remove() error {
	err := os.RemoveAll(s.dir)
	return errors.Join(err, s.lock.Close())
}

// removeAbandoned removes the scratch directories named prefix* of this
// user whose lock no process holds, after stopping the servers still
// running in them. A directory too new to have its lock file is left alone.
func removeAbandoned(prefix string) {
	dirs, _ := filepath.Glob(filepath.Join(ScratchDir(), prefix+"*")) // the pattern is valid
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if st, ok := fi.Sys().(*syscall.Stat_t); err != nil || !ok || int(st.Uid) != os.Geteuid() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, scratchLock))
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close()
			continue // its process is alive
		}
		pidFiles, _ := filepath.Glob(filepath.Join(dir, "*", "postmaster.pid"))
		for _, p := range pidFiles {
			stopAbandoned(filepath.Dir(p))
		}
		os.RemoveAll(dir)
		f.Close()
	}
}

// stopAbandoned stops the postmaster running on dir, if any, with a fast
// shutdown, and kills it if it has not exited within stopTimeout.
func stopAbandoned(dir string) {
	pf, err := readPIDFile(dir)
	if err != nil || !processAlive(pf.pid) {
		return
	}
	syscall.Kill(pf.pid, syscall.SIGINT)
	for deadline := time.Now().Add(stopTimeout); time.Now().Before(deadline); time.Sleep(pollInterval) {
		if !processAlive(pf.pid) {
			return
		}
	}
	syscall.Kill(pf.pid, syscall.SIGKILL)
}
