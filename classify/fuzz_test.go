package classify

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
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

// TestFuzzCorpus checks that the checked-in seed corpus parses and covers
// what it should; with SHAPERD_WRITE_CORPUS=1 it (re)writes the generated
// files first.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzClassify")
	seeds := corpusSeeds(t)
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name := range seeds {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("seed %s missing (run with SHAPERD_WRITE_CORPUS=1): %v", name, err)
		}
		if len(b) < len("go test fuzz v1\n") || string(b[:16]) != "go test fuzz v1\n" {
			t.Fatalf("seed %s: bad header", name)
		}
	}
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
	for _, cut := range []int{0, 1, 13, 14, 15, 16, 17, 18, 30, 33, 37, 38, 50, 57, 58, 61} {
		seeds[fmt.Sprintf("tcp4-cut-%d", cut)] = syn4[:min(cut, len(syn4))]
	}
	for _, cut := range []int{14, 40, 53, 54, 55, 56, 61, 62, 70, 78, 86, 94, 101, 102, 110, 121} {
		seeds[fmt.Sprintf("ipv6-chain-cut-%d", cut)] = chain[:min(cut, len(chain))]
	}
	return seeds
}
