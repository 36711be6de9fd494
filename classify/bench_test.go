package classify

import (
	"testing"
	"time"
)

// BenchmarkClassify measures one Classify per frame kind (ns/op is ns per
// frame), with bypass on and the ssh connection in the table.
func BenchmarkClassify(b *testing.B) {
	table := NewConnTable(65536)
	from, err := New(FromVM, Config{}, table)
	if err != nil {
		b.Fatal(err)
	}
	to, err := New(ToVM, Config{}, table)
	if err != nil {
		b.Fatal(err)
	}
	now := int64(time.Hour)
	to.Classify(sshIn(fSYN), now)
	to.Classify(sshIn(fACK), now)
	payload := make([]byte, 1400)
	for _, bc := range []struct {
		name  string
		c     *Classifier
		frame []byte
		want  Class
	}{
		{"arp", from, pad(fromVM(0x0806, arpPkt(1))), Control},
		{"ns", from, nd(135, 255), Control},
		{"tcp4-syn", from, fromVM(0x0800, tcp4(vm4, 50000, rem4, 443, fSYN)), TCPSyn},
		{"tcp4-1400", from, fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6}.bytes(tcpSeg(50000, 443, fPSHACK, nil, payload))), TCP},
		{"tcp4-qinq", from, fromVM(0x0800, tcp4(vm4, 50000, rem4, 443, fACK), 100, 200), TCP},
		{"tcp6", from, fromVM(0x86dd, tcp6(vm6, 50000, rem6, 443, fACK)), TCP},
		{"udp4", from, fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 17}.bytes(udpDgram(1, 53, make([]byte, 32)))), UDP},
		{"udp6-hbh-frag", from, fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 17, exts: []ext{ipv6HBH, ipv6Frag}}.bytes(udpDgram(1, 53, make([]byte, 32)))), UDP},
		{"icmp4", from, fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 1}.bytes(icmpMsg(8, 0, make([]byte, 56)))), ICMP},
		{"fragment4", from, fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 17, offset: 100}.bytes(make([]byte, 64))), Other},
		{"bypass-to-vm", to, sshIn(fPSHACK), Bypass},
		{"bypass-from-vm", from, sshOut(fPSHACK), Bypass},
		{"from-22-unknown", from, fromVM(0x0800, tcp4(vm4, 22, rem4b, 1, fACK)), TCP},
		{"malformed-ihl", from, func() []byte { f := fromVM(0x0800, tcp4(vm4, 1, rem4, 2, fACK)); f[14] = 0x44; return f }(), Malformed},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if got := bc.c.Classify(bc.frame, now); got != bc.want {
				b.Fatalf("class %v, want %v", got, bc.want)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.frame)))
			for b.Loop() {
				bc.c.Classify(bc.frame, now)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}
