package tcsplice

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/splice"
)

// Integration tests: real namespaces, taps and tc. They skip unless run as
// root with SHAPERD_NETNS=1:
//
//	SHAPERD_NETNS=1 go test -race -count=1 ./splice/...

func TestSpliceForwardRelease(t *testing.T) {
	tests := []struct {
		name string
		opts labOpts
	}{
		{"plain bridge, default port", labOpts{}},
		{"plain bridge, learning off, isolated, tuned port", labOpts{
			portFlags: []string{"learning", "off", "isolated", "on", "mcast_flood", "off", "mcast_to_unicast", "on",
				"cost", "42", "priority", "7", "hairpin", "on", "neigh_suppress", "on"},
			staticFDB: true,
		}},
		{"vlan_filtering bridge, vlan 100 pvid untagged + 200 tagged, learning off, isolated", labOpts{
			vlanFiltering: true,
			portFlags:     []string{"learning", "off", "isolated", "on"},
			staticFDB:     true,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLab(t, tt.opts)
			if n := l.ping(3, time.Second); n == 0 {
				t.Fatal("the lab is broken: no ping reply before splicing")
			}
			before := l.snapshot()
			portBefore := l.brLink(portName)
			vlansBefore := l.vlans(portName)
			filesBefore := tunFiles(t)

			b := New(testLogger(t))
			sp, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}})
			if err != nil {
				t.Fatalf("Splice: %v", err)
			}
			vmTap, netTap := splice.TapNames(portName)
			if sp.Port() != portName || sp.Backend() != "tc" || sp.VMTap() != vmTap || sp.NetTap() != netTap {
				t.Errorf("splice names: port %q backend %q vm %q net %q", sp.Port(), sp.Backend(), sp.VMTap(), sp.NetTap())
			}
			if w := sp.Warnings(); len(w) > 0 {
				t.Errorf("unexpected warnings: %q", w)
			}

			// The port left the bridge; netTap took its place with its settings.
			if m := l.master(portName); m != "" {
				t.Errorf("%s still has master %q", portName, m)
			}
			if m := l.master(netTap); m != brName {
				t.Errorf("%s has master %q, want %s", netTap, m, brName)
			}
			if got := l.brLink(netTap); !reflect.DeepEqual(got, portBefore) {
				t.Errorf("bridge port settings of %s:\n got %v\nwant %v (those of %s before)", netTap, got, portBefore, portName)
			}
			if got := l.vlans(netTap); !reflect.DeepEqual(got, vlansBefore) {
				t.Errorf("vlans of %s: got %v, want %v", netTap, got, vlansBefore)
			}
			if l.mac(l.ns, netTap).String() != l.mac(l.ns, portName).String() {
				t.Errorf("%s does not wear the port's mac", netTap)
			}
			if tt.opts.staticFDB {
				fdb := l.cmd("bridge", "-n", l.ns, "fdb", "show", "dev", netTap)
				if !strings.Contains(fdb, l.mac(l.vmNS, "eth0").String()+" master "+brName+" static") {
					t.Errorf("static fdb entry not copied to %s:\n%s", netTap, fdb)
				}
			}
			// The taps: persistent IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, txqueuelen
			// 10000, the port's MTU, no carrier until the forwarder takes them.
			for _, tap := range []string{vmTap, netTap} {
				d := l.cmd("ip", "-n", l.ns, "-d", "link", "show", "dev", tap)
				for _, want := range []string{"NO-CARRIER", "mtu 1500 ", "qlen 10000", "tun type tap pi off vnet_hdr on persist on", "alias shaperd splice of " + portName} {
					if !strings.Contains(d, want) {
						t.Errorf("%s lacks %q:\n%s", tap, want, d)
					}
				}
				if strings.Contains(d, "multi_queue") {
					t.Errorf("%s is multi-queue:\n%s", tap, d)
				}
				// 0x5802 = IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (what the forwarder
				// attaches with: it opens a tc splice's taps with offloads) +
				// IFF_PERSIST; no IFF_TUN_EXCL, MULTI_QUEUE.
				if fl := strings.TrimSpace(l.cmd("ip", "netns", "exec", l.ns, "cat", "/sys/class/net/"+tap+"/tun_flags")); fl != "0x5802" {
					t.Errorf("%s tun_flags = %s, want 0x5802", tap, fl)
				}
				if v := strings.TrimSpace(l.cmd("ip", "netns", "exec", l.ns, "cat", "/proc/sys/net/ipv6/conf/"+tap+"/disable_ipv6")); v != "1" {
					t.Errorf("%s disable_ipv6 = %s, want 1", tap, v)
				}
			}
			// The redirects: the kernel half steers the port's frames to
			// the taps, a match-all redirect sends the VM tap's to the port.
			for _, c := range []struct{ dev, to string }{{portName, vmTap}, {vmTap, portName}} {
				q := l.cmd("tc", "-n", l.ns, "qdisc", "show", "dev", c.dev)
				if !strings.Contains(q, "qdisc ingress ffff:") {
					t.Errorf("no ingress qdisc on %s:\n%s", c.dev, q)
				}
				f := l.cmd("tc", "-n", l.ns, "filter", "show", "dev", c.dev, "ingress")
				if c.dev == portName {
					if !strings.Contains(f, "protocol all") || !strings.Contains(f, "bpf chain 0 handle 0x1 shq_tc_port direct-action") {
						t.Errorf("no steering filter (the kernel half) on %s:\n%s", c.dev, f)
					}
					continue
				}
				if !strings.Contains(f, "protocol all") || !strings.Contains(f, "match 00000000/00000000 at 0") ||
					!strings.Contains(f, "mirred (Egress Redirect to device "+c.to+") stolen") {
					t.Errorf("no match-all redirect to %s on %s:\n%s", c.to, c.dev, f)
				}
			}

			// Without a forwarder the VM is cut off: proof the redirect is in the way.
			if n := l.ping(1, 500*time.Millisecond); n != 0 {
				t.Errorf("ping answered with no forwarder attached: the port is not spliced")
			}

			fwd := startForwarder(t, sp)
			if f := sp.(splice.TapHolder).TakeTap(vmTap); f != nil {
				t.Errorf("the VM tap's file was handed over twice")
			}
			if n := l.ping(5, 2*time.Second); n < 4 {
				t.Errorf("ping through the splice: %d of 5 answered", n)
			}
			if err := l.tcpEcho(1 << 20); err != nil {
				t.Errorf("tcp through the splice: %v", err)
			}
			// An 802.1Q-tagged frame keeps its tag through both taps, both ways.
			vmSock, extSock := l.rawSock(l.vmNS), l.rawSock(l.extNS)
			for _, dir := range []struct {
				name     string
				from, to *rawSock
				src      string
			}{{"vm to ext", vmSock, extSock, l.vmNS}, {"ext to vm", extSock, vmSock, l.extNS}} {
				marker := fmt.Sprintf("shaperd-probe-%s-%d", strings.ReplaceAll(dir.name, " ", ""), time.Now().UnixNano())
				if err := dir.from.sendTagged(l.mac(dir.src, "eth0"), 200, marker); err != nil {
					t.Fatalf("%s: send tagged frame: %v", dir.name, err)
				}
				if vid, ok := dir.to.recvTagged(marker, 3*time.Second); !ok || vid != 200 {
					t.Errorf("%s: tagged frame (vid 200) arrived=%v with vid %d", dir.name, ok, vid)
				}
			}
			fwd.stop()
			if fwd.toNet.Load() == 0 || fwd.toVM.Load() == 0 {
				t.Errorf("forwarder saw %d frames from the VM and %d to it; traffic bypassed the taps", fwd.toNet.Load(), fwd.toVM.Load())
			}
			// The taps outlive the forwarder (Persist: true).
			if !l.exists(vmTap) || !l.exists(netTap) {
				t.Fatal("the taps did not survive the forwarder closing them")
			}

			if err := sp.Release(); err != nil {
				t.Fatalf("Release: %v", err)
			}
			requireSame(t, "after Release", before, l.snapshot())
			if err := sp.Release(); err != nil {
				t.Fatalf("second Release: %v", err)
			}
			if l.exists(vmTap) || l.exists(netTap) {
				t.Error("taps left after Release")
			}
			// The priority tap's file, never taken, went with its tap.
			if n := tunFiles(t); n != filesBefore {
				t.Errorf("%d tap files open after Release, %d before Splice", n, filesBefore)
			}
			if n := l.ping(3, time.Second); n == 0 {
				t.Error("no ping reply after Release")
			}
		})
	}
}

