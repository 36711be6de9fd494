// Package classify sorts the Ethernet frames of a quarantined VM's port into
// traffic classes, on the forwarding hot path.
//
// A Classifier decodes each frame once, with a gopacket DecodingLayerParser
// over preallocated layers, into a reused Frame, and returns a Class. It
// allocates nothing per frame and never panics, whatever the bytes; truncated
// or inconsistent headers give Malformed with a constant reason.
//
// The Bypass class keeps ssh and rdp to the VM working while the rest of its
// traffic is shaped. It is stateful: a ConnTable, shared by the two
// Classifiers (FromVM and ToVM) of a port, holds the connections seen, and a
// frame the VM sends is Bypass only when it belongs to one of them. Entries
// are created by frames from the remote side, never by the VM alone (except,
// within a budget, outbound SYNs when Config.BypassOutbound is set), so that a
// flooding VM cannot hide its flood in the Bypass class.
package classify

import (
	"errors"
	"fmt"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// defaultBypassPorts are the TCP ports on the VM kept working when
// Config.BypassPorts is nil: ssh and rdp.
var defaultBypassPorts = []uint16{22, 3389}

// Config configures the Bypass class. The zero value bypasses inbound
// connections to ports 22 (ssh) and 3389 (rdp).
type Config struct {
	// BypassPorts are the TCP ports on the VM whose connections are Bypass
	// (flag --bypass). Nil means 22 and 3389; an empty non-nil slice
	// means no bypass at all.
	BypassPorts []uint16
	// BypassOutbound also bypasses the VM's own connections to those ports on
	// remote hosts (flag --bypass-outbound). Off by default: the VM's SYNs
	// then create table entries, which only a budget of
	// OutboundSYNBudget per second per ConnTable keeps a VM scanning for
	// ssh servers from using.
	BypassOutbound bool
}

// Validate reports the first problem with c, naming the flag to fix: port 0,
// or a port listed twice.
func (c Config) Validate() error {
	for i, p := range c.BypassPorts {
		if p == 0 {
			return errors.New("classify: --bypass: port 0 is not a TCP port")
		}
		for _, q := range c.BypassPorts[:i] {
			if p == q {
				return fmt.Errorf("classify: --bypass: port %d is listed twice", p)
			}
		}
	}
	return nil
}

// ports returns the bypass ports with the default applied.
func (c Config) ports() []uint16 {
	if c.BypassPorts == nil {
		return defaultBypassPorts
	}
	return c.BypassPorts
}

// portSet is a bitmap of TCP ports.
type portSet [65536 / 64]uint64

func (s *portSet) add(p uint16)      { s[p>>6] |= 1 << (p & 63) }
func (s *portSet) has(p uint16) bool { return s[p>>6]&(1<<(p&63)) != 0 }

// Classifier classifies the frames of one direction of one port. It owns a
// preallocated decoder and its Frame, and is not safe for concurrent use: one
// per forwarding goroutine. The two Classifiers of a port (FromVM and ToVM)
// share one ConnTable. The zero value is not usable; call New.
type Classifier struct {
	dir      Direction
	table    *ConnTable // nil when bypass is off
	outbound bool
	ports    portSet

	parser  *gopacket.DecodingLayerParser
	decoded []gopacket.LayerType
	frame   Frame
	// want is the layer the last decoded header announced; a layer resets it
	// when it decodes, so a non-zero want after parsing means the frame
	// ended where that header should have started.
	want gopacket.LayerType

	eth   ethLayer
	vlan  vlanLayer
	arp   arpLayer
	ip4   ip4Layer
	ip6   ip6Layer
	tcp   tcpLayer
	udp   udpLayer
	icmp4 icmp4Layer
	icmp6 icmp6Layer
}

// New returns a Classifier for the frames travelling in direction dir.
// table may be nil only when cfg has no bypass ports.
func New(dir Direction, cfg Config, table *ConnTable) (*Classifier, error) {
	if dir != FromVM && dir != ToVM {
		return nil, fmt.Errorf("classify: direction %d is neither from_vm nor to_vm", uint8(dir))
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Classifier{dir: dir, outbound: cfg.BypassOutbound}
	ports := cfg.ports()
	if len(ports) > 0 {
		if table == nil {
			return nil, errors.New("classify: --bypass ports are set but the ConnTable is nil; pass NewConnTable(n), or an empty --bypass to turn bypass off")
		}
		c.table = table
		for _, p := range ports {
			c.ports.add(p)
		}
	}

	c.eth.c, c.vlan.c, c.arp.c = c, c, c
	c.ip4.c, c.ip6.c = c, c
	c.tcp.c, c.udp.c, c.icmp4.c, c.icmp6.c = c, c, c, c
	// gopacket appends to Options; 40 bytes of options hold at most 40.
	c.ip4.Options = make([]layers.IPv4Option, 0, 40)

	c.parser = gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet)
	c.parser.IgnoreUnsupported = true
	// Every layer checks its bounds before gopacket reads a byte, so a panic
	// would be a bug: let it surface (and the fuzzer find it) rather than
	// hiding it behind gopacket's recover.
	c.parser.IgnorePanic = true
	var dlc gopacket.DecodingLayerContainer = gopacket.DecodingLayerSparse(nil)
	for _, d := range []gopacket.DecodingLayer{
		&c.eth, &c.vlan, &c.arp, &c.ip4, &c.ip6, &c.tcp, &c.udp, &c.icmp4, &c.icmp6,
	} {
		dlc = dlc.Put(d)
	}
	c.parser.SetDecodingLayerContainer(dlc)
	c.decoded = make([]gopacket.LayerType, 0, 8)
	return c, nil
}

// Direction returns the direction c was created for.
func (c *Classifier) Direction() Direction { return c.dir }

// Frame returns the fields decoded by the last Classify. The Frame is
// overwritten by the next Classify.
func (c *Classifier) Frame() *Frame { return &c.frame }

// Classify decodes frame once and returns its class. now is monotonic time
// in nanoseconds, used for the ConnTable's idle timeouts. Classify does not
// keep frame, never panics, and allocates nothing.
func (c *Classifier) Classify(frame []byte, now int64) Class {
	f := &c.frame
	*f = Frame{Len: len(frame)}
	c.want = gopacket.LayerTypeZero
	err := c.parser.DecodeLayers(frame, &c.decoded)
	if err == nil && c.want != gopacket.LayerTypeZero {
		// A header announced a successor and the frame ended right there:
		// let that layer report its own truncation.
		if d := c.decoder(c.want); d != nil {
			err = d.DecodeFromBytes(nil, c.parser)
		}
	}
	if err != nil {
		r, ok := err.(reason)
		if !ok {
			r = reasonDecoder
		}
		f.Malformed = string(r)
		return Malformed
	}
	if len(c.decoded) == 0 {
		f.Malformed = string(reasonDecoder)
		return Malformed
	}

	switch c.decoded[len(c.decoded)-1] {
	case layers.LayerTypeARP:
		return Control
	case layers.LayerTypeICMPv6:
		if t := f.ICMPType; isND(t) {
			if f.ICMPCode != 0 || c.ip6.hopLimit != ipv6HopLimit || f.Fragment || len(c.icmp6.msg) < ndMinLen[t-133] ||
				!decodeND(f, t, c.icmp6.msg) {
				f.Malformed = string(reasonBadNDP)
				return Malformed
			}
			return Control
		}
		return ICMP
	case layers.LayerTypeICMPv4:
		return ICMP
	case layers.LayerTypeUDP:
		return UDP
	case layers.LayerTypeTCP:
		if c.table != nil && !f.Fragment && c.bypass(f, now) {
			return Bypass
		}
		if f.TCPFlags&(TCPFlagSYN|TCPFlagACK) == TCPFlagSYN {
			return TCPSyn
		}
		return TCP
	}
	return Other
}

// decoder returns the layer registered for t, or nil.
func (c *Classifier) decoder(t gopacket.LayerType) gopacket.DecodingLayer {
	switch t {
	case layers.LayerTypeDot1Q:
		return &c.vlan
	case layers.LayerTypeARP:
		return &c.arp
	case layers.LayerTypeIPv4:
		return &c.ip4
	case layers.LayerTypeIPv6:
		return &c.ip6
	case layers.LayerTypeTCP:
		return &c.tcp
	case layers.LayerTypeUDP:
		return &c.udp
	case layers.LayerTypeICMPv4:
		return &c.icmp4
	case layers.LayerTypeICMPv6:
		return &c.icmp6
	}
	return nil
}

// bypass reports whether the unfragmented TCP segment f belongs to a
// bypassed connection, updating the ConnTable.
//
// Inbound connections (a remote host to a bypass port on the VM) are keyed
// with the VM as responder; outbound ones (the VM to a bypass port on a
// remote host, with BypassOutbound) as initiator, and the two never match
// each other. Only frames from the remote side (ToVM) may join a connection
// first seen mid-stream; the VM's own frames must match an existing entry,
// except an outbound SYN, which may create one within OutboundSYNBudget.
func (c *Classifier) bypass(f *Frame, now int64) bool {
	var k connKey
	if c.dir == ToVM {
		if c.ports.has(f.DstPort) {
			k.set(f.DstIP, f.DstPort, f.SrcIP, f.SrcPort, false)
			if c.table.observe(&k, now, f.TCPFlags, initiator, true, false) {
				return true
			}
		}
		if c.outbound && c.ports.has(f.SrcPort) {
			k.set(f.DstIP, f.DstPort, f.SrcIP, f.SrcPort, true)
			return c.table.observe(&k, now, f.TCPFlags, responder, true, false)
		}
		return false
	}
	if c.ports.has(f.SrcPort) {
		k.set(f.SrcIP, f.SrcPort, f.DstIP, f.DstPort, false)
		if c.table.observe(&k, now, f.TCPFlags, responder, false, false) {
			return true
		}
	}
	if c.outbound && c.ports.has(f.DstPort) {
		k.set(f.SrcIP, f.SrcPort, f.DstIP, f.DstPort, true)
		return c.table.observe(&k, now, f.TCPFlags, initiator, false, true)
	}
	return false
}
