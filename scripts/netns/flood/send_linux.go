package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// method is how frames reach the kernel.
type method string

const (
	methodSocket method = "socket" // connected UDP socket (UDP only); the kernel builds headers
	methodRaw    method = "raw"    // raw IP socket with IP_HDRINCL; we build IP and L4 headers
	methodPacket method = "packet" // AF_PACKET with PACKET_QDISC_BYPASS; we build whole frames
)

// mmsghdr is struct mmsghdr from <sys/socket.h>; Go pads it as C does.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// sender hands batches of prepared buffers to one socket with sendmmsg(2).
// x/sys/unix has no Sendmmsg wrapper, so it calls the syscall directly.
type sender struct {
	fd   int
	bufs [][]byte // per message: payload, IP packet or frame (may alias)
	l4   int      // offset of the L4 header in each buffer (raw, packet)
	iovs []unix.Iovec
	msgs []mmsghdr
	name []byte // destination sockaddr for every message, or nil if connected
}

func (s *sender) init(batch int, name []byte) {
	s.iovs = make([]unix.Iovec, batch)
	s.msgs = make([]mmsghdr, batch)
	s.name = name
	for i := range s.msgs {
		s.iovs[i].Base = &s.bufs[i][0]
		s.iovs[i].SetLen(len(s.bufs[i]))
		h := &s.msgs[i].hdr
		h.Iov = &s.iovs[i]
		h.SetIovlen(1)
		if name != nil {
			h.Name = &name[0]
			h.Namelen = uint32(len(name))
		}
	}
}

// send transmits the first n buffers and returns how many the kernel took.
func (s *sender) send(n int) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[0])), uintptr(n), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func (s *sender) close() error { return unix.Close(s.fd) }

// isTransient reports send errors that leave the socket usable: an ICMP
// error queued on a connected UDP socket (ECONNREFUSED), a full queue, a
// failed neighbour resolution, a signal.
func isTransient(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOBUFS) ||
		errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) ||
		errors.Is(err, unix.EHOSTUNREACH)
}

// genConfig is everything needed to open a sender.
type genConfig struct {
	proto  string // "udp" or "syn"
	method method
	f      flow
	route  labnet.Route
	size   int // UDP: frame bytes on the wire including the 14-byte Ethernet header
	batch  int
}

func sockaddrBytes(p unsafe.Pointer, n uintptr) []byte {
	b := make([]byte, n)
	copy(b, unsafe.Slice((*byte)(p), n))
	return b
}

func ipSockaddr(a netip.Addr) []byte {
	if a.Is4() {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		return sockaddrBytes(unsafe.Pointer(&sa), unsafe.Sizeof(sa))
	}
	sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	return sockaddrBytes(unsafe.Pointer(&sa), unsafe.Sizeof(sa))
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// newSender opens the socket for cfg and prepares cfg.batch buffers.
func newSender(cfg genConfig) (*sender, error) {
	f := cfg.f
	l4Len := synLen
	proto := uint8(protoTCP)
	if cfg.proto == "udp" {
		l4Len = cfg.size - ethLen - ipLen(f.dst)
		proto = protoUDP
	}
	// One buffer for UDP (every datagram is identical), one per message for SYN.
	nbuf := 1
	if cfg.proto == "syn" {
		nbuf = cfg.batch
	}
	s := &sender{fd: -1}
	var name []byte
	switch cfg.method {
	case methodSocket:
		if cfg.proto != "udp" {
			return nil, fmt.Errorf("--method socket: only for --proto udp")
		}
		fd, err := udpSocket(f)
		if err != nil {
			return nil, err
		}
		s.fd = fd
		buf := make([]byte, l4Len-udpLen)
		fillPayload(buf)
		for range cfg.batch {
			s.bufs = append(s.bufs, buf)
		}
	case methodRaw:
		fd, err := unix.Socket(family(f.dst), unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return nil, fmt.Errorf("raw socket: %w", err)
		}
		s.fd = fd
		s.l4 = ipLen(f.dst)
		name = ipSockaddr(f.dst)
		s.bufs = buildBufs(nbuf, cfg.batch, func(b []byte) {
			putL4(putIP(b, f, proto, l4Len), cfg.proto, f)
		}, s.l4+l4Len)
	case methodPacket:
		dstMAC, srcMAC, err := linkAddrs(cfg.route, f.dst)
		if err != nil {
			return nil, err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: receives nothing
		if err != nil {
			return nil, fmt.Errorf("packet socket: %w", err)
		}
		s.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			s.close()
			return nil, fmt.Errorf("packet socket: PACKET_QDISC_BYPASS: %w", err)
		}
		et := uint16(0x0800)
		if f.dst.Is6() {
			et = 0x86dd
		}
		sa := unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: et<<8 | et>>8, Ifindex: int32(cfg.route.Ifindex), Halen: 6}
		copy(sa.Addr[:], dstMAC)
		name = sockaddrBytes(unsafe.Pointer(&sa), unsafe.Sizeof(sa))
		s.l4 = ethLen + ipLen(f.dst)
		s.bufs = buildBufs(nbuf, cfg.batch, func(b []byte) {
			putL4(putIP(putEth(b, dstMAC, srcMAC, f.dst.Is6()), f, proto, l4Len), cfg.proto, f)
		}, s.l4+l4Len)
	default:
		return nil, fmt.Errorf("--method %q: want socket, raw or packet", cfg.method)
	}
	_ = unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	s.init(cfg.batch, name)
	return s, nil
}