// tunFiles counts this process's open files of /dev/net/tun.
func tunFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if p, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && p == "/dev/net/tun" {
			n++
		}
	}
	return n
}

// TestRollback fails Splice after each of its steps and checks that nothing
// is left behind.
func TestRollback(t *testing.T) {
	testRollback(t, false)
}

// TestRollbackFailOpen: the same with --fail open, whose fallback pair
// (and its filter) the rollback must remove too.
func TestRollbackFailOpen(t *testing.T) {
	testRollback(t, true)
}

func testRollback(t *testing.T, failOpen bool) {
	steps := []string{stepVMTap, stepNetTap, stepJoin, stepVLANs, stepAttrs, stepFDB, stepFallback,
		stepVMRedirect, stepPrioTap, stepQdisc, stepSteer, stepLeave, stepVerify, stepRecord}
	errInjected := errors.New("injected failure")
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			l := newLab(t, labOpts{portFlags: []string{"learning", "off", "isolated", "on"}, staticFDB: true})
			before := l.snapshot()
			filesBefore := tunFiles(t)
			b := New(testLogger(t))
			var seen []string
			b.hook = func(s string) error {
				seen = append(seen, s)
				if s == step {
					return errInjected
				}
				return nil
			}
			sp, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}, FailOpen: failOpen})
			if !errors.Is(err, errInjected) || sp != nil {
				t.Fatalf("Splice = %v, %v; want the injected error", sp, err)
			}
			if seen[len(seen)-1] != step {
				t.Fatalf("steps run: %v", seen)
			}
			requireSame(t, "after rollback", before, l.snapshot())
			if n := tunFiles(t); n != filesBefore {
				t.Errorf("%d tap files open after the rollback, %d before", n, filesBefore)
			}
			if n := l.ping(3, time.Second); n == 0 {
				t.Error("no ping reply after rollback")
			}
		})
	}
}

