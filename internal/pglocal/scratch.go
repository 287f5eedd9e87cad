package pglocal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// scratchLock, in a scratch directory, is locked by the process that made
// the directory for as long as it lives.
const scratchLock = "lock"

// ScratchDir returns where throwaway data directories belong: /dev/shm when
// the machine has it, since a memory-backed disk makes initdb and the tests
// fast, else the temporary directory.
func ScratchDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// MkdirScratch creates a new directory named prefix followed by a random
// string in ScratchDir, which the user that postgres runs as may enter.
// The caller removes it. The directory stays locked until this process
// exits: should it die first, the next MkdirScratch or StartScratch with
// the same prefix stops the servers left running in the directory's
// subdirectories and removes it.
func MkdirScratch(prefix string) (string, error) {
	s, err := newScratch(ScratchDir(), prefix)
	if err != nil {
		return "", err
	}
	return s.dir, nil // its lock is released when this process exits
}

// StartScratch starts a throwaway server, as Start does, with its data in
// a new directory named prefix* under parent (ScratchDir when parent is
// empty); opts.Dir is ignored. Stop stops the server and removes the
// directory. Should this process die first, the next StartScratch or
// MkdirScratch with the same prefix stops the server and removes the
// directory. Returns Start's errors, or an error when the directory cannot
// be created.
func StartScratch(ctx context.Context, parent, prefix string, opts Options) (*Server, error) {
	if parent == "" {
		parent = ScratchDir()
	}
	sc, err := newScratch(parent, prefix)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	opts.Dir = filepath.Join(sc.dir, "data")
	srv, err := Start(ctx, opts)
	if err != nil {
		return nil, errors.Join(err, sc.remove())
	}
	srv.scratch = sc
	return srv, nil
}

// scratch is a directory for throwaway servers, locked by this process
// until remove or its death, so that a later process can tell the
// directories of dead processes from those in use.
type scratch struct {
	dir  string
	lock int // the lock file's descriptor: no finalizer closes it
}

// newScratch first removes the directories named prefix* in parent that
// this user's processes left behind when they died without cleaning up (a
// test binary killed at its timeout, a benchmark stopped with SIGKILL),
// stopping any server still running in them; then it creates a new
// directory, which the server's user may enter, and locks it.
func newScratch(parent, prefix string) (*scratch, error) {
	removeAbandoned(parent, prefix)
	dir, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// Locked before it gets its name, so that no other process ever finds
	// the directory with an unlocked lock file.
	tmp := filepath.Join(dir, scratchLock+".new")
	fd, err := syscall.Open(tmp, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o600)
	if err == nil {
		err = syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			err = os.Rename(tmp, filepath.Join(dir, scratchLock))
		}
		if err != nil {
			syscall.Close(fd)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return &scratch{dir: dir, lock: fd}, nil
}

// remove removes the directory with everything in it and releases its
// lock. A server in it must be stopped first.
func (s *scratch) remove() error {
	err := os.RemoveAll(s.dir)
	return errors.Join(err, syscall.Close(s.lock))
}

// removeAbandoned removes the directories named prefix* in parent of this
// user whose lock no process holds, after stopping the servers still
// running in them. A directory too new to have its lock file is left alone.
func removeAbandoned(parent, prefix string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, prefix+"*")) // the pattern is valid
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
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

// stopAbandoned stops the server running on the data directory dir, if
// any, as Stop does.
func stopAbandoned(dir string) {
	binDir, err := FindBinDir()
	if err != nil {
		return
	}
	cred, err := serverCredential()
	if err != nil {
		return
	}
	pid, _ := readPID(dir)
	(&Server{dir: dir, pid: pid, binDir: binDir, cred: cred}).Stop()
}
