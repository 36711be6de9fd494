package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// iface is the interface frames leave by, and its own addresses.
type iface struct {
	name     string
	index    int
	mac      net.HardwareAddr
	ip4, ip6 netip.Addr // the first lab address of each family; invalid if none
}

// lookupIface reads name's index, MAC and lab addresses in the current
// network namespace. Link-local and non-lab addresses are skipped.
func lookupIface(name string) (iface, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return iface{}, fmt.Errorf("--iface %s: %w", name, err)
	}
	ifc := iface{name: name, index: l.Attrs().Index, mac: l.Attrs().HardwareAddr}
	if len(ifc.mac) != 6 {
		return iface{}, fmt.Errorf("--iface %s: not an Ethernet interface", name)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return iface{}, fmt.Errorf("--iface %s: addresses: %w", name, err)
	}
	for _, a := range addrs {
		ad, ok := netip.AddrFromSlice(a.IP)
		if !ok || !labnet.IsLab(ad) {
			continue
		}
		ad = ad.Unmap()
		if ad.Is4() && !ifc.ip4.IsValid() {
			ifc.ip4 = ad
		} else if ad.Is6() && !ifc.ip6.IsValid() {
			ifc.ip6 = ad
		}
	}
	return ifc, nil
}

// packetSocket sends whole Ethernet frames out of one interface.
type packetSocket struct {
	fd    int
	index int
}

// openPacket opens an AF_PACKET socket that receives nothing (protocol 0)
// and sends on the interface with index ifindex.
func openPacket(ifindex int) (*packetSocket, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	return &packetSocket{fd: fd, index: ifindex}, nil
}

// send transmits frame as it is; the kernel adds nothing but the FCS.
func (s *packetSocket) send(frame []byte) error {
	et := binary.BigEndian.Uint16(frame[12:14])
	sa := &unix.SockaddrLinklayer{Ifindex: s.index, Protocol: et<<8 | et>>8, Halen: 6}
	copy(sa.Addr[:], frame[0:6])
	return unix.Sendto(s.fd, frame, 0, sa)
}

func (s *packetSocket) close() error { return unix.Close(s.fd) }
