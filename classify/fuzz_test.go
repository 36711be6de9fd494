package classify

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/shaperd/shaperd/internal/fuzzcorpus"
)

// FuzzClassify feeds arbitrary bytes to a stateless Classifier and to the
// bypass pair of a port (both directions, outbound on), and checks that
// Classify never panics, that the Frame agrees with the class, and that the
// stateless verdict does not depend on the previous frame. The seed corpus
// is in testdata/fuzz/FuzzClassify (see TestFuzzCorpus) plus the frames of
// frameCases.
func FuzzClassify(f *testing.F) {
	for _, tc := range frameCases(f) {
		f.Add(tc.frame)
	}
	plainC := plain(f, FromVM)
	p := struct{ from, to *Classifier }{}
	table := NewConnTable(64)
	var err error
	cfg := Config{BypassOutbound: true}
	if p.from, err = New(FromVM, cfg, table); err != nil {
		f.Fatal(err)
	}
	if p.to, err = New(ToVM, cfg, table); err != nil {
		f.Fatal(err)
	}
	syn := fromVM(0x0800, tcp4(vm4, 50000, rem4, 443, fSYN))
	var now int64
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := string(data)
		cl := plainC.Classify(data, 0)
		fr := *plainC.Frame()
		if msg := consistent(cl, &fr); msg != "" {
			t.Fatalf("%v: %s", cl, msg)
		}
		if fr.Len != len(data) {
			t.Fatalf("Len %d of %d bytes", fr.Len, len(data))
		}
		// Same bytes after another frame: same verdict, same fields.
		plainC.Classify(syn, 0)
		if again := plainC.Classify(data, 0); again != cl || *plainC.Frame() != fr {
			t.Fatalf("second Classify: %v %s, first %v %s", again, dump(plainC.Frame()), cl, dump(&fr))
		}
		for _, c := range []*Classifier{p.to, p.from} {
			now += 1e6
			got := c.Classify(data, now)
			if msg := consistent(got, c.Frame()); msg != "" {
				t.Fatalf("%v %v: %s", c.Direction(), got, msg)
			}
			// Bypass only ever replaces TCP and TCPSyn.
			if got != cl && !(got == Bypass && (cl == TCP || cl == TCPSyn)) {
				t.Fatalf("%v: %v, stateless %v", c.Direction(), got, cl)
			}
		}
		if table.Len() > table.Cap() {
			t.Fatalf("Len %d > Cap %d", table.Len(), table.Cap())
		}
		if string(data) != orig {
			t.Fatal("Classify modified its input")
		}
	})
}

// TestFuzzCorpus checks that the checked-in corpus is exactly the seeds
// corpusSeeds generates: every file a valid corpus entry of FuzzClassify,
// with a seed's bytes, and no seed missing. With SHAPERD_WRITE_CORPUS=1 it
// (re)writes the files first.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzClassify")
	entries := map[string][]any{}
	for name, b := range corpusSeeds(t) {
		entries[name] = []any{b}
	}
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(dir, entries); err != nil {
			t.Fatal(err)
		}
	}
	fuzzcorpus.Check(t, dir, entries, []byte(nil))
}

