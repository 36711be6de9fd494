// Command craft sends crafted Ethernet frames out of one interface with an
// AF_PACKET socket: the forgeries shaperd's anti-spoofing guard must stop
// (a spoofed source MAC or IP, a forged ARP reply or neighbour
// advertisement, a rogue DHCP offer, a router advertisement behind a
// hop-by-hop header), and a legitimate UDP frame as a control.
//
//	craft --iface eth0 --kind arp-reply [--count 1] [--interval 0] [--json]
//
// --vlan wraps any kind in 802.1Q tags. The frame's own addresses come from the interface (its MAC, its first
// lab IPv4 and IPv6 addresses) unless --src-mac, --src4 or --src6 say
// otherwise; the other side defaults to the lab's external host
// (198.18.0.100, 2001:2::100), reached through the broadcast MAC so that
// every port of the bridge sees the frame.
//
// Every IP address a frame carries must be in 198.18.0.0/15 or 2001:2::/48
// (the lab's rule), and craft sends only from inside a named network
// namespace (`ip netns exec NS craft ...`); --dry-run prints the frame in
// hex and sends nothing, anywhere.
package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

func main() {
	err := run(os.Args[1:])
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	default:
		fmt.Fprintln(os.Stderr, "craft:", err)
		os.Exit(1)
	}
}

type options struct {
	iface    string
	kind     kindInfo
	count    int
	interval time.Duration
	json     bool
	dryRun   bool
	p        params
	// set records which address flags were given; the rest come from the
	// interface.
	srcMACSet, src4Set, src6Set bool
}

// summary is what craft prints (--json: one JSON object).
type summary struct {
	Kind       string `json:"kind"`
	Iface      string `json:"iface"`
	Sent       int    `json:"sent"`
	FrameBytes int    `json:"frame_bytes"`
	Guard      string `json:"guard_reason"` // the guard's drop reason for this kind; "" for udp
}

func parseMAC(flag, s string) (net.HardwareAddr, error) {
	m, err := net.ParseMAC(s)
	if err != nil || len(m) != 6 {
		return nil, fmt.Errorf("--%s %q: want an Ethernet address such as 02:00:00:00:00:01", flag, s)
	}
	return m, nil
}

