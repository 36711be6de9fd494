package forward

import (
	"cmp"
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/shaperd/shaperd/classify"
)

// TopDestCapacity is how many destinations the from-VM pipe tracks: a
// destination that takes more than 1/TopDestCapacity of the VM's frames is
// sure to be among them, and every count is within Dest.MaxOvercount of
// the truth.
const TopDestCapacity = 64

// Dest is one of the VM's top destinations.
type Dest struct {
	// Addr is the destination address; Port the TCP or UDP destination
	// port (0 for other protocols and later fragments); Proto the IP
	// protocol number.
	Addr  netip.Addr
	Port  uint16
	Proto uint8
	// Packets is how many frames the VM sent to it, dropped ones
	// included, since the pipe started: an estimate from one frame in
	// TopDestSample, which may also exceed the sampled count by at most
	// MaxOvercount (space-saving: a destination that took the place of an
	// evicted one inherits its count).
	Packets      uint64
	MaxOvercount uint64
}

// ProtoName returns "tcp", "udp", "icmp", "icmpv6", or the number, for
// status output.
func (d Dest) ProtoName() string {
	switch d.Proto {
	case classify.ProtoTCP:
		return "tcp"
	case classify.ProtoUDP:
		return "udp"
	case classify.ProtoICMP:
		return "icmp"
	case classify.ProtoICMPv6:
		return "icmpv6"
	}
	return itoa(int(d.Proto))
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [8]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// destKey identifies a destination.
type destKey struct {
	addr  [16]byte
	port  uint16
	proto uint8
	v6    bool
}

type topEntry struct {
	key   destKey
	count uint64
	over  uint64 // the count inherited from the evicted entry
	slot  int32  // where the index points at this entry
}

// topK counts packets per destination in bounded space with the
// space-saving algorithm: a min-heap of TopDestCapacity counters and an
// open-addressing index from key to heap position. A new destination
// replaces the smallest counter and inherits its count. add is O(log K)
// and allocates nothing. Guarded by the pipe's mu.
type topK struct {
	heap  []topEntry // min-heap by count
	index []int32    // heap position + 1; 0 is empty; linear probing
	seed  [2]uint64
	rnd   uint64 // xorshift state for sampling
}

// TopDestSample is the sampling rate of the destination table: each frame
// is counted with probability 1/TopDestSample, as TopDestSample frames.
// Under a flood of hundreds of thousands of frames per second a counted
// frame costs about 30 ns on the reader's core, CPU that the rest of the
// host's datapath (Open vSwitch's userspace threads, on a small machine)
// misses: measured, counting every frame cost the OVS lab 3% of the
// delivered rate. Random, not every n-th, so a flood that cycles through
// destinations is not aliased.
const TopDestSample = 8

func newTopK() *topK {
	t := &topK{heap: make([]topEntry, 0, TopDestCapacity), index: make([]int32, 2*TopDestCapacity)}
	t.seed[0], t.seed[1] = rand.Uint64(), rand.Uint64()
	t.rnd = rand.Uint64() | 1
	return t
}

func (t *topK) hash(k *destKey) int {
	le := binary.LittleEndian
	hi, lo := bits.Mul64(le.Uint64(k.addr[0:8])^t.seed[0], le.Uint64(k.addr[8:16])^t.seed[1])
	h := hi ^ lo ^ uint64(k.port)<<8 ^ uint64(k.proto)
	hi, lo = bits.Mul64(h, 0x9e3779b97f4a7c15)
	return int((hi ^ lo) & uint64(len(t.index)-1))
}

// add counts one frame to f's destination, if f has one: one frame in
// TopDestSample on average, as TopDestSample frames.
func (t *topK) add(f *classify.Frame) {
	t.rnd ^= t.rnd << 13
	t.rnd ^= t.rnd >> 7
	t.rnd ^= t.rnd << 17
	if t.rnd%TopDestSample != 0 {
		return
	}
	t.addN(f, TopDestSample)
}

// addN counts w frames to f's destination, if f has one.
func (t *topK) addN(f *classify.Frame, w uint64) {
	if !f.DstIP.IsValid() {
		return
	}
	k := destKey{addr: f.DstIP.As16(), proto: f.Proto, v6: f.IPVersion == 6}
	if f.IsTCP() || f.IsUDP() {
		k.port = f.DstPort
	}
	mask := len(t.index) - 1
	s := t.hash(&k)
	for ; t.index[s] != 0; s = (s + 1) & mask {
		if i := int(t.index[s] - 1); t.heap[i].key == k {
			t.heap[i].count += w
			t.down(i)
			return
		}
	}
	if len(t.heap) < cap(t.heap) {
		t.heap = append(t.heap, topEntry{key: k, count: w, slot: int32(s)})
		i := len(t.heap) - 1
		t.index[s] = int32(i + 1)
		t.up(i)
		return
	}
	// Replace the smallest counter. Remove its key from the index first:
	// that may move slots, so look the new key's slot up again.
	low := &t.heap[0]
	t.unindex(int(low.slot))
	c := low.count
	s = t.hash(&k)
	for t.index[s] != 0 {
		s = (s + 1) & mask
	}
	*low = topEntry{key: k, count: c + w, over: c, slot: int32(s)}
	t.index[s] = 1
	t.down(0)
}

// unindex empties index slot s, shifting back the entries after it that
// would no longer be found (linear probing's deletion without tombstones).
func (t *topK) unindex(s int) {
	mask := len(t.index) - 1
	t.index[s] = 0
	for j := (s + 1) & mask; t.index[j] != 0; j = (j + 1) & mask {
		e := &t.heap[t.index[j]-1]
		home := t.hash(&e.key)
		// Move e to s if s lies cyclically in [home, j).
		if (j-home)&mask >= (j-s)&mask {
			t.index[s], t.index[j] = t.index[j], 0
			e.slot = int32(s)
			s = j
		}
	}
}

func (t *topK) swap(i, j int) {
	h := t.heap
	h[i], h[j] = h[j], h[i]
	t.index[h[i].slot] = int32(i + 1)
	t.index[h[j].slot] = int32(j + 1)
}

func (t *topK) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if t.heap[p].count <= t.heap[i].count {
			return
		}
		t.swap(i, p)
		i = p
	}
}

