package pglocal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestScratch makes a scratch directory, then leaves one behind as a dead
// process would, with a server still running in it: the next StartScratch
// stops that server and removes the directory, and leaves the live one
// alone; its own server's Stop removes its directory.
func TestScratch(t *testing.T) {
	prefix := fmt.Sprintf("pglocal-scratch-test-%d-", os.Getpid())
	live, err := newScratch(ScratchDir(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer live.remove()
	if fi, err := os.Stat(filepath.Join(live.dir, scratchLock)); err != nil || fi.IsDir() {
		t.Fatalf("new scratch directory has no lock file: %v", err)
	}

	// An abandoned directory: its lock file is held by no one.
	abandoned, err := os.MkdirTemp(ScratchDir(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(abandoned)
	if err := os.Chmod(abandoned, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(abandoned, scratchLock), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	server, err := Start(t.Context(), Options{Dir: filepath.Join(abandoned, "data"), Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Stop() // should the reaper fail

	next, err := StartScratch(t.Context(), "", prefix, Options{Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Stop()
	if _, err := os.Stat(abandoned); !os.IsNotExist(err) {
		t.Errorf("the abandoned directory is still there (%v)", err)
	}
	for deadline := time.Now().Add(5 * time.Second); !errors.Is(syscall.Kill(server.pid, 0), syscall.ESRCH); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Error("the server in the abandoned directory still runs")
			break
		}
	}
	if _, err := os.Stat(live.dir); err != nil {
		t.Errorf("the live directory is gone: %v", err)
	}

	nextDir := filepath.Dir(next.Dir())
	if err := next.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(nextDir); !os.IsNotExist(err) {
		t.Errorf("Stop left StartScratch's directory (%v)", err)
	}
	if err := live.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(live.dir); !os.IsNotExist(err) {
		t.Errorf("remove left the directory (%v)", err)
	}
}
