package tcsplice

// The netns lab for the integration tests. Everything happens in network
// namespaces the test creates (named shqt-PID-SEQ-{h,v,e}), with addresses
// from 198.18.0.0/15; the root namespace is never touched. Setup uses the ip,
// bridge and tc binaries with -n, so it cannot land in the wrong namespace;
// the code under test runs on a goroutine locked to a thread that was moved
// into the lab's host namespace and is never unlocked (the runtime discards
// such a thread when its goroutine ends instead of reusing it).

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/internal/netnstest"
	"github.com/shaperd/shaperd/splice"
)

// requireLab skips unless the integration tests were asked for, and fails
// if they were but cannot run.
func requireLab(t *testing.T) {
	t.Helper()
	netnstest.Require(t, "ip", "bridge", "tc", "nft")
}

const (
	vmIP  = "198.18.0.1"
	extIP = "198.18.0.2"
	// Names inside the lab's own namespaces.
	brName   = "br0"
	portName = "vnet0" // the VM's port: a veth whose peer is eth0 in the VM namespace
	extPort  = "ext0"  // the external host's port
)

var labSeq atomic.Int32

type lab struct {
	t     *testing.T
	ns    string // the host: bridge, ports, taps
	vmNS  string // the VM
	extNS string // an external host on the same bridge
}

type labOpts struct {
	vlanFiltering bool
	// portFlags are extra `bridge link set dev vnet0` arguments.
	portFlags []string
	// staticFDB adds the VM's MAC as a static FDB entry on the port.
	staticFDB bool
}

// newLab builds the lab and moves the calling goroutine into its host
// namespace for good. Cleanup deletes the namespaces and everything in them.
func newLab(t *testing.T, o labOpts) *lab {
	t.Helper()
	requireLab(t)
	base := fmt.Sprintf("shqt-%d-%d", os.Getpid(), labSeq.Add(1))
	l := &lab{t: t, ns: base + "-h", vmNS: base + "-v", extNS: base + "-e"}
	for _, ns := range []string{l.ns, l.vmNS, l.extNS} {
		l.cmd("ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("cleanup: ip netns del %s: %v: %s", ns, err, out)
			}
		})
	}
	for _, ns := range []string{l.ns, l.vmNS, l.extNS} {
		l.cmd("ip", "-n", ns, "link", "set", "lo", "up")
	}
	if o.vlanFiltering {
		if out, err := exec.Command("ip", "-n", l.ns, "link", "add", brName, "type", "bridge", "vlan_filtering", "1").CombinedOutput(); err != nil {
			t.Skipf("kernel cannot make a vlan_filtering bridge (CONFIG_BRIDGE_VLAN_FILTERING?): %v: %s", err, out)
		}
	} else {
		l.cmd("ip", "-n", l.ns, "link", "add", brName, "type", "bridge")
	}
	l.cmd("ip", "-n", l.ns, "link", "set", brName, "up")
	for _, p := range []struct{ port, peerNS, ip string }{{portName, l.vmNS, vmIP}, {extPort, l.extNS, extIP}} {
		l.cmd("ip", "-n", l.ns, "link", "add", p.port, "type", "veth", "peer", "name", "eth0", "netns", p.peerNS)
		l.cmd("ip", "-n", l.ns, "link", "set", p.port, "master", brName)
		l.cmd("ip", "-n", l.ns, "link", "set", p.port, "up")
		l.cmd("ip", "-n", p.peerNS, "addr", "add", p.ip+"/24", "dev", "eth0")
		l.cmd("ip", "-n", p.peerNS, "link", "set", "eth0", "up")
	}
	if o.vlanFiltering {
		for _, p := range []string{portName, extPort} {
			l.cmd("bridge", "-n", l.ns, "vlan", "del", "dev", p, "vid", "1")
			l.cmd("bridge", "-n", l.ns, "vlan", "add", "dev", p, "vid", "100", "pvid", "untagged")
			l.cmd("bridge", "-n", l.ns, "vlan", "add", "dev", p, "vid", "200")
		}
	}
	if len(o.portFlags) > 0 {
		l.cmd(append([]string{"bridge", "-n", l.ns, "link", "set", "dev", portName}, o.portFlags...)...)
	}
	if o.staticFDB {
		args := []string{"bridge", "-n", l.ns, "fdb", "replace", l.mac(l.vmNS, "eth0").String(), "dev", portName, "master", "static"}
		if o.vlanFiltering {
			args = append(args, "vlan", "100")
		}
		l.cmd(args...)
	}
	enterNS(t, l.ns)
	return l
}

