package learn

// A netns test: run as root with SHAPERD_NETNS=1, holding the lab lock:
//
//	SHAPERD_NETNS=1 flock /tmp/shaperd-netns.lock go test -count=1 -v ./guard/learn/
//
// Everything happens in namespaces the test creates (shgl-PID-N-{h,v}),
// with IPv4 addresses from 198.18.0.0/15 and IPv6 link-local addresses.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/internal/netnstest"
)

var seq atomic.Int32

type lab struct {
	t        *testing.T
	host, vm string // namespace names
	h        *netlink.Handle
	hostNS   netns.NsHandle
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newLab makes a host namespace with bridge br0 (198.18.7.1/24) and port
// vnet0, whose veth peer eth0 is the VM (198.18.7.2/24) in its own
// namespace.
func newLab(t *testing.T) *lab {
	t.Helper()
	netnstest.Require(t, "ip")
	base := fmt.Sprintf("shgl-%d-%d", os.Getpid(), seq.Add(1))
	l := &lab{t: t, host: base + "-h", vm: base + "-v"}
	for _, ns := range []string{l.host, l.vm} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("cleanup: ip netns del %s: %v: %s", ns, err, out)
			}
		})
	}
	for _, ns := range []string{l.host, l.vm} {
		// No duplicate address detection: link-local addresses are usable
		// as soon as the links are up.
		run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	run(t, "ip", "-n", l.host, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", l.host, "addr", "add", "198.18.7.1/24", "dev", "br0")
	run(t, "ip", "-n", l.host, "link", "add", "vnet0", "type", "veth", "peer", "name", "eth0", "netns", l.vm)
	run(t, "ip", "-n", l.host, "link", "set", "vnet0", "master", "br0")
	run(t, "ip", "-n", l.vm, "addr", "add", "198.18.7.2/24", "dev", "eth0")
	run(t, "ip", "-n", l.host, "link", "add", "lonely0", "type", "veth", "peer", "name", "lonely1")
	for _, x := range [][]string{{l.host, "br0"}, {l.host, "vnet0"}, {l.host, "lonely0"}, {l.vm, "eth0"}, {l.vm, "lo"}} {
		run(t, "ip", "-n", x[0], "link", "set", x[1], "up")
	}
	var err error
	if l.hostNS, err = netns.GetFromName(l.host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.hostNS.Close() })
	if l.h, err = netlink.NewHandleAt(l.hostNS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.h.Close)
	return l
}

// vmMAC returns the MAC of the VM's interface.
func (l *lab) vmMAC() net.HardwareAddr {
	out := run(l.t, "ip", "-n", l.vm, "-br", "link", "show", "eth0")
	m, err := net.ParseMAC(strings.Fields(out)[2])
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

// sendFromHost sends one UDP datagram from the host namespace to addr,
// which makes the host resolve addr and the VM answer: the bridge learns
// the VM's MAC and the host its neighbour entry.
func (l *lab) sendFromHost(addr string) {
	l.t.Helper()
	errc := make(chan error, 1)
	go func() {
		// This thread enters the lab and is never unlocked: the runtime
		// discards it when the goroutine ends.
		runtime.LockOSThread()
		if err := netns.Set(l.hostNS); err != nil {
			errc <- err
			return
		}
		c, err := net.Dial("udp", net.JoinHostPort(addr, "9"))
		if err == nil {
			_, err = c.Write([]byte("hello"))
			c.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		l.t.Fatal(err)
	}
}

// waitNeigh waits until the host has a resolved neighbour entry for addr.
func (l *lab) waitNeigh(addr string) {
	l.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := run(l.t, "ip", "-n", l.host, "neigh", "show", addr)
		if strings.Contains(out, "lladdr") {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("no neighbour entry for %s: %q", addr, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFromBridgeLearnsTheVM(t *testing.T) {
	l := newLab(t)
	mac := l.vmMAC()
	ll := guard.LinkLocal([6]byte(mac))
	l.sendFromHost("198.18.7.2")
	l.waitNeigh("198.18.7.2")
	// IPv6 link-local: wait for the VM's address to leave DAD, then
	// resolve it from the host.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(run(t, "ip", "-n", l.vm, "-6", "addr", "show", "dev", "eth0"), ll.String()) ||
		strings.Contains(run(t, "ip", "-n", l.vm, "-6", "addr", "show", "dev", "eth0"), "tentative") {
		if time.Now().After(deadline) {
			t.Fatal("the VM's link-local address never became usable")
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.sendFromHost(ll.String() + "%br0")
	l.waitNeigh(ll.String())

	cfg, err := FromBridge(l.h, "vnet0")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.MACs) != 1 || cfg.MACs[0].String() != mac.String() {
		t.Fatalf("MACs %v, want [%s] (the port's own address must not appear)", cfg.MACs, mac)
	}
	want := []netip.Prefix{netip.MustParsePrefix("198.18.7.2/32"), netip.PrefixFrom(ll, 128)}
	if fmt.Sprint(cfg.IPs) != fmt.Sprint(want) {
		t.Fatalf("IPs %v, want %v", cfg.IPs, want)
	}
	// What was learned makes a guard that passes the VM's own frames.
	if _, err := guard.New(cfg); err != nil {
		t.Fatalf("guard.New with the learned addresses: %v", err)
	}
}

func TestFromBridgeRefuses(t *testing.T) {
	l := newLab(t)
	if _, err := FromBridge(l.h, "lonely0"); !errors.Is(err, ErrNotBridgePort) {
		t.Fatalf("a port outside any bridge: %v", err)
	}
	if _, err := FromBridge(l.h, "nosuch0"); err == nil {
		t.Fatal("a missing port: no error")
	}
	// A VM that floods spoofed MACs fills the forwarding table of its
	// port: refuse to pin any of them.
	for i := range MaxMACs + 1 {
		run(t, "bridge", "-n", l.host, "fdb", "add", fmt.Sprintf("52:54:00:aa:00:%02x", i), "dev", "vnet0", "master", "dynamic")
	}
	if _, err := FromBridge(l.h, "vnet0"); !errors.Is(err, ErrTooMany) {
		t.Fatalf("%d MACs on the port: %v", MaxMACs+1, err)
	}
}
