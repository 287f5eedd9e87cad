package pglocal

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestScratch makes a scratch directory, then leaves one behind as a dead
// process would, with a "server" (a sleep) still running in it: the next
// NewScratch stops that process and removes the directory, and leaves the
// live one alone.
func TestScratch(t *testing.T) {
	prefix := fmt.Sprintf("pglocal-scratch-test-%d-", os.Getpid())
	live, err := NewScratch(prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Remove()
	if fi, err := os.Stat(filepath.Join(live.Dir(), scratchLock)); err != nil || fi.IsDir() {
		t.Fatalf("new scratch directory has no lock file: %v", err)
	}

	// An abandoned directory: its lock file is held by no one.
	abandoned, err := MkdirScratch(prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(abandoned)
	if err := os.WriteFile(filepath.Join(abandoned, scratchLock), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	server := exec.Command("sleep", "60")
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { server.Wait(); close(exited) }()
	defer server.Process.Kill()
	data := filepath.Join(abandoned, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "postmaster.pid"), fmt.Appendf(nil, "%d\n%s\n", server.Process.Pid, data), 0o600); err != nil {
		t.Fatal(err)
	}

	next, err := NewScratch(prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Remove()
	if _, err := os.Stat(abandoned); !os.IsNotExist(err) {
		t.Errorf("the abandoned directory is still there (%v)", err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("the server in the abandoned directory still runs")
	}
	if _, err := os.Stat(live.Dir()); err != nil {
		t.Errorf("the live directory is gone: %v", err)
	}
	if err := live.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(live.Dir()); !os.IsNotExist(err) {
		t.Errorf("Remove left the directory (%v)", err)
	}
}
