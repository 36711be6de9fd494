package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// forgeries are the frames sent with craft (its --kind and extra flags),
// and the guard's drop reason for each. name is what the receivers' matcher
// calls it.
var forgeries = []struct {
	name, kind, reason string
	args               []string
}{
	{"spoof-mac", "spoof-mac", "guard_mac", nil},
	{"spoof-ip", "spoof-ip", "guard_ip", nil},
	{"arp-reply", "arp-reply", "guard_arp", nil},
	{"na", "na", "guard_nd", nil},
	{"dhcp-offer", "dhcp-offer", "guard_dhcp", nil},
	{"ra-hbh", "ra-hbh", "guard_ra", nil},
	// A spoofed source in three 802.1Q tags, one more than the classifier
	// walks: the guard cannot see the source, so it must drop the frame.
	{"spoof-ip-vlan", "spoof-ip", "guard_ip", []string{"--vlan", "100,200,300"}},
}

var guardReasons = []string{"guard_mac", "guard_ip", "guard_arp", "guard_nd", "guard_dhcp", "guard_ra"}

const (
	craftSpoofMAC = "02:00:5e:00:de:ad"
	craftSpoofIP  = "198.18.0.50"
	craftDport    = 4000
	craftMarker   = "shaperd-lab-craft " // craft's UDP payloads start with it
)