// TestRollbackForeignTap makes the creation of netTap fail for real: the
// name is taken (by a veth) between validation and creation. The rollback
// must delete vmTap but not the veth, which is not the splice's.
func TestRollbackForeignTap(t *testing.T) {
	l := newLab(t, labOpts{})
	before := l.snapshot()
	_, netTap := splice.TapNames(portName)
	b := New(testLogger(t))
	b.hook = func(step string) error {
		if step == stepVMTap {
			l.cmd("ip", "-n", l.ns, "link", "add", netTap, "type", "veth", "peer", "name", "shqtpeer")
		}
		return nil
	}
	if _, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}}); err == nil || !strings.Contains(err.Error(), stepNetTap) {
		t.Fatalf("Splice: %v; want a failure to create %s", err, netTap)
	}
	if !l.exists(netTap) {
		t.Fatalf("rollback deleted %s, which was not the splice's", netTap)
	}
	l.cmd("ip", "-n", l.ns, "link", "del", netTap)
	requireSame(t, "after rollback", before, l.snapshot())
}

// TestNameTaken: a link already holding a tap name is ErrSpliced, found
// before any change.
func TestNameTaken(t *testing.T) {
	l := newLab(t, labOpts{})
	_, netTap := splice.TapNames(portName)
	l.cmd("ip", "-n", l.ns, "link", "add", netTap, "type", "veth", "peer", "name", "shqtpeer")
	before := l.snapshot()
	b := New(testLogger(t))
	if _, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}}); !errors.Is(err, splice.ErrSpliced) {
		t.Fatalf("Splice: %v; want ErrSpliced", err)
	}
	requireSame(t, "after refused Splice", before, l.snapshot())
}