// corpusSeeds are the generated seed files: truncations, bogus IHL, VLAN
// stacks, IPv6 extension header chains and fragments.
func corpusSeeds(t testing.TB) map[string][]byte {
	syn4 := fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, opts: []byte{0x94, 4, 0, 0}}.bytes(tcpSeg(50000, 22, fSYN, []byte{2, 4, 5, 0xb4}, nil)))
	chain := fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6HBH, ipv6Dst, ipv6Rt, ipv6Frag, ipv6Dst}}.bytes(tcpSeg(22, 40000, fACK, nil, []byte("x"))))
	seeds := map[string][]byte{
		"arp-padded":          pad(fromVM(0x0806, arpPkt(1))),
		"ns":                  nd(135, 255),
		"ra-vlan2":            fromVM(0x86dd, v6{src: llRtr6, dst: llVM6, next: 58, hop: 255}.bytes(icmpMsg(134, 0, ndBody(134))), 1, 2),
		"tcp4-syn-options":    syn4,
		"tcp4-qinq":           fromVM(0x0800, tcp4(vm4, 22, rem4, 40000, fSYNACK), 100, 200),
		"tcp4-three-tags":     fromVM(0x0800, tcp4(vm4, 22, rem4, 40000, fSYNACK), 1, 2, 3),
		"tcp4-first-fragment": fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, mf: true}.bytes(tcpSeg(1, 22, fSYN, nil, make([]byte, 16)))),
		"tcp4-later-fragment": fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, offset: 3}.bytes(make([]byte, 16))),
		"udp4-padded":         pad(fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 17}.bytes(udpDgram(1, 2, nil)))),
		"icmp4-echo":          fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 1}.bytes(icmpMsg(8, 0, make([]byte, 12)))),
		"ipv6-ext-chain":      chain,
		"ipv6-hbh-frag-udp":   fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 17, exts: []ext{ipv6HBH, ipv6Frag}}.bytes(udpDgram(1, 2, []byte("x")))),
		"ipv6-later-fragment": fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{{typ: 44, offset: 7, more: true}}}.bytes(make([]byte, 24))),
		"ipv6-jumbo": func() []byte {
			b := fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{{typ: 0, body: []byte{0xc2, 4, 0, 1, 0, 0}}}}.bytes(nil))
			be16(b[18:], 0)
			return b
		}(),
		"lldp":     ether(vmMAC, gwMAC, 0x88cc, []byte{2, 7, 4, 1, 2, 3, 4, 5, 6, 0, 0}),
		"llc-8023": ether(vmMAC, gwMAC, 3, []byte{0x42, 0x42, 3}),
	}
	for ihl := range byte(16) {
		b := append([]byte(nil), syn4...)
		b[14] = 0x40 | ihl
		seeds[fmt.Sprintf("ihl-%d", ihl)] = b
	}
	for _, tl := range []uint16{0, 19, 20, 23, 24, 65535} {
		b := append([]byte(nil), syn4...)
		be16(b[16:], tl)
		seeds[fmt.Sprintf("ipv4-total-length-%d", tl)] = b
	}
	for _, off := range []byte{0, 4, 5, 6, 15} {
		b := append([]byte(nil), syn4...)
		b[14+24+12] = off << 4
		seeds[fmt.Sprintf("tcp-offset-%d", off)] = b
	}
	// Truncation at every offset of the frames with the most structure.
	na := fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: 255}.bytes(ndMsg(136, vm6, llOpt(2, vmMAC), []byte{14, 1, 1, 2, 3, 4, 5, 6})))
	raHidden := fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: 255, exts: []ext{ipv6HBH, ipv6AH, ipv6Frag}}.bytes(ndMsg(134, netip.Addr{}, llOpt(1, vmMAC))))
	arpReply := fromVM(0x0806, arpPkt(2), 5)
	for name, b := range map[string][]byte{"tcp4": syn4, "ipv6-chain": chain, "na": na, "ra-hidden": raHidden, "arp-vlan": arpReply} {
		for cut := range len(b) {
			seeds[fmt.Sprintf("%s-cut-%d", name, cut)] = b[:cut]
		}
	}
	// Bogus lengths.
	udp4 := fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 17}.bytes(udpDgram(67, 68, []byte("offer"))))
	for _, ul := range []uint16{0, 7, 8, 13, 14, 100, 65535} {
		b := append([]byte(nil), udp4...)
		be16(b[14+20+4:], ul)
		seeds[fmt.Sprintf("udp-length-%d", ul)] = b
	}
	tcp6b := fromVM(0x86dd, tcp6(vm6, 1, rem6, 2, fSYN))
	for _, pl := range []uint16{0, 1, 19, 20, 21, 65535} {
		b := append([]byte(nil), tcp6b...)
		be16(b[18:], pl)
		seeds[fmt.Sprintf("ipv6-payload-length-%d", pl)] = b
	}
	for _, n := range []byte{0, 2, 3, 255} {
		b := append([]byte(nil), na...)
		b[len(b)-16+1] = n // the target link-layer option's length
		seeds[fmt.Sprintf("nd-option-length-%d", n)] = b
	}
	// VLAN stacks: 802.1Q and 802.1ad in every order, up to three deep.
	for _, tpids := range [][]uint16{{0x8100}, {0x88a8}, {0x8100, 0x8100}, {0x88a8, 0x8100}, {0x8100, 0x88a8}, {0x88a8, 0x88a8}, {0x88a8, 0x8100, 0x8100}} {
		b := append([]byte(nil), vmMAC[:]...)
		b = append(gwMAC[:], b...)
		name := "vlan"
		for i, tp := range tpids {
			b = binary.BigEndian.AppendUint16(b, tp)
			b = binary.BigEndian.AppendUint16(b, uint16(100+i))
			name += fmt.Sprintf("-%04x", tp)
		}
		b = binary.BigEndian.AppendUint16(b, 0x0800)
		seeds[name] = append(b, tcp4(vm4, 22, rem4, 40000, fSYNACK)...)
	}
	// IPv6 extension header chains.
	for name, exts := range map[string][]ext{
		"hbh-dst-rt-ah-dst":  {ipv6HBH, ipv6Dst, ipv6Rt, ipv6AH, ipv6Dst},
		"ah-frag":            {ipv6AH, ipv6Frag},
		"frag-ah":            {ipv6Frag, ipv6AH},
		"dst-hbh":            {ipv6Dst, ipv6HBH},
		"eight-dst":          slices.Repeat([]ext{ipv6Dst}, 8),
		"nine-dst":           slices.Repeat([]ext{ipv6Dst}, 9),
		"two-frag":           {ipv6Frag, ipv6Frag},
		"hbh-later-fragment": {ipv6HBH, {typ: 44, offset: 1}},
	} {
		seeds["ipv6-ext-"+name+"-ra"] = fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: 255, exts: exts}.bytes(ndMsg(134, netip.Addr{})))
		seeds["ipv6-ext-"+name+"-dhcp"] = fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 17, exts: exts}.bytes(udpDgram(547, 546, []byte("advertise"))))
	}
	// Fragments.
	seeds["ipv4-first-fragment-udp-cut"] = fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 17, mf: true}.bytes(udpDgram(67, 68, nil)[:4]))
	seeds["ipv4-later-fragment-offset-1"] = fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 17, offset: 1}.bytes(make([]byte, 8)))
	seeds["ipv4-max-offset"] = fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, offset: 0x1fff}.bytes(make([]byte, 8)))
	seeds["ipv6-first-fragment-no-l4"] = fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, exts: []ext{ipv6Dst, {typ: 44, more: true}}}.bytes(nil))
	seeds["ipv6-first-fragment-half-icmp"] = fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, exts: []ext{{typ: 44, more: true}}}.bytes([]byte{134, 0}))
	seeds["ns-in-fragment"] = fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: 255, exts: []ext{ipv6Frag}}.bytes(ndMsg(135, vm6, llOpt(1, vmMAC))))
	return seeds
}