// TestGuardDropsForgeries is issue 7's anti-spoofing acceptance test. VM 1
// sends, with craft, each forgery 50 times: a spoofed source MAC, a spoofed
// source IP, a forged ARP reply and neighbour advertisement claiming the
// external host's addresses, a rogue DHCP offer, a router advertisement
// behind a hop-by-hop header, and a spoofed source IP in three VLAN tags,
// all to the broadcast MAC so that every port of the bridge would see them.
// Sniffers on the external host's and VM 2's eth0 count them.
//
// Control: quarantined without --guard, every forgery arrives 50 times at
// both. With --guard (the VM's MAC and addresses given), none arrives, each
// is counted under its own drop reason in status, and at the same time a
// paced UDP flow from the VM (1000 pps) is delivered in full, IPv4 and IPv6
// pings (ARP and neighbour discovery afresh) all answer, no legitimate frame
// is dropped by the guard, and craft's own legitimate frame arrives.
func TestGuardDropsForgeries(t *testing.T) {
	l := newLab(t, "bridge")
	craft := filepath.Join(l.bin, "craft")
	if _, err := os.Stat(craft); err != nil {
		t.Fatalf("%v: build the lab tools first (make tools)", err)
	}
	vm1, vm2, ext, port := l.get("VM1_NS"), l.get("VM2_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
	vmMAC := strings.TrimSpace(l.sh(vm1, "cat /sys/class/net/eth0/address"))
	if vmMAC != l.get("VM1_MAC") {
		t.Fatalf("VM 1's eth0 has MAC %s; the lab says %s", vmMAC, l.get("VM1_MAC"))
	}
	const n = 50
	match := craftMatcher(t, vmMAC, l.get("EXT_IP"), l.get("EXT_IP6"))
	sniffers := []*sniffer{l.sniff(ext, "eth0", match), l.sniff(vm2, "eth0", match)}

	// sendAll sends every forgery n times from VM 1, to VM 2's addresses
	// (claiming the external host's), paced below the control budget
	// (200 pps, burst 20) so that ARP and ND pass it when unguarded.
	// after runs after each kind.
	sendAll := func(after func(name, reason string)) {
		for _, f := range forgeries {
			l.craft(vm1, append([]string{"--iface", "eth0", "--kind", f.kind, "--count", fmt.Sprint(n), "--interval", "10ms",
				"--dst4", l.get("VM2_IP"), "--dst6", l.get("VM2_IP6"),
				"--claim4", l.get("EXT_IP"), "--claim6", l.get("EXT_IP6"),
				"--spoof-mac", craftSpoofMAC, "--spoof-ip", craftSpoofIP, "--dport", fmt.Sprint(craftDport)}, f.args...)...)
			if after != nil {
				after(f.name, f.reason)
			}
		}
	}

	d := l.startDaemon()
	before := l.snapshot()

	// The control: the same forwarder without the guard lets every
	// forgery through, so the sniffers can see them.
	d.must("quarantine", port, "--pps", "100000")
	sendAll(nil)
	for _, s := range sniffers {
		for _, f := range forgeries {
			if got := s.waitFor(f.name, n, 3*time.Second); got != n {
				t.Errorf("without the guard, %s received %d of %d %s frames, want all: the test cannot see forgeries", s.where, got, n, f.name)
			}
		}
	}
	q := d.status(port)
	for _, r := range guardReasons {
		if c := dropsOf(q, "from_vm", r); c != 0 {
			t.Errorf("without --guard, status counts %d %s drops", c, r)
		}
	}
	t.Logf("without the guard: every forgery arrived %d times at %s and at %s", n, sniffers[0].where, sniffers[1].where)
	d.must("release", port)
	if t.Failed() {
		return
	}

	// The guard.
	base := make([]map[string]int, len(sniffers))
	for i, s := range sniffers {
		base[i] = s.snapshot()
	}
	d.must("quarantine", port, "--guard", "--guard-mac", vmMAC, "--guard-ip", l.get("VM1_IP")+","+l.get("VM1_IP6"), "--pps", "100000")
	if q := d.status(port); q.State != "active" {
		t.Fatalf("quarantine --guard: state %q, want active", q.State)
	}

	// Legitimate traffic from the same VM meanwhile: a paced UDP flow to
	// a sink, and pings after forgetting the neighbours, so that ARP and
	// neighbour discovery go through the guard again.
	l.sh(vm1, "ip neigh flush dev eth0")
	sink := l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "0", "--json")
	l.waitListening(ext, 9)
	flood := l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "1000", "--duration", "6s", "--json")
	ping4 := l.bg(vm1, "probe", "ping", "--dst", l.get("EXT_IP"), "--count", "50", "--interval", "100ms", "--timeout", "300ms", "--json")
	ping6 := l.bg(vm1, "probe", "ping", "--dst", l.get("EXT_IP6"), "--count", "50", "--interval", "100ms", "--timeout", "300ms", "--json")

	drops := func() map[string]uint64 {
		q := d.status(port)
		m := map[string]uint64{}
		for _, r := range guardReasons {
			m[r] = dropsOf(q, "from_vm", r)
		}
		return m
	}
	prev := drops()
	sendAll(func(name, reason string) {
		// Wait until the forwarder has judged all n, then check that
		// this kind and only this kind moved, by exactly n.
		var cur map[string]uint64
		deadline := time.Now().Add(3 * time.Second)
		for {
			cur = drops()
			if cur[reason]-prev[reason] >= n || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, r := range guardReasons {
			want := uint64(0)
			if r == reason {
				want = n
			}
			if got := cur[r] - prev[r]; got != want {
				t.Errorf("after %d %s frames: status counts %d more %s drops, want %d", n, name, got, r, want)
			}
		}
		prev = cur
	})
	// craft's legitimate frame arrives: the sniffers are live, and the
	// guard tells a forgery from a crafted frame.
	l.craft(vm1, "--iface", "eth0", "--kind", "udp", "--count", fmt.Sprint(n), "--interval", "1ms",
		"--dst4", l.get("VM2_IP"), "--dport", fmt.Sprint(craftDport))
	for i, s := range sniffers {
		if got := s.waitFor("udp", base[i]["udp"]+n, 3*time.Second) - base[i]["udp"]; got != n {
			t.Errorf("with the guard, %s received %d of %d of craft's legitimate UDP frames, want all", s.where, got, n)
		}
	}

	if err := flood.wait(t, 20*time.Second); err != nil {
		t.Errorf("flood: %v\n%s", err, flood.err)
	}
	for _, p := range []*proc{ping4, ping6} {
		if err := p.wait(t, 30*time.Second); err != nil {
			t.Errorf("%s: %v\n%s%s", p.cmd.Args, err, p.out, p.err)
		}
	}
	time.Sleep(300 * time.Millisecond) // the last flood frames reach the sink
	sink.cmd.Process.Signal(interrupt)
	if err := sink.wait(t, 10*time.Second); err != nil {
		t.Errorf("sink: %v\n%s", err, sink.err)
	}
	var fl struct {
		Sent int `json:"sent"`
	}
	if err := jsonLine(flood.out.String(), &fl); err != nil {
		t.Fatal(err)
	}
	got := sinkTotal(t, sink)
	p4, p6 := ping4.summary(t), ping6.summary(t)
	t.Logf("with the guard, meanwhile: the paced UDP flow delivered %d of %d; IPv4 ping %d of %d, IPv6 ping %d of %d",
		got, fl.Sent, p4.Completed, p4.Sent, p6.Completed, p6.Sent)
	if fl.Sent < 5000 || got != fl.Sent {
		t.Errorf("legitimate UDP from the guarded VM: %d of %d delivered, want all (and at least 5000 sent)", got, fl.Sent)
	}
	if p4.Completed != 50 || p6.Completed != 50 {
		t.Errorf("pings from the guarded VM: IPv4 %d of 50, IPv6 %d of 50 answered, want all", p4.Completed, p6.Completed)
	}

	// Nothing forged arrived, anywhere; the guard dropped exactly the
	// forgeries and nothing legitimate.
	time.Sleep(200 * time.Millisecond)
	for i, s := range sniffers {
		now := s.snapshot()
		for _, f := range forgeries {
			if got := now[f.name] - base[i][f.name]; got != 0 {
				t.Errorf("with the guard, %d of %d %s frames reached %s, want 0 (expected drop reason %s)", got, n, f.name, s.where, f.reason)
			}
		}
	}
	final := drops()
	var total uint64
	for _, r := range guardReasons {
		total += final[r]
	}
	st := d.status(port).Directions.FromVM
	t.Logf("with the guard: status drops %v (total %d, want %d); from_vm passed udp %d, icmp %d, control %d",
		final, total, n*len(forgeries), st.Classes["udp"].PassedPackets, st.Classes["icmp"].PassedPackets, st.Classes["control"].PassedPackets)
	switch want := uint64(n * len(forgeries)); {
	case total > want:
		t.Errorf("the guard dropped %d frames in all, more than the %d forgeries: it dropped legitimate ones", total, want)
	case total < want:
		t.Errorf("the guard dropped %d frames in all, fewer than the %d forgeries: some passed", total, want)
	}
	for _, s := range sniffers {
		if dr := s.close(); dr != 0 {
			t.Errorf("the sniffer on %s lost %d frames: its counts cannot be trusted", s.where, dr)
		}
	}

	d.must("release", port)
	if after := l.snapshot(); after != before {
		t.Errorf("release left the host changed:\n%s", diffLines(before, after))
	}
}

