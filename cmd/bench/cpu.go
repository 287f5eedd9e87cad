package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of /proc's CPU times (USER_HZ), 100 per second on
// every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// cpuSample is where the CPU time went during a run: the whole machine's
// busy time, the service's, and the load generator's (wrk, pgbench or the
// driver). What is left, machine - service - client, is PostgreSQL's plus
// whatever else ran: the figures say how a run spent the cores, which is
// what bounds every ratio on a machine that the load generator, the
// service and the database share.
type cpuSample struct {
	machine, service, client time.Duration
}

// rest returns the CPU time neither the service nor the client used.
func (c cpuSample) rest() time.Duration { return max(0, c.machine-c.service-c.client) }

// perOp returns d per operation in microseconds.
func perOp(d time.Duration, ops int64) float64 {
	if ops <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(ops)
}

// machineBusy returns the CPU time all cores have spent on anything but
// idling and waiting for I/O since boot, from /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseProcStat(b)
}

// parseProcStat returns the busy time of /proc/stat's "cpu" line: user,
// nice, system, irq, softirq and steal.
func parseProcStat(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // idle (4) and iowait (5) left out
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		busy += n
	}
	return time.Duration(busy) * clockTick, nil
}

// processCPU returns the user and system time process pid has spent, from
// /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parsePidStat(b)
}

// parsePidStat returns utime + stime of a /proc/<pid>/stat file. The
// command name, in parentheses, may hold spaces, so fields count from the
// last ')'.
func parsePidStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/<pid>/stat: no command name in %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state (3), ..., utime (14) and stime (15).
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/<pid>/stat: %d fields after the name", len(f))
	}
	var t int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/<pid>/stat: %w", err)
		}
		t += n
	}
	return time.Duration(t) * clockTick, nil
}

// selfCPU returns the CPU time this process has spent, for the driver,
// which runs in it.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childCPU returns the CPU time of a child that has exited.
func childCPU(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
}
