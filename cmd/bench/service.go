package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// buildService builds the service into dir as `make build` does (static,
// trimmed, stripped) and returns the binary's path. It runs in the module
// that holds the current directory.
func buildService(ctx context.Context, dir string, stderr io.Writer) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	version := "bench"
	if out, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		version = strings.TrimSpace(string(out))
	}
	bin := filepath.Join(dir, "usersvc")
	cmd := goCommand(ctx, "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/usersvc")
	cmd.Dir = root
	cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build the service: %w", err)
	}
	return bin, nil
}

// moduleRoot returns the directory of the main module that the current
// directory is in. Returns an error outside a module.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := goCommand(ctx, "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", errors.New("build the service: run bench in the usersvc repository, or pass -service-bin")
	}
	return filepath.Dir(gomod), nil
}

// goCommand returns the go command with args. GOTOOLCHAIN defaults to auto,
// as in the Makefile: go.mod may ask for a newer Go than the one installed.
func goCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = os.Environ()
	if os.Getenv("GOTOOLCHAIN") == "" {
		cmd.Env = append(cmd.Env, "GOTOOLCHAIN=auto")
	}
	return cmd
}

// service is the running usersvc process.
type service struct {
	cmd     *exec.Cmd
	url     string // http://127.0.0.1:port
	logPath string
	token   string        // the bearer token it requires (AUTH_TOKENS)
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// startService starts bin serving on a free port of 127.0.0.1 against
// databaseURL, and returns once GET /readyz answers 200. The environment
// holds only what the service is given here, so that settings of the
// caller's environment (DB_MAX_CONNS, say) do not change the benchmark
// unseen; extra are added through -env. Its output goes to logPath.
func startService(ctx context.Context, bin, databaseURL, logPath string, extra []string) (*service, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start the service: %w", err)
	}
	defer logFile.Close() // the process has its own descriptor
	s := &service{url: "http://127.0.0.1:" + strconv.Itoa(port), logPath: logPath, token: rand.Text(), done: make(chan struct{})}
	s.cmd = exec.Command(bin, "serve")
	s.cmd.Env = append([]string{
		"DATABASE_URL=" + databaseURL,
		"HTTP_ADDR=127.0.0.1:" + strconv.Itoa(port),
		// Authentication on, as it should be in production: its cost is
		// measured too, and the service does not warn that it is off.
		"AUTH_TOKENS=" + s.token,
		// Otherwise the defaults, as operators run it: JSON logs at info,
		// one access log line per request, whose cost is measured too.
	}, extra...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = serviceProcAttr()
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the service: %w", err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(ctx, 30*time.Second); err != nil {
		s.stop()
		return nil, fmt.Errorf("start the service: %w; its log ends:\n%s", err, s.logTail())
	}
	return s, nil
}

// waitReady polls GET /readyz until it answers 200. Returns an error when
// the process exits, or ctx or the timeout ends first.
func (s *service) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/readyz", nil)
		if err != nil {
			return err
		}
		if res, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.done:
			return fmt.Errorf("the service exited: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("wait for GET /readyz to answer 200: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// memory is what /proc says of the service's memory, in bytes.
type memory struct {
	rss, hwm int64 // resident now, and at its peak
}

// memory reads the service's VmRSS and VmHWM from /proc/<pid>/status.
func (s *service) memory() (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return memory{}, fmt.Errorf("read the service's memory: %w", err)
	}
	return parseProcStatus(b)
}

// parseProcStatus returns VmRSS and VmHWM from the contents of a
// /proc/<pid>/status file. Returns an error when either is missing.
func parseProcStatus(b []byte) (memory, error) {
	var m memory
	var found int
	for line := range bytes.Lines(b) {
		key, value, ok := strings.Cut(string(line), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			return memory{}, fmt.Errorf("parse /proc status: %s: unexpected %q", key, strings.TrimSpace(value))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return memory{}, fmt.Errorf("parse /proc status: %s: %w", key, err)
		}
		if key == "VmRSS" {
			m.rss = kb << 10
		} else {
			m.hwm = kb << 10
		}
		found++
	}
	if found != 2 {
		return memory{}, errors.New("parse /proc status: no VmRSS or VmHWM")
	}
	return m, nil
}

// stop sends SIGTERM and waits for the graceful shutdown; after 20 seconds
// it kills the process. Returns an error when the service did not exit
// with status 0.
func (s *service) stop() error {
	select {
	case <-s.done:
		return fmt.Errorf("the service exited before the end: %v", s.waitErr)
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		if s.waitErr != nil {
			return fmt.Errorf("stop the service: %w", s.waitErr)
		}
		return nil
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		return errors.New("stop the service: killed after 20s")
	}
}

// exited reports whether the service has exited.
func (s *service) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// troubleLevels mark the service's JSON log lines that are trouble (a 5xx,
// a database that does not answer) worth a look.
var troubleLevels = [][]byte{[]byte(`"level":"WARN"`), []byte(`"level":"ERROR"`)}

// trouble returns how many lines the service logged at warn or above, and
// the last few of them; -1 and why when the log cannot be read. It reads
// the log a line at a time: a soak's access log runs to hundreds of MiB.
func (s *service) trouble() (int, string) {
	f, err := os.Open(s.logPath)
	if err != nil {
		return -1, fmt.Sprintf("(read the service's log: %v)", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	var n int
	var last [][]byte
	for {
		line, err := r.ReadBytes('\n')
		for _, level := range troubleLevels {
			if bytes.Contains(line, level) {
				n++
				if last = append(last, line); len(last) > 5 {
					last = last[1:]
				}
				break
			}
		}
		if err == io.EOF {
			return n, string(bytes.Join(last, nil))
		}
		if err != nil {
			return -1, fmt.Sprintf("(read the service's log: %v)", err)
		}
	}
}

// logTail returns the end of the service's log.
func (s *service) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(read the service's log: %v)", err)
	}
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}