func TestPortVanishes(t *testing.T) {
	l := newLab(t, labOpts{})
	b := New(testLogger(t))
	sp, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}})
	if err != nil {
		t.Fatalf("Splice: %v", err)
	}
	l.cmd("ip", "-n", l.ns, "link", "del", portName) // the VM is destroyed
	if err := sp.Release(); err != nil {
		t.Fatalf("Release after the port vanished: %v", err)
	}
	if err := sp.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if got, want := l.links(), []string{"lo", brName, extPort}; !reflect.DeepEqual(got, want) {
		t.Errorf("links left: %v, want %v", got, want)
	}
}

// TestPortRecreated: a new link with the port's name (a restarted VM) is not
// the spliced port; Release must leave it alone and remove the taps.
func TestPortRecreated(t *testing.T) {
	l := newLab(t, labOpts{})
	b := New(testLogger(t))
	sp, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}})
	if err != nil {
		t.Fatalf("Splice: %v", err)
	}
	l.cmd("ip", "-n", l.ns, "link", "del", portName)
	l.cmd("ip", "-n", l.ns, "link", "add", portName, "type", "veth", "peer", "name", "eth0", "netns", l.vmNS)
	if err := sp.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if m := l.master(portName); m != "" {
		t.Errorf("Release enslaved the new %s to %s", portName, m)
	}
	vmTap, netTap := splice.TapNames(portName)
	if l.exists(vmTap) || l.exists(netTap) {
		t.Error("taps left after Release")
	}
}

func TestErrors(t *testing.T) {
	l := newLab(t, labOpts{})
	l.cmd("ip", "-n", l.ns, "link", "add", "routed0", "type", "veth", "peer", "name", "routed1")
	b := New(testLogger(t))

	if ok, err := b.Handles(portName); !ok || err != nil {
		t.Errorf("Handles(%s) = %v, %v; want true", portName, ok, err)
	}
	for _, c := range []struct {
		port string
		want error
	}{
		{"nosuchport", splice.ErrNoPort},
		{"routed0", splice.ErrNotBridged},
		{brName, splice.ErrNotBridged},
	} {
		if ok, err := b.Handles(c.port); ok || !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.port) {
			t.Errorf("Handles(%s) = %v, %v; want %v naming the port", c.port, ok, err, c.want)
		}
		if sp, err := b.Splice(c.port, splice.Options{BypassPorts: []uint16{22, 3389}}); sp != nil || !errors.Is(err, c.want) {
			t.Errorf("Splice(%s) = %v, %v; want %v", c.port, sp, err, c.want)
		}
	}

	before := l.snapshot()
	sp, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}})
	if err != nil {
		t.Fatalf("Splice: %v", err)
	}
	during := l.snapshot()
	if _, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}}); !errors.Is(err, splice.ErrSpliced) {
		t.Errorf("second Splice: %v; want ErrSpliced", err)
	}
	if ok, err := b.Handles(portName); ok || !errors.Is(err, splice.ErrSpliced) {
		t.Errorf("Handles of a spliced port = %v, %v; want ErrSpliced", ok, err)
	}
	requireSame(t, "refused second Splice changed the splice", during, l.snapshot())
	// netTap is a bridge member, but the splice's own.
	_, netTap := splice.TapNames(portName)
	if ok, err := b.Handles(netTap); ok || err == nil {
		t.Errorf("Handles(%s) of a splice tap = %v, %v; want false and an error", netTap, ok, err)
	}
	if sp, err := b.Splice(netTap, splice.Options{BypassPorts: []uint16{22, 3389}}); sp != nil || err == nil || !strings.Contains(err.Error(), "splice tap") {
		t.Errorf("Splice(%s) of a splice tap = %v, %v; want an error", netTap, sp, err)
	}
	if err := sp.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	requireSame(t, "after Release", before, l.snapshot())
}

