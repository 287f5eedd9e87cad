//go:build (ha || partition) && linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// lan is a private network for the fault tests: a switch (a bridge in a
// network namespace of its own, so that this machine's firewall never sees
// its traffic) that joins this machine, at hostIP, to hosts, each a network
// namespace with an address of its own. A host is cut off by iptables DROP
// inside its namespace: its processes keep running, and nothing answers.
// Everything is removed when the test ends.
type lan struct {
	t              *testing.T
	name, subnet   string // the prefix of every namespace and link; a.b.c of the /24
	hostIP, hostIf string
	hosts          int
}

// newLAN creates the switch and joins this machine to it. It needs root.
func newLAN(t *testing.T) *lan {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root, for network namespaces and iptables")
	}
	for _, tool := range []string{"ip", "iptables", "runuser"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing (make test-partition and make test-ha install iptables)", tool)
		}
	}
	pid := os.Getpid()
	n := &lan{t: t, name: fmt.Sprintf("uv%d", pid), subnet: fmt.Sprintf("10.213.%d", pid%250)}
	n.hostIP, n.hostIf = n.subnet+".1", n.name+"h"
	sw := n.name + "-sw"
	sh(t, "ip", "netns", "add", sw)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", sw).Run() })
	sh(t, "ip", "-n", sw, "link", "add", "name", "sw0", "type", "bridge")
	sh(t, "ip", "-n", sw, "link", "set", "sw0", "up")
	n.plug(n.hostIf, "")
	sh(t, "ip", "addr", "add", n.hostIP+"/24", "dev", n.hostIf)
	sh(t, "ip", "link", "set", n.hostIf, "up")
	return n
}

// plug creates a veth pair, puts one end in namespace ns ("": this
// machine's) as link, and the other on the switch's bridge.
func (n *lan) plug(link, ns string) {
	t := n.t
	t.Helper()
	sw, port := n.name+"-sw", link+"p"
	sh(t, "ip", "link", "add", link, "type", "veth", "peer", "name", port, "netns", sw)
	t.Cleanup(func() { exec.Command("ip", "link", "del", link).Run() })
	if ns != "" {
		sh(t, "ip", "link", "set", link, "netns", ns)
	}
	sh(t, "ip", "-n", sw, "link", "set", port, "master", "sw0", "up")
}

// addHost creates a host on the network and returns its namespace's name
// and its address.
func (n *lan) addHost(name string) (ns, ip string) {
	n.t.Helper()
	n.hosts++
	ns, ip = n.name+"-"+name, fmt.Sprintf("%s.%d", n.subnet, n.hosts+1)
	sh(n.t, "ip", "netns", "add", ns)
	n.t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	link := fmt.Sprintf("%sn%d", n.name, n.hosts)
	n.plug(link, ns)
	sh(n.t, "ip", "-n", ns, "addr", "add", ip+"/24", "dev", link)
	sh(n.t, "ip", "-n", ns, "link", "set", link, "up")
	sh(n.t, "ip", "-n", ns, "link", "set", "lo", "up")
	return ns, ip
}

// cut drops every packet to (INPUT) or from (OUTPUT) host namespace ns
// but its loopback's, in the chains given; heal lets them through again.
func (n *lan) cut(ns string, chains ...string)  { n.iptables(ns, "-A", chains) }
func (n *lan) heal(ns string, chains ...string) { n.iptables(ns, "-D", chains) }

func (n *lan) iptables(ns, op string, chains []string) {
	n.t.Helper()
	for _, chain := range chains {
		dir := map[string]string{"INPUT": "-i", "OUTPUT": "-o"}[chain]
		sh(n.t, "ip", "netns", "exec", ns, "iptables", op, chain, "!", dir, "lo", "-j", "DROP")
	}
}

// in runs f on a thread in namespace ns, so that the processes it starts
// and the sockets it opens are there.
func in(ns string, f func() error) error {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	ferr := f()
	// A thread that cannot go back stays locked, and ends with its goroutine.
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
		runtime.UnlockOSThread()
	}
	return ferr
}

// dialIn returns a pgx DialFunc whose sockets are in namespace ns: from
// there a host cut off by cut is still reached over its loopback.
func dialIn(ns string) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = in(ns, func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(s)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}
