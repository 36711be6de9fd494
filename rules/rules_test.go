package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
)

func mustParse(t testing.TB, src string) *Set {
	t.Helper()
	s, err := Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseFields(t *testing.T) {
	s := mustParse(t, `
# brute force on ssh, per source
ssh-brute: tcp dport 22 syn per src pps 5 burst 10 table 512
dns:       udp dport 53 pps 1000 burst 200 continue   # then the other classes
ping:      icmp bps 2kbit burst-bytes 10k
big:       size >1400 block
scan:      syn per dst pps 20 reclassify tcp-syn
bulk:      ipv4 dst 198.18.0.0/15 pps 100 bps 1mbit mode shape
exempt:    not src 198.18.0.0/15,2001:db8::/32 vlan none ether ipv4,0x86dd flags ack,!rst size <64,100-200 frag
`)
	if s.Len() != 7 {
		t.Fatalf("%d classes", s.Len())
	}
	ssh := s.Class(0)
	if ssh.Name != "ssh-brute" || ssh.Per != PerSource || ssh.PerLimits != (bucket.Limits{PPS: 5, BurstPackets: 10}) ||
		ssh.Table != 512 || ssh.HasLimits() || ssh.Action != Drop || ssh.Line != 3 || ssh.Column != 1 {
		t.Errorf("ssh-brute: %+v", *ssh)
	}
	dns := s.Class(1)
	if dns.Limits != (bucket.Limits{PPS: 1000, BurstPackets: 200}) || dns.Action != Continue {
		t.Errorf("dns: %+v", *dns)
	}
	if p := s.Class(2); p.Limits != (bucket.Limits{BytesPerSec: 250, BurstBytes: 10240}) {
		t.Errorf("ping: %+v", p.Limits)
	}
	if b := s.Class(3); !b.Limits.Block {
		t.Errorf("big: %+v", b.Limits)
	}
	scan := s.Class(4)
	if i, b := s.Target(4); scan.Action != Reclassify || scan.Target != "tcp-syn" || i != -1 || b != classify.TCPSyn {
		t.Errorf("scan: %+v, target %d %v", *scan, i, b)
	}
	if bulk := s.Class(5); bulk.Mode != Shape || bulk.Limits.BytesPerSec != 125000 {
		t.Errorf("bulk: %+v", *bulk)
	}
	want := []string{
		"ssh-brute: proto tcp dport 22 flags syn,!ack per src pps 5 burst 10 table 512",
		"dns: proto udp dport 53 pps 1000 burst 200 continue",
		"ping: proto icmp,icmpv6 bps 2kbit burst-bytes 10kb",
		"big: size >1400 block",
		"scan: flags syn,!ack per dst pps 20 reclassify tcp-syn",
		"bulk: ipv4 dst 198.18.0.0/15 pps 100 bps 1mbit mode shape",
		"exempt: not src 198.18.0.0/15,2001:db8::/32 vlan none ether ipv4,ipv6 flags !rst,ack size <64,100-200 frag",
	}
	if got := s.Strings(); !reflect.DeepEqual(got, want) {
		t.Errorf("canonical form:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The canonical form reads back to the same set.
	again := mustParse(t, s.String())
	if !again.Equal(s) || again.String() != s.String() {
		t.Errorf("round trip:\n%s\n%s", s, again)
	}
	for i := range s.Len() {
		a, b := *s.Class(i), *again.Class(i)
		a.Line, a.Column, b.Line, b.Column = 0, 0, 0, 0
		if !reflect.DeepEqual(a, b) {
			t.Errorf("class %d: %+v, read back %+v", i, a, b)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		src       string
		line, col int
		want      string
	}{
		{"dns udp dport 53", 1, 1, "starts with its class name and a colon"},
		{"\n\n  dns: udp dprot 53", 3, 12, `unknown word "dprot" (did you mean dport?)`},
		{"dns: udp dport 53 burst 5", 1, 19, "burst needs pps"},
		{"dns: udp dport 53 per src burst 5 pps 1 burst-bytes 2k", 1, 41, "burst-bytes needs bps"},
		{"dns: pps 5 tcp", 1, 12, `match "tcp" after the limits`},
		{"a: dport 80,70000", 1, 13, `"70000": want port numbers`},
		{"a: dport 90-80", 1, 10, `"90-80"`},
		{"a: src 10.0.0.1/8", 1, 8, "did you mean 10.0.0.0/8?"},
		{"a: src fe80::1%eth0", 1, 8, "want an address"},
		{"a: dst ::ffff:10.0.0.1", 1, 8, "IPv4-mapped"},
		{"a: continue", 1, 4, "continue applies to frames over a limit"},
		{"a: reclassify b", 1, 4, "reclassify applies to frames over a limit"},
		{"tcp: any", 1, 1, "is a built-in class"},
		{"Web: any", 1, 1, "lower-case"},
		{"-web: any", 1, 1, "lower-case"},
		{strings.Repeat("x", 33) + ": any", 1, 1, "longer than 32"},
		{"a: pps 1 pps 2", 1, 10, "pps is given twice (first at line 1, column 4)"},
		{"a: pps 1 drop continue", 1, 15, `a second action "continue"`},
		{"a: per src", 1, 4, "per src needs a limit"},
		{"a: per host pps 1", 1, 8, `per "host"`},
		{"a: pps 1 table 5", 1, 10, "table sizes the per-address table"},
		{"a: per dst pps 1 table 0", 1, 24, `table "0"`},
		{"a: pps 5 mode shape continue", 1, 10, "so continue never applies"},
		{"a: per src pps 5 mode shape", 1, 18, "cannot wait on one address"},
		{"a: block mode shape", 1, 10, "needs a class-wide pps or bps"},
		{"a: mode fast", 1, 9, `mode "fast"`},
		{"a: pps 0", 1, 8, "use block"},
		{"a: pps -1", 1, 8, `pps "-1"`},
		{"a: pps NaN", 1, 8, `pps "NaN"`},
		{"a: bps 4bit", 1, 8, "below one byte per second"},
		{"a: bps fast", 1, 8, "bps:"},
		{"a: burst-bytes 1k bps 1mbit", 1, 16, "smaller than the largest frame"},
		{"a: block pps 1", 1, 4, "block admits nothing"},
		{"a: burst 0 pps 1", 1, 10, `burst "0"`},
		{"a: size >65535", 1, 9, "size"},
		{"a: size 10-5", 1, 9, "size"},
		{"a: vlan 4096", 1, 9, "VLAN ids"},
		{"a: ether 0x10000", 1, 10, "ethertype"},
		{"a: proto 256", 1, 10, "IP protocol"},
		{"a: flags syn,!syn", 1, 14, "named twice"},
		{"a: flags push", 1, 10, `flags "push"`},
		{"a: not", 1, 4, "not needs a match"},
		{"a: not pps 5", 1, 8, "not needs a match"},
		{"a: dport", 1, 4, "dport needs a value"},
		{"a: reclassify", 1, 4, "reclassify needs a value"},
		{"a: pps 1 reclassify Web", 1, 21, `reclassify "Web"`},
		{"a: tcp b: udp", 1, 8, "one rule per line"},
	} {
		_, err := Parse(c.src)
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v, want an *Error", c.src, err)
			continue
		}
		if e.Line != c.line || e.Column != c.col || !strings.Contains(e.Msg, c.want) {
			t.Errorf("%q:\n got %v\nwant line %d, column %d: ...%s...", c.src, err, c.line, c.col, c.want)
		}
	}
}

func TestSetErrors(t *testing.T) {
	for _, c := range []struct {
		src  string
		line int
		want string
	}{
		{"a: tcp\nb: udp\na: icmp", 3, `"a" is defined twice (first at line 1, column 1)`},
		{"a: tcp\nb: udp pps 1 reclassify a", 2, "which comes before it"},
		{"a: tcp pps 1 reclassify nosuch", 1, "neither a later class nor a built-in"},
		{"a: tcp pps 1 reclassify a", 1, "itself"},
		{"a: tcp pps 1 reclassify control", 1, "neither a later class nor a built-in"},
		{strings.Repeat("c: any\n", 0) + manyClasses(MaxClasses+1), MaxClasses + 1, "more than 64 classes"},
	} {
		_, err := Parse(c.src)
		var e *Error
		if !errors.As(err, &e) || e.Line != c.line || !strings.Contains(e.Msg, c.want) {
			t.Errorf("%q: %v, want line %d: %s", c.src, err, c.line, c.want)
		}
	}
	if s := mustParse(t, manyClasses(MaxClasses)); s.Len() != MaxClasses {
		t.Fatal("MaxClasses classes refused")
	}
	// Reclassify to a later class.
	s := mustParse(t, "a: syn pps 1 reclassify b\nb: any pps 2")
	if i, _ := s.Target(0); i != 1 || s.Index("b") != 1 || s.Index("zz") != -1 {
		t.Fatalf("target %d", i)
	}
}

func manyClasses(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "c%d: any\n", i)
	}
	return b.String()
}

func TestParseRule(t *testing.T) {
	c, err := ParseRule("  dns: udp dport 53 pps 1000 # comment")
	if err != nil || c.Name != "dns" || c.Line != 0 || c.Column != 3 {
		t.Fatalf("%+v %v", c, err)
	}
	_, err = ParseRule("dns: udp dport x")
	if err == nil || err.Error() != `column 16: "x": want port numbers and ranges such as 80,443,8000-8100 (at most 65535)` {
		t.Fatalf("column-only error: %v", err)
	}
	for _, bad := range []string{"", "   # nothing", "a: tcp\nb: udp"} {
		if _, err := ParseRule(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRule(%q): %v", bad, err)
		}
	}
}

func TestNilSet(t *testing.T) {
	var s *Set
	if s.Len() != 0 || s.String() != "" || s.Classes() != nil || s.Strings() != nil || !s.Equal(&Set{}) {
		t.Fatal("nil set")
	}
	empty := mustParse(t, "\n# only comments\n")
	if empty.Len() != 0 {
		t.Fatal("comments made classes")
	}
}

// fr builds a decoded frame for matching.
type fr struct {
	ethertype   uint16
	vlans       int
	vlan        uint16
	src, dst    string
	proto       uint8
	sport, port uint16
	flags       uint8
	size        int
	frag, first bool
	malformed   string
}

func (x fr) frame() *classify.Frame {
	f := &classify.Frame{Len: x.size, EtherType: x.ethertype, VLANs: x.vlans, VLANID: x.vlan, Proto: x.proto,
		SrcPort: x.sport, DstPort: x.port, TCPFlags: x.flags, Fragment: x.frag, FirstFragment: x.first, Malformed: x.malformed}
	if f.Len == 0 {
		f.Len = 100
	}
	if x.src != "" {
		f.SrcIP, f.DstIP = netip.MustParseAddr(x.src), netip.MustParseAddr(x.dst)
		f.IPVersion = 4
		if f.SrcIP.Is6() {
			f.IPVersion = 6
		}
	}
	if f.EtherType == 0 {
		f.EtherType = map[uint8]uint16{0: 0x88cc, 4: 0x0800, 6: 0x86dd}[f.IPVersion]
	}
	return f
}

func TestMatches(t *testing.T) {
	syn := fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 6, sport: 40000, port: 22, flags: 0x02}
	synack := syn
	synack.flags = 0x12
	udp := fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 17, sport: 5353, port: 53, size: 80}
	udp6 := fr{src: "2001:db8::2", dst: "2001:db8:1::9", proto: 17, sport: 5353, port: 53}
	icmp6 := fr{src: "2001:db8::2", dst: "2001:db8:1::9", proto: 58}
	later := fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 17, frag: true}
	first := fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 17, sport: 1, port: 53, frag: true, first: true}
	broken := fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 6, sport: 1, port: 22, flags: 0x02, malformed: "bad-tcp-offset"}
	lldp := fr{size: 60}
	tagged := udp
	tagged.vlans, tagged.vlan = 1, 100
	big := udp
	big.size = 1514

	for _, c := range []struct {
		match string
		yes   []fr
		no    []fr
	}{
		{"any", []fr{syn, lldp, broken}, nil},
		{"tcp", []fr{syn, synack, broken}, []fr{udp, lldp}},
		{"syn", []fr{syn}, []fr{synack, udp, broken}},
		{"not syn", []fr{synack, udp, lldp}, []fr{syn}},
		{"flags syn", []fr{syn, synack}, []fr{udp}},
		{"icmp", []fr{icmp6}, []fr{udp6}},
		{"udp dport 53", []fr{udp, udp6, first}, []fr{later, syn}},
		{"sport 5000-6000", []fr{udp}, []fr{syn}},
		{"port 22", []fr{syn, synack}, []fr{udp, broken}},
		{"port 40000", []fr{syn}, []fr{udp}},
		{"ipv6", []fr{udp6, icmp6}, []fr{udp, lldp}},
		{"ip", []fr{udp, udp6}, []fr{lldp}},
		{"ether ipv4", []fr{udp, syn}, []fr{udp6, lldp}},
		{"ether lldp", []fr{lldp}, []fr{udp}},
		{"src 198.18.0.0/24", []fr{udp, syn}, []fr{udp6, lldp}},
		{"dst 2001:db8:1::/48", []fr{udp6}, []fr{udp}},
		{"dst 198.18.1.9", []fr{udp}, []fr{udp6}},
		{"not dst 198.18.1.0/24", []fr{udp6, lldp}, []fr{udp}},
		{"vlan 100", []fr{tagged}, []fr{udp}},
		{"vlan none", []fr{udp}, []fr{tagged}},
		{"vlan 1-99", nil, []fr{tagged, udp}},
		{"size >1400", []fr{big}, []fr{udp}},
		{"size <=80", []fr{udp}, []fr{big}},
		{"frag", []fr{later, first}, []fr{udp}},
		{"proto 17 not frag", []fr{udp}, []fr{later, syn}},
		{"proto udp,tcp dport 22,53", []fr{udp, syn}, []fr{icmp6}},
	} {
		s := mustParse(t, "x: "+c.match)
		for _, f := range c.yes {
			if !s.Matches(0, f.frame()) {
				t.Errorf("%q does not match %+v", c.match, f)
			}
		}
		for _, f := range c.no {
			if s.Matches(0, f.frame()) {
				t.Errorf("%q matches %+v", c.match, f)
			}
		}
	}
}

