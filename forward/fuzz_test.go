package forward

import (
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/shaperd/shaperd/classify"
)

// FuzzStep feeds arbitrary bytes through the whole evaluation order: a
// from-VM pipe with the guard, classes with every action and per-address
// tables, the quota hook and the top-destinations table, in police mode and
// in shape mode, and a to-VM pipe with the per-source bypass limit. It
// checks that Step never panics, that each frame is counted exactly once,
// and that the top-destinations table stays consistent. Seeds: the
// frames of the guard and class tests; the classifier's corpus covers
// the decoder (FuzzClassify).
func FuzzStep(f *testing.F) {
	for _, b := range [][]byte{
		udpFlood(f),
		frame(f, true, &layers.UDP{SrcPort: 5353, DstPort: 53}, 20, 0),
		frame(f, true, &layers.TCP{SrcPort: 1234, DstPort: 22, SYN: true, Window: 1}, 0, 0),
		frame(f, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0),
		rawUDP4(ext4, ext4, 1, 2),
		rawUDP4(vm4, netip.MustParseAddr("255.255.255.255"), 67, 68),
		rawARP(2, vmMAC, ext4, vm4),
		rawICMP6(vmLL, allNodes, raMsg(), true),
		rawICMP6(vmLL, allNodes, naMsg(vmLL, vmMAC), false),
		{1, 2, 3},
	} {
		f.Add(b)
	}
	now := time.Unix(1700000000, 0)
	pol := fullPolicy(f)
	from, to := newPipes(f, pol, Policy{BypassConnPerSource: 10, Rules: pol.Rules, Quota: pol.Quota}, now)
	shapePol := fullPolicy(f)
	shapePol.Mode, shapePol.Delay = Shape, time.Millisecond
	shapePol.Rules = mustRules(f, "dns: udp dport 53 pps 100 mode shape\nssh: tcp dport 22 per src pps 5\nrest: any pps 1000 continue")
	shaped, _ := newPipes(f, shapePol, Policy{}, now)
	var frames uint64
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := string(data)
		now = now.Add(100 * time.Microsecond)
		frames++
		for _, p := range []*Pipe{from, to, shaped} {
			v := p.Step(data, now)
			if v.Action > Queue || v.Action == Drop && v.Reason >= NumReasons || v.Class >= classify.NumClasses {
				t.Fatalf("%v: verdict %+v", p.dir, v)
			}
		}
		if _, err := shaped.release(now, discard{}); err != nil {
			t.Fatal(err)
		}
		if string(data) != orig {
			t.Fatal("Step modified its input")
		}
		for _, p := range []*Pipe{from, to} {
			var n uint64
			for _, c := range p.Stats().Classes {
				n += c.PassedPackets + c.DroppedPackets
			}
			if n != frames {
				t.Fatalf("%v: %d frames counted of %d", p.dir, n, frames)
			}
		}
		from.mu.Lock()
		tk := from.top
		for s, pos := range tk.index {
			if pos != 0 && int(tk.heap[pos-1].slot) != s {
				from.mu.Unlock()
				t.Fatalf("top destinations: index slot %d points at heap %d, whose slot is %d", s, pos-1, tk.heap[pos-1].slot)
			}
		}
		from.mu.Unlock()
	})
}