// TestWarnings: an nftables rule naming the port and an existing ingress
// filter on it are reported; the existing qdisc and filter survive Release.
func TestWarnings(t *testing.T) {
	l := newLab(t, labOpts{})
	if _, err := l.try("ip", "netns", "exec", l.ns, "nft", "list", "ruleset"); err != nil {
		t.Fatalf("nft unusable: %v", err)
	}
	l.cmd("ip", "netns", "exec", l.ns, "nft", "add table bridge shqt; add chain bridge shqt shqtchain { type filter hook forward priority 0; }; add rule bridge shqt shqtchain iifname \""+portName+"\" counter")
	l.cmd("tc", "-n", l.ns, "qdisc", "add", "dev", portName, "ingress")
	l.cmd("tc", "-n", l.ns, "filter", "add", "dev", portName, "ingress", "pref", "10", "protocol", "ip",
		"u32", "match", "ip", "dst", "198.18.9.9/32", "flowid", ":1")
	before := l.snapshot()

	b := New(testLogger(t))
	sp, err := b.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}})
	if err != nil {
		t.Fatalf("Splice: %v", err)
	}
	w := sp.Warnings()
	if !slices.ContainsFunc(w, func(s string) bool {
		return strings.HasPrefix(s, "nft list ruleset") && strings.Contains(s, "cannot follow the frames")
	}) {
		t.Errorf("no nftables warning in %q", w)
	}
	if !slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, "tc ingress filter") }) {
		t.Errorf("no warning about the existing tc filter in %q", w)
	}
	f := l.cmd("tc", "-n", l.ns, "filter", "show", "dev", portName, "ingress")
	if !strings.Contains(f, "pref 9 bpf") || !strings.Contains(f, "pref 10 u32") {
		t.Errorf("want the steering filter at pref 9, before the existing filter at pref 10:\n%s", f)
	}
	if err := sp.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	requireSame(t, "after Release", before, l.snapshot())
}

// brLink returns `bridge -d -j link show dev` for dev without what differs
// between two ports by nature: name, index, link flags, STP state, and
// "link" (a veth's peer ifindex, resolved in the wrong namespace).
func (l *lab) brLink(dev string) map[string]any {
	l.t.Helper()
	var ports []map[string]any
	l.json(&ports, "bridge", "-n", l.ns, "-d", "-j", "link", "show", "dev", dev)
	if len(ports) != 1 {
		l.t.Fatalf("bridge link show dev %s: %d entries", dev, len(ports))
	}
	for _, k := range []string{"ifindex", "ifname", "flags", "state", "link"} {
		delete(ports[0], k)
	}
	return ports[0]
}

// vlans returns dev's entries from `bridge -j vlan show` (nil if none).
func (l *lab) vlans(dev string) []any {
	l.t.Helper()
	var all []struct {
		Ifname string `json:"ifname"`
		Vlans  []any  `json:"vlans"`
	}
	out := l.cmd("bridge", "-n", l.ns, "-j", "vlan", "show")
	if strings.TrimSpace(out) == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		l.t.Fatal(err)
	}
	for _, a := range all {
		if a.Ifname == dev {
			return a.Vlans
		}
	}
	return nil
}

func (l *lab) master(dev string) string {
	l.t.Helper()
	var links []struct {
		Master string `json:"master"`
	}
	l.json(&links, "ip", "-n", l.ns, "-j", "link", "show", "dev", dev)
	if len(links) != 1 {
		l.t.Fatalf("no link %s", dev)
	}
	return links[0].Master
}
