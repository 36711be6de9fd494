package forward

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
)

// vnetHdr builds a virtio_net_hdr.
func vnetHdr(flags, typ uint8, hdrLen, size, csumStart, csumOff uint16) []byte {
	h := make([]byte, VnetHdrLen)
	h[0], h[1] = flags, typ
	binary.LittleEndian.PutUint16(h[2:], hdrLen)
	binary.LittleEndian.PutUint16(h[4:], size)
	binary.LittleEndian.PutUint16(h[6:], csumStart)
	binary.LittleEndian.PutUint16(h[8:], csumOff)
	return h
}

// gsoFrame is a TCP frame from the VM (IPv4, 20-byte TCP header: 54 bytes
// of headers) with payload bytes, as a GSO segment of size bytes per frame.
func gsoFrame(t testing.TB, payload, size int) (hdr, f []byte) {
	f = frame(t, true, &layers.TCP{SrcPort: 40000, DstPort: 80, ACK: true, Window: 1000}, payload, 0)
	return vnetHdr(vnetFlagNeedsCsum, 1 /* TCPV4 */, 54, uint16(size), 34, 16), f
}

func TestFrameCost(t *testing.T) {
	h, f := gsoFrame(t, 65000, 1448)
	k := (65000 + 1447) / 1448 // 45
	for _, tc := range []struct {
		name  string
		hdr   []byte
		frame []byte
		want  cost
	}{
		{"plain", make([]byte, VnetHdrLen), f, single(len(f))},
		{"no header", nil, f, single(len(f))},
		{"TCPv4 segment", h, f, cost{pkts: k, bytes: k*54 + 65000, largest: 54 + 1448}},
		{"ECN flag", vnetHdr(vnetFlagNeedsCsum, 1|vnetGSOECN, 54, 1448, 34, 16), f, cost{pkts: k, bytes: k*54 + 65000, largest: 54 + 1448}},
		{"UDP L4", vnetHdr(vnetFlagNeedsCsum, vnetGSOUDPL4, 42, 1000, 34, 6), f, cost{pkts: (len(f) - 42 + 999) / 1000, bytes: (len(f)-42+999)/1000*42 + len(f) - 42, largest: 1042}},
		{"GSO size 0", vnetHdr(vnetFlagNeedsCsum, 1, 54, 0, 34, 16), f, single(len(f))},
		{"no checksum start", vnetHdr(0, 1, 54, 1448, 0, 0), f, single(len(f))},
		{"headers past the end", vnetHdr(vnetFlagNeedsCsum, 1, 54, 1448, 60000, 16), f[:100], single(100)},
	} {
		if got := frameCost(tc.hdr, tc.frame); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// A GSO segment is charged as the frames it will become: the packet budget
// loses 45 tokens, the counters count 45 packets and their wire bytes, and
// the next segment, which does not fit what is left, is dropped whole.
func TestGSOSegmentChargedAsItsFrames(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{Aggregate: bucket.Limits{PPS: 100, BurstPackets: 64}}
	from, _ := newPipes(t, pol, Policy{}, now)
	h, f := gsoFrame(t, 65000, 1448)
	w := frameCost(h, f)
	if v := from.step(from.ins[0].cls, f, h, w, now); v.Action != Pass {
		t.Fatalf("first segment: %+v", v)
	}
	if v := from.step(from.ins[0].cls, f, h, w, now); v.Action == Pass || v.Reason != ReasonAggregateBudget {
		t.Fatalf("second segment, 19 tokens left: %+v, want aggregate_budget", v)
	}
	st := from.Stats().Classes[classify.TCP]
	if st.PassedPackets != 45 || st.PassedBytes != uint64(w.bytes) || st.Drops[ReasonAggregateBudget] != 45 {
		t.Errorf("counters %+v, want 45 packets (%d bytes) passed and 45 dropped", st, w.bytes)
	}
	// 19 tokens are left: 19 frames one by one still pass.
	one := frame(t, true, &layers.TCP{SrcPort: 40000, DstPort: 80, ACK: true}, 100, 0)
	for i := range 19 {
		if v := from.Step(one, now); v.Action != Pass {
			t.Fatalf("frame %d after the segment: %+v", i, v)
		}
	}
}

// In shape mode a segment waits in the queue with its header and leaves
// with it, charged as its frames.
func TestGSOSegmentThroughTheShapeQueue(t *testing.T) {
	now := time.Unix(1700000000, 0)
	from, _ := newPipes(t, Policy{Mode: Shape, Delay: time.Millisecond, Aggregate: bucket.Limits{PPS: 1000, BurstPackets: 64}}, Policy{}, now)
	h, f := gsoFrame(t, 65000, 1448)
	if v := from.step(from.ins[0].cls, f, h, frameCost(h, f), now); v.Action != Queue {
		t.Fatalf("not queued: %+v", v)
	}
	out := &hdrRecorder{}
	if _, err := from.release(now.Add(2*time.Millisecond), out); err != nil {
		t.Fatal(err)
	}
	if len(out.hdrs) != 1 || string(out.hdrs[0]) != string(h) || len(out.frames[0]) != len(f) {
		t.Fatalf("released %d frames; header % x, want % x", len(out.hdrs), out.hdrs, h)
	}
	if st := from.Stats().Classes[classify.TCP]; st.PassedPackets != 45 {
		t.Errorf("passed %d packets, want 45", st.PassedPackets)
	}
}

// hdrRecorder keeps the offload headers and frames written to it.
type hdrRecorder struct{ hdrs, frames [][]byte }

func (d *hdrRecorder) Read([][]byte, []int, int) (int, error) { return 0, nil }
func (d *hdrRecorder) Close() error                           { return nil }
func (d *hdrRecorder) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		d.hdrs = append(d.hdrs, append([]byte(nil), b[offset-VnetHdrLen:offset]...))
		d.frames = append(d.frames, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}

// GSO segments reach a reader only while every budget its frames may meet
// holds a whole segment in its burst.
func TestGSOAllowed(t *testing.T) {
	tight := bucket.Limits{PPS: 5000} // a burst of 50 packets
	loose := bucket.Limits{PPS: 1e8}
	bypass := Policy{}
	bypass.Classes[classify.Bypass] = bucket.Limits{PPS: 2000}
	set := mustRules(t, "web: tcp dport 80 pps 5000")
	for _, tc := range []struct {
		name string
		pol  Policy
		role gsoRole
		want bool
	}{
		{"no limits", Policy{}, gsoOthers, true},
		{"never", Policy{}, gsoNever, false},
		{"loose aggregate", Policy{Aggregate: loose}, gsoAll, true},
		{"--pps 5000", Policy{Aggregate: tight}, gsoOthers, false},
		{"--bps 16mbit", Policy{Aggregate: bucket.Limits{BytesPerSec: 2e6}}, gsoOthers, false},
		{"tight bypass, VM tap", bypass, gsoOthers, true},
		{"tight bypass, net tap", bypass, gsoAll, false},
		{"tight rule", Policy{Rules: set}, gsoOthers, false},
	} {
		if got := gsoAllowed(&tc.pol, tc.role); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Forwarding GSO segments read with their headers allocates nothing.
func TestForwardGSOZeroAllocs(t *testing.T) {
	now := time.Unix(1700000000, 0)
	from, _ := newPipes(t, Policy{Aggregate: bucket.Limits{PPS: 1e7}}, Policy{}, now)
	from.out = discard{}
	h, f := gsoFrame(t, 65000, 1448)
	r := newReader(&replayHdr{hdr: h, frame: f}, 0, false)
	step := func() {
		k, _, _ := r.read()
		now = now.Add(time.Millisecond)
		if _, err := from.forwardBatch(from.ins[0].cls, from.out, r, k, now); err != nil {
			t.Fatal(err)
		}
	}
	for range 8 {
		step()
	}
	if a := testing.AllocsPerRun(100, step); a != 0 {
		t.Errorf("%v allocations per batch of segments, want 0", a)
	}
	if st := from.Stats().Classes[classify.TCP]; st.PassedPackets == 0 || st.PassedPackets%45 != 0 {
		t.Errorf("passed %d packets, want a multiple of 45", st.PassedPackets)
	}
}

// replayHdr is replay with an offload header.
type replayHdr struct{ hdr, frame []byte }

func (d *replayHdr) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for i := range bufs {
		copy(bufs[i][offset-VnetHdrLen:], d.hdr)
		sizes[i] = copy(bufs[i][offset:], d.frame)
	}
	return len(bufs), nil
}
func (d *replayHdr) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (d *replayHdr) Close() error                            { return nil }