func putL4(b []byte, proto string, f flow) {
	if proto == "udp" {
		putUDP(b, f, len(b)-udpLen)
		return
	}
	putSYN(b, f, 0)
}

// buildBufs returns batch buffers of size bytes, filled by fill; when
// nbuf is 1 they all alias one buffer.
func buildBufs(nbuf, batch int, fill func([]byte), size int) [][]byte {
	bufs := make([][]byte, batch)
	for i := range bufs {
		if i < nbuf {
			bufs[i] = make([]byte, size)
			fill(bufs[i])
		} else {
			bufs[i] = bufs[0]
		}
	}
	return bufs
}

func udpSocket(f flow) (int, error) {
	fd, err := unix.Socket(family(f.dst), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("udp socket: %w", err)
	}
	var local, remote unix.Sockaddr
	if f.dst.Is4() {
		local = &unix.SockaddrInet4{Port: int(f.sport)}
		remote = &unix.SockaddrInet4{Port: int(f.dport), Addr: f.dst.As4()}
	} else {
		local = &unix.SockaddrInet6{Port: int(f.sport)}
		remote = &unix.SockaddrInet6{Port: int(f.dport), Addr: f.dst.As16()}
	}
	if err := unix.Bind(fd, local); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("udp socket: bind source port %d: %w", f.sport, err)
	}
	if err := unix.Connect(fd, remote); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("udp socket: connect %s: %w", netip.AddrPortFrom(f.dst, f.dport), err)
	}
	return fd, nil
}

// linkAddrs returns the destination's MAC (from the neighbour table,
// pinging once to fill it if needed) and the egress interface's MAC.
func linkAddrs(r labnet.Route, dst netip.Addr) (dstMAC, srcMAC net.HardwareAddr, err error) {
	l, err := netlink.LinkByIndex(r.Ifindex)
	if err != nil {
		return nil, nil, fmt.Errorf("egress link %d: %w", r.Ifindex, err)
	}
	srcMAC = l.Attrs().HardwareAddr
	if len(srcMAC) != 6 {
		return nil, nil, fmt.Errorf("egress link %s: not Ethernet; use --method socket or raw", l.Attrs().Name)
	}
	const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP
	for attempt := range 2 {
		ns, err := netlink.NeighList(r.Ifindex, family(dst))
		if err != nil {
			return nil, nil, fmt.Errorf("neighbours of %s: %w", l.Attrs().Name, err)
		}
		for _, n := range ns {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == dst && n.State&usable != 0 && len(n.HardwareAddr) == 6 {
				return n.HardwareAddr, srcMAC, nil
			}
		}
		if attempt == 0 {
			p, err := labnet.NewPinger(dst)
			if err != nil {
				return nil, nil, err
			}
			_, err = p.Echo(1, 1e9)
			p.Close()
			if err != nil {
				return nil, nil, fmt.Errorf("resolve %s's MAC: %w", dst, err)
			}
		}
	}
	return nil, nil, fmt.Errorf("no neighbour entry for %s on %s", dst, l.Attrs().Name)
}