// craft runs the craft tool in ns and fails the test if it fails.
func (l *lab) craft(ns string, args ...string) {
	l.t.Helper()
	out, err := inNS(ns, append([]string{filepath.Join(l.bin, "craft")}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("craft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func jsonLine(s string, v any) error {
	b := lastJSONLine(s)
	if b == nil {
		return fmt.Errorf("no JSON line in %q", s)
	}
	return json.Unmarshal(b, v)
}

// craftMatcher returns which of craft's kinds a received frame is ("" for
// anything else): forgeries by the field they forge, the legitimate udp
// kind by its payload. Only frames with VM 1's MAC (or the spoofed MAC)
// count, so the receivers' own traffic and replies never match.
func craftMatcher(t *testing.T, vmMAC, extIP, extIP6 string) func([]byte) string {
	t.Helper()
	claim4, claim6 := netip.MustParseAddr(extIP), netip.MustParseAddr(extIP6)
	spoofIP := netip.MustParseAddr(craftSpoofIP)
	return func(b []byte) string {
		pk := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
		eth, ok := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if !ok {
			return ""
		}
		switch eth.SrcMAC.String() {
		case craftSpoofMAC:
			return "spoof-mac"
		case vmMAC:
		default:
			return ""
		}
		addr := func(ip net.IP) netip.Addr { a, _ := netip.AddrFromSlice(ip); return a.Unmap() }
		if a, ok := pk.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
			if a.Operation == layers.ARPReply && addr(a.SourceProtAddress) == claim4 {
				return "arp-reply"
			}
			return ""
		}
		if na, ok := pk.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement); ok {
			if addr(na.TargetAddress) == claim6 {
				return "na"
			}
			return ""
		}
		if pk.Layer(layers.LayerTypeICMPv6RouterAdvertisement) != nil {
			return "ra-hbh"
		}
		if u, ok := pk.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
			if u.SrcPort == 67 && u.DstPort == 68 {
				return "dhcp-offer"
			}
			if ip4, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok && addr(ip4.SrcIP) == spoofIP {
				// The receiving kernel may have taken the outer tag
				// off into the socket's metadata: any tag left tells.
				if pk.Layer(layers.LayerTypeDot1Q) != nil {
					return "spoof-ip-vlan"
				}
				return "spoof-ip"
			}
			if bytes.Equal(u.Payload, []byte(craftMarker+"udp")) {
				return "udp"
			}
		}
		return ""
	}
}