// enterNS locks the calling goroutine to its thread and moves the thread
// into ns. The thread is never unlocked, so it dies with the goroutine.
func enterNS(t *testing.T, ns string) {
	t.Helper()
	runtime.LockOSThread()
	if err := setNS(ns); err != nil {
		t.Fatalf("enter %s: %v", ns, err)
	}
}

func setNS(ns string) error {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return netns.Set(h)
}

// inNS runs fn on a fresh goroutine whose thread is in ns, and waits.
// Sockets fn creates stay in ns and may be used from anywhere.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := setNS(ns); err != nil {
			errc <- fmt.Errorf("enter %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// cmd runs a command and fails the test if it fails; it returns stdout.
func (l *lab) cmd(argv ...string) string {
	l.t.Helper()
	out, err := l.try(argv...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

func (l *lab) try(argv ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func (l *lab) mac(ns, dev string) net.HardwareAddr {
	l.t.Helper()
	var links []struct {
		Address string `json:"address"`
	}
	l.json(&links, "ip", "-n", ns, "-j", "link", "show", "dev", dev)
	if len(links) != 1 {
		l.t.Fatalf("no link %s in %s", dev, ns)
	}
	m, err := net.ParseMAC(links[0].Address)
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

func (l *lab) json(v any, argv ...string) {
	l.t.Helper()
	if err := json.Unmarshal([]byte(l.cmd(argv...)), v); err != nil {
		l.t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
}

// links returns the names of the links in the host namespace.
func (l *lab) links() []string {
	l.t.Helper()
	var links []struct {
		Ifname string `json:"ifname"`
	}
	l.json(&links, "ip", "-n", l.ns, "-j", "link", "show")
	var names []string
	for _, k := range links {
		names = append(names, k.Ifname)
	}
	return names
}

func (l *lab) exists(dev string) bool {
	_, err := l.try("ip", "-n", l.ns, "link", "show", "dev", dev)
	return err == nil
}

var (
	// volatileRE matches what changes on its own in `ip -d link show`: STP
	// and garbage-collection timers.
	volatileRE = regexp.MustCompile(`\b\w+_timer +[0-9.]+`)
	spacesRE   = regexp.MustCompile(` +`)
)

// snapshot lists the host namespace's links (ip -d), qdiscs, ingress
// filters, bridge ports, VLANs and static/permanent FDB entries, with
// timers and learned (dynamic) FDB entries left out, to compare before and
// after.
func (l *lab) snapshot() string {
	l.t.Helper()
	var b strings.Builder
	section := func(title, text string) {
		fmt.Fprintf(&b, "### %s\n%s\n", title, strings.TrimRight(text, "\n"))
	}
	link := volatileRE.ReplaceAllString(l.cmd("ip", "-n", l.ns, "-d", "link", "show"), "")
	section("ip -d link show", spacesRE.ReplaceAllString(link, " "))
	section("tc qdisc show", l.cmd("tc", "-n", l.ns, "qdisc", "show"))
	for _, dev := range l.links() {
		section("tc filter show dev "+dev+" ingress", l.cmd("tc", "-n", l.ns, "filter", "show", "dev", dev, "ingress"))
	}
	section("bridge -d link show", l.cmd("bridge", "-n", l.ns, "-d", "link", "show"))
	section("bridge vlan show", l.cmd("bridge", "-n", l.ns, "vlan", "show"))
	var fdb []string
	for _, line := range strings.Split(l.cmd("bridge", "-n", l.ns, "fdb", "show"), "\n") {
		if strings.Contains(line, "permanent") || strings.Contains(line, "static") {
			fdb = append(fdb, line)
		}
	}
	section("bridge fdb show (static, permanent)", strings.Join(fdb, "\n"))
	return b.String()
}

// requireSame fails with a line diff if the snapshots differ.
func requireSame(t *testing.T, what, before, after string) {
	t.Helper()
	if before == after {
		return
	}
	bl, al := strings.Split(before, "\n"), strings.Split(after, "\n")
	inB, inA := map[string]int{}, map[string]int{}
	for _, s := range bl {
		inB[s]++
	}
	for _, s := range al {
		inA[s]++
	}
	var d strings.Builder
	for _, s := range bl {
		if inA[s] == 0 {
			fmt.Fprintf(&d, "- %s\n", s)
		}
	}
	for _, s := range al {
		if inB[s] == 0 {
			fmt.Fprintf(&d, "+ %s\n", s)
		}
	}
	t.Fatalf("%s: the host namespace differs from before the splice:\n%s\nbefore:\n%s\nafter:\n%s", what, d.String(), before, after)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// ping sends count ICMP echo requests from the VM to the external host, one
// at a time, and returns how many were answered within wait each.
func (l *lab) ping(count int, wait time.Duration) int {
	l.t.Helper()
	replies := 0
	err := inNS(l.vmNS, func() error {
		c, err := net.ListenPacket("ip4:icmp", vmIP)
		if err != nil {
			return err
		}
		defer c.Close()
		id := uint16(rand.Uint32())
		dst := &net.IPAddr{IP: net.ParseIP(extIP)}
		buf := make([]byte, 1500)
		for seq := uint16(1); seq <= uint16(count); seq++ {
			if _, err := c.WriteTo(echoRequest(id, seq), dst); err != nil {
				return err
			}
			deadline := time.Now().Add(wait)
			for {
				if err := c.SetReadDeadline(deadline); err != nil {
					return err
				}
				n, from, err := c.ReadFrom(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					return err
				}
				// Echo reply (type 0) to our id and seq, from the external host.
				if n >= 8 && buf[0] == 0 && from.String() == extIP &&
					binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
					replies++
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("ping: %v", err)
	}
	return replies
}

func echoRequest(id, seq uint16) []byte {
	m := make([]byte, 64)
	m[0] = 8 // echo request
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	copy(m[8:], "shaperd tcsplice test")
	var sum uint32
	for i := 0; i < len(m); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(m[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(m[2:], ^uint16(sum))
	return m
}

// tcpEcho connects from the VM to an echo server on the external host and
// checks that size random bytes come back intact.
func (l *lab) tcpEcho(size int) error {
	var ln net.Listener
	if err := inNS(l.extNS, func() (err error) {
		ln, err = net.Listen("tcp4", extIP+":0")
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(c, c)
	}()
	var c net.Conn
	if err := inNS(l.vmNS, func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(rand.Uint32())
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echoed %d bytes differ from the %d sent", len(got), len(want))
	}
	return nil
}

// rawSock is an AF_PACKET socket on eth0 of a lab namespace, reporting VLAN
// tags the kernel moved out of the frame (PACKET_AUXDATA).
type rawSock struct {
	fd      int
	ifindex int
}

func (l *lab) rawSock(ns string) *rawSock {
	l.t.Helper()
	s := &rawSock{fd: -1}
	err := inNS(ns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		s.ifindex = ifi.Index
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		s.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	})
	if s.fd >= 0 {
		l.t.Cleanup(func() { unix.Close(s.fd) })
	}
	if err != nil {
		l.t.Fatalf("raw socket in %s: %v", ns, err)
	}
	return s
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

const probeType = 0x88b5 // IEEE local experimental EtherType

// sendTagged sends a broadcast frame tagged with vid, carrying marker.
func (s *rawSock) sendTagged(src net.HardwareAddr, vid uint16, marker string) error {
	f := make([]byte, 0, 64)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, src...)
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_8021Q)
	f = binary.BigEndian.AppendUint16(f, vid)
	f = binary.BigEndian.AppendUint16(f, probeType)
	f = append(f, marker...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return unix.Sendto(s.fd, f, 0, &unix.SockaddrLinklayer{Ifindex: s.ifindex, Protocol: htons(unix.ETH_P_8021Q)})
}

// recvTagged waits up to wait for the frame carrying marker and returns its
// VLAN ID, whether the kernel stripped the tag into metadata or not; ok is
// false if no such frame came.
func (s *rawSock) recvTagged(marker string, wait time.Duration) (vid uint16, ok bool) {
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		n, oobn, _, _, err := unix.Recvmsg(s.fd, buf, oob, 0)
		if err != nil {
			continue // EAGAIN on the receive timeout, EINTR
		}
		f := buf[:n]
		if !bytes.Contains(f, []byte(marker)) {
			continue
		}
		if len(f) >= 16 && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_8021Q {
			return binary.BigEndian.Uint16(f[14:]) & 0xfff, true
		}
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return 0, true
		}
		for _, c := range cmsgs {
			if c.Header.Level == unix.SOL_PACKET && c.Header.Type == unix.PACKET_AUXDATA && len(c.Data) >= int(sizeofAuxdata) {
				var aux unix.TpacketAuxdata
				binary.Read(bytes.NewReader(c.Data), binary.NativeEndian, &aux)
				if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
					return aux.Vlan_tci & 0xfff, true
				}
			}
		}
		return 0, true
	}
	return 0, false
}

const sizeofAuxdata = 20 // sizeof(struct tpacket_auxdata)

// forwarder is the tiny in-test forwarder: two goroutines copying frames
// between the taps, opened the way shaperd's owner opens them: it takes
// the files that created them from the splice (forward.TapQueues, which
// turns the carrier on), with offloads, one queue each.
type forwarder struct {
	vm, net forward.Device
	wg      sync.WaitGroup
	toNet   atomic.Int64 // frames from the VM written into netTap
	toVM    atomic.Int64 // frames to the VM written into vmTap
}

// startForwarder must run on the goroutine that is in the lab's namespace.
func startForwarder(t *testing.T, sp splice.Splice) *forwarder {
	t.Helper()
	h, ok := sp.(splice.TapHolder)
	if !ok {
		t.Fatalf("a %T holds no tap files", sp)
	}
	open := func(name string) forward.Device {
		f := h.TakeTap(name)
		if f == nil {
			t.Fatalf("the splice holds no file of %s", name)
		}
		ds, err := forward.TapQueues(f, name, 1, true)
		if err != nil {
			t.Fatalf("take %s: %v", name, err)
		}
		return ds[0]
	}
	f := &forwarder{vm: open(sp.VMTap()), net: open(sp.NetTap())}
	pump := func(dst, src forward.Device, n *atomic.Int64) {
		defer f.wg.Done()
		bufs, sizes := [][]byte{make([]byte, forward.VnetHdrLen+forward.MaxFrameBuffer)}, make([]int, 1)
		out := make([][]byte, 1)
		for {
			k, err := src.Read(bufs, sizes, forward.VnetHdrLen)
			if err != nil {
				return
			}
			if k == 0 {
				continue
			}
			out[0] = bufs[0][:forward.VnetHdrLen+sizes[0]]
			if _, err := dst.Write(out, forward.VnetHdrLen); err != nil && errors.Is(err, os.ErrClosed) {
				return
			}
			n.Add(1)
		}
	}
	f.wg.Add(2)
	go pump(f.net, f.vm, &f.toNet)
	go pump(f.vm, f.net, &f.toVM)
	return f
}

// stop closes the taps' file descriptors and waits for both goroutines.
func (f *forwarder) stop() {
	f.vm.Close()
	f.net.Close()
	f.wg.Wait()
}
