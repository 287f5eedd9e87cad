package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"usersvc/internal/pgtest"
)

// TestSignalsStopGracefully serves with the real binary and checks that
// SIGTERM and SIGINT each end it with status 0.
func TestSignalsStopGracefully(t *testing.T) {
	bin := usersvcBinary(t)
	databaseURL := pgtest.NewURL(t)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			addr := pgtest.FreeAddr(t)
			var logs syncBuffer
			cmd := exec.Command(bin, "serve")
			cmd.Env = append(os.Environ(), "DATABASE_URL="+databaseURL, "HTTP_ADDR="+addr, "SHUTDOWN_TIMEOUT=10s", "LOG_FORMAT=json")
			cmd.Stdout, cmd.Stderr = &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() { cmd.Process.Kill() })

			waitFor(t, "http://"+addr+"/readyz", 10*time.Second, exited)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("usersvc after %v: %v, want exit status 0; log:\n%s", sig, err, logs.String())
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("usersvc still running 15s after %v", sig)
			}
			if !strings.Contains(logs.String(), `"msg":"stopped"`) {
				t.Errorf("log after %v lacks the stopped line:\n%s", sig, logs.String())
			}
		})
	}
}