func TestMatchesZeroAllocs(t *testing.T) {
	s := mustParse(t, "a: not src 198.18.0.0/15,2001:db8::/32 tcp dport 22,80-90 flags syn,!ack vlan none size <1500\nb: icmp size >100")
	f := fr{src: "198.18.0.2", dst: "198.18.1.9", proto: 6, sport: 40000, port: 22, flags: 0x02}.frame()
	allocs := testing.AllocsPerRun(1000, func() {
		s.Matches(0, f)
		s.Matches(1, f)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations", allocs)
	}
}

func TestParseYAML(t *testing.T) {
	doc := `socket: /run/shaperd.sock
classes:
  - ssh-brute: tcp dport 22 syn per src pps 5 burst 10
  - "dns: udp dport 53 pps 1000 continue"
  - 'ping: icmp bps 2kbit'
  - exempt:
profiles:
  quarantine:
    classes: |
      web: tcp dport 80,443 pps 5000
        # an indented comment
      big: size >1400 block
`
	cs, err := ParseYAML([]byte(doc), "$.classes")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cs {
		names = append(names, fmt.Sprintf("%s@%d:%d", c.Name, c.Line, c.Column))
	}
	if got := strings.Join(names, " "); got != "ssh-brute@3:5 dns@4:6 ping@5:6 exempt@6:5" {
		t.Fatalf("classes %s", got)
	}
	cs, err = ParseYAML([]byte(doc), "$.profiles.quarantine.classes")
	if err != nil || len(cs) != 2 || cs[1].Name != "big" || cs[1].Line != 12 || cs[1].Column != 7 {
		t.Fatalf("block: %+v %v", cs, err)
	}
	if cs, err := ParseYAML([]byte(doc), "$.nothing"); err != nil || cs != nil {
		t.Fatalf("absent path: %v %v", cs, err)
	}
	for _, c := range []struct {
		doc       string
		line, col int
		want      string
	}{
		{"classes:\n  - ssh: tcp dport 22 burst 3\n", 2, 23, "burst needs pps"},
		{"classes:\n  - \"dns: udp dport x\"\n", 2, 21, `"x"`},
		{"classes:\n  - 'dns udp'\n", 2, 6, "starts with its class name"},
		{"classes:\n  - Web: any\n", 2, 5, "lower-case"},
		{"classes:\n  - a: 5\n", 2, 8, `unknown word "5"`},
		{"classes:\n  - a:\n      b: c\n", 3, 8, "want the rest of the rule on the same line"},
		{"classes:\n  - [a, b]\n", 2, 5, "want a rule"},
		{"classes: 5\n", 1, 10, "want a list of rules"},
		{"classes: |\n  a: tcp\n    b: udp pps 0\n", 3, 16, "use block"},
		{"classes:\n  - a: tcp\n  - a: udp\n", 3, 5, "defined twice"},
	} {
		cs, err := ParseYAML([]byte(c.doc), "$.classes")
		if err == nil {
			_, err = NewSet(cs)
		}
		var e *Error
		if !errors.As(err, &e) || e.Line != c.line || e.Column != c.col || !strings.Contains(e.Msg, c.want) {
			t.Errorf("%q:\n got %v\nwant line %d, column %d: ...%s...", c.doc, err, c.line, c.col, c.want)
		}
	}
	if _, err := ParseYAML([]byte("a: [\n"), "$.classes"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad YAML: %v", err)
	}
	if _, err := ParseYAML([]byte("a: 1\n"), "classes"); err == nil {
		t.Fatal("a bad path: no error")
	}
}