func parseAddr(flag, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--%s %q: %w", flag, s, err)
	}
	a = a.Unmap()
	if err := labnet.CheckAddr(a); err != nil {
		return netip.Addr{}, fmt.Errorf("--%s: %w", flag, err)
	}
	return a, nil
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("craft", flag.ContinueOnError)
	ifc := fs.String("iface", "", "interface to send on, inside the lab namespace (required)")
	k := fs.String("kind", "", "what to send: "+kindNames()+" (required)")
	count := fs.Int("count", 1, "frames to send (1-1000000)")
	interval := fs.Duration("interval", 0, "pause between frames")
	js := fs.Bool("json", false, "print the summary as JSON")
	dry := fs.Bool("dry-run", false, "print the frame in hex and send nothing")
	srcMAC := fs.String("src-mac", "", "the sender's own MAC (default: the interface's)")
	dstMAC := fs.String("dst-mac", "ff:ff:ff:ff:ff:ff", "Ethernet destination")
	spoofMAC := fs.String("spoof-mac", "02:00:5e:00:de:ad", "spoof-mac: the forged Ethernet source")
	src4 := fs.String("src4", "", "the sender's own IPv4 address (default: the interface's first lab address)")
	src6 := fs.String("src6", "", "the sender's own IPv6 address (default: the interface's first lab address)")
	dst4 := fs.String("dst4", "198.18.0.100", "IPv4 destination")
	dst6 := fs.String("dst6", "2001:2::100", "IPv6 destination")
	spoofIP := fs.String("spoof-ip", "198.18.0.50", "spoof-ip: the forged source address, IPv4 or IPv6")
	claim4 := fs.String("claim4", "198.18.0.100", "arp-reply: the IPv4 address claimed to be at the interface's MAC")
	claim6 := fs.String("claim6", "2001:2::100", "na: the IPv6 address claimed to be at the interface's MAC")
	prefix := fs.String("prefix", "2001:2:0:99::/64", "ra-hbh: the /64 advertised")
	sport := fs.Uint("sport", 40000, "udp, spoof-mac, spoof-ip: UDP source port")
	dport := fs.Uint("dport", 9, "udp, spoof-mac, spoof-ip: UDP destination port")
	vlan := fs.String("vlan", "", "802.1Q tags to wrap the frame in, outermost first: ID[,ID...] (1-4094, at most 8)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: craft --iface IFACE --kind KIND [--count 1] [--interval 0] [--json] [--dry-run] [address flags]")
		fmt.Fprintln(fs.Output(), "kinds:")
		for _, k := range kinds {
			fmt.Fprintf(fs.Output(), "  %-11s %s\n", k.kind, k.help)
		}
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var o options
	if *ifc == "" {
		return o, errors.New("--iface is required, e.g. --iface eth0")
	}
	o.iface = *ifc
	var ok bool
	if o.kind, ok = lookupKind(*k); !ok {
		return o, fmt.Errorf("--kind %q: want one of %s", *k, kindNames())
	}
	if *count < 1 || *count > 1000000 {
		return o, fmt.Errorf("--count %d: want 1-1000000", *count)
	}
	o.count = *count
	if *interval < 0 {
		return o, fmt.Errorf("--interval %v: want 0 or positive", *interval)
	}
	o.interval = *interval
	o.json, o.dryRun = *js, *dry
	for _, pt := range []struct {
		flag string
		v    uint
	}{{"sport", *sport}, {"dport", *dport}} {
		if pt.v == 0 || pt.v > 65535 {
			return o, fmt.Errorf("--%s %d: want 1-65535", pt.flag, pt.v)
		}
	}
	o.p.sport, o.p.dport = uint16(*sport), uint16(*dport)
	if *vlan != "" {
		for _, f := range strings.Split(*vlan, ",") {
			v, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
			if err != nil || v == 0 || v > 4094 {
				return o, fmt.Errorf("--vlan %q: %q is not a VLAN id 1-4094", *vlan, f)
			}
			o.p.vlans = append(o.p.vlans, uint16(v))
		}
		if len(o.p.vlans) > maxTags {
			return o, fmt.Errorf("--vlan %q: %d tags; at most %d", *vlan, len(o.p.vlans), maxTags)
		}
	}
	var err error
	if *srcMAC != "" {
		if o.p.srcMAC, err = parseMAC("src-mac", *srcMAC); err != nil {
			return o, err
		}
		o.srcMACSet = true
	}
	if o.p.dstMAC, err = parseMAC("dst-mac", *dstMAC); err != nil {
		return o, err
	}
	if o.p.spoofMAC, err = parseMAC("spoof-mac", *spoofMAC); err != nil {
		return o, err
	}
	for _, a := range []struct {
		flag, s string
		dst     *netip.Addr
	}{
		{"src4", *src4, &o.p.src4}, {"src6", *src6, &o.p.src6},
		{"dst4", *dst4, &o.p.dst4}, {"dst6", *dst6, &o.p.dst6},
		{"spoof-ip", *spoofIP, &o.p.spoofIP},
		{"claim4", *claim4, &o.p.claim4}, {"claim6", *claim6, &o.p.claim6},
	} {
		if *a.dst, err = parseAddr(a.flag, a.s); err != nil {
			return o, err
		}
	}
	o.src4Set, o.src6Set = o.p.src4.IsValid(), o.p.src6.IsValid()
	if o.p.prefix, err = netip.ParsePrefix(*prefix); err != nil {
		return o, fmt.Errorf("--prefix %q: %w", *prefix, err)
	}
	return o, nil
}

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	if !o.dryRun {
		name, err := labnet.NetnsName()
		if err != nil {
			return err
		}
		if name == "" {
			return labnet.ErrRootNetns
		}
	}
	var ifc iface
	if !o.dryRun || !o.srcMACSet || !o.src4Set || !o.src6Set {
		if ifc, err = lookupIface(o.iface); err != nil {
			return err
		}
	}
	if !o.srcMACSet {
		o.p.srcMAC = ifc.mac
	}
	if !o.src4Set {
		o.p.src4 = ifc.ip4
	}
	if !o.src6Set {
		o.p.src6 = ifc.ip6
	}
	k := o.kind.kind
	if err := o.p.check(k); err != nil {
		if errors.Is(err, errFamily) && (!o.src4Set || !o.src6Set) {
			err = fmt.Errorf("%w (addresses not given come from --iface %s: %v, %v)", err, o.iface, ifc.ip4, ifc.ip6)
		}
		return err
	}
	frame, err := build(k, &o.p)
	if err != nil {
		return err
	}
	s := summary{Kind: string(k), Iface: o.iface, FrameBytes: len(frame), Guard: o.kind.guard}
	if o.dryRun {
		fmt.Println(hex.EncodeToString(frame))
		return nil
	}
	sock, err := openPacket(ifc.index)
	if err != nil {
		return err
	}
	defer sock.close()
	for i := range o.count {
		if i > 0 && o.interval > 0 {
			time.Sleep(o.interval)
		}
		if err := sock.send(frame); err != nil {
			return fmt.Errorf("send %s frame %d of %d on %s: %w", k, i+1, o.count, o.iface, err)
		}
		s.Sent++
	}
	if o.json {
		return json.NewEncoder(os.Stdout).Encode(s)
	}
	reason := "a legitimate frame"
	if s.Guard != "" {
		reason = "the guard drops it as " + s.Guard
	}
	fmt.Printf("craft: sent %d %s frames of %d bytes on %s (%s)\n", s.Sent, k, s.FrameBytes, o.iface, strings.TrimSpace(reason))
	return nil
}