// sniffer counts, by craft's kinds, the frames one interface of a lab
// namespace receives (its own outgoing frames left out), with an AF_PACKET
// socket made inside that namespace.
type sniffer struct {
	where string
	fd    int
	match func([]byte) string

	mu     sync.Mutex
	counts map[string]int

	stop   atomic.Bool
	done   chan struct{}
	err    error
	drops  uint32
	closed bool
}

func (l *lab) sniff(ns, dev string, match func([]byte) string) *sniffer {
	l.t.Helper()
	fd, err := packetSocketIn(ns, dev)
	if err != nil {
		l.t.Fatalf("sniffer on %s/%s: %v", ns, dev, err)
	}
	s := &sniffer{where: ns + "/" + dev, fd: fd, match: match, counts: map[string]int{}, done: make(chan struct{})}
	go s.loop()
	l.t.Cleanup(func() { s.close() })
	return s
}

func (s *sniffer) loop() {
	defer close(s.done)
	buf := make([]byte, 65536)
	for !s.stop.Load() {
		n, from, err := unix.Recvfrom(s.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			s.err = err
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if k := s.match(buf[:n]); k != "" {
			s.mu.Lock()
			s.counts[k]++
			s.mu.Unlock()
		}
	}
}

// snapshot returns the counts so far.
func (s *sniffer) snapshot() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		m[k] = v
	}
	return m
}

// waitFor waits up to d for the count of kind to reach want and returns it.
func (s *sniffer) waitFor(kind string, want int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		got := s.snapshot()[kind]
		if got >= want || time.Now().After(deadline) {
			time.Sleep(100 * time.Millisecond) // and no more than want
			return s.snapshot()[kind]
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// close stops the sniffer and returns how many frames its socket dropped
// (the kernel's count; nonzero means the counts are too low). It is safe to
// call twice.
func (s *sniffer) close() uint32 {
	if s.closed {
		return s.drops
	}
	s.closed = true
	s.stop.Store(true)
	<-s.done
	if st, err := unix.GetsockoptTpacketStats(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		s.drops = st.Drops
	}
	unix.Close(s.fd)
	return s.drops
}

// packetSocketIn makes an AF_PACKET socket receiving every frame of dev in
// namespace ns, with a 100 ms receive timeout. A goroutine locked to its
// thread enters the namespace, makes and binds the socket (which stays in
// that namespace), and returns before it unlocks; if it cannot return, the
// thread stays locked and dies with the goroutine (see dialIn).
func packetSocketIn(ns, dev string) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		fd, err := bindPacket(dev)
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

func bindPacket(dev string) (int, error) {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return -1, err
	}
	const all = unix.ETH_P_ALL<<8&0xff00 | unix.ETH_P_ALL>>8 // network byte order
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, all)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: all, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind to %s: %w", dev, err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	// Frames queued before the bind may come from any interface: drop them.
	for {
		if _, _, err := unix.Recvfrom(fd, make([]byte, 1), unix.MSG_DONTWAIT); err != nil {
			break
		}
	}
	return fd, nil
}