func (t *topK) down(i int) {
	n := len(t.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && t.heap[r].count < t.heap[l].count {
			m = r
		}
		if t.heap[i].count <= t.heap[m].count {
			return
		}
		t.swap(i, m)
		i = m
	}
}

// top appends the k largest counters to dst, largest first.
func (t *topK) top(dst []Dest, k int) []Dest {
	start := len(dst)
	for _, e := range t.heap {
		d := Dest{Port: e.key.port, Proto: e.key.proto, Packets: e.count, MaxOvercount: e.over}
		d.Addr = netip.AddrFrom16(e.key.addr)
		if !e.key.v6 {
			d.Addr = d.Addr.Unmap()
		}
		dst = append(dst, d)
	}
	out := dst[start:]
	slices.SortFunc(out, func(a, b Dest) int {
		if c := cmp.Compare(b.Packets, a.Packets); c != 0 {
			return c
		}
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	return dst[:start+min(k, len(out))]
}

// TopDestinations appends to dst the k destinations the VM sent the most
// frames to (address, port, protocol, packets), most first, and returns
// it. Only the from-VM pipe counts destinations; the to-VM pipe returns
// dst unchanged. Frames without an IP destination are not counted. It
// briefly takes mu; call it for status, not per frame. Safe for
// concurrent use.
func (p *Pipe) TopDestinations(dst []Dest, k int) []Dest {
	if p.top == nil || k <= 0 {
		return dst
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.top.top(dst, k)
}
