package forward

import (
	"encoding/binary"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
)

// Offloads. A tap opened with offloads (see OpenTapQueues) hands the
// forwarder each frame with a virtio_net_hdr in front of it, and may hand
// it a GSO segment: up to 64 KB of one TCP stream with one set of headers,
// which the kernel cuts into frames of at most GSO size payload bytes when
// it leaves the host (or never, when it stays on it). Written to another
// such tap with the same header, it crosses userland once, not 44 times.
//
// The budgets and counters count what goes on the wire: a GSO segment costs
// the frames it will become, each with a copy of its headers.

// VnetHdrLen is the length of the offload header (struct virtio_net_hdr,
// without num_buffers) that precedes every frame in a Device's buffers:
// Read and Write take frames at an offset of at least this (see Device).
const VnetHdrLen = 10

// virtio_net_hdr fields (include/uapi/linux/virtio_net.h).
const (
	vnetFlagNeedsCsum = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM: csum_start, csum_offset are set
	vnetGSONone       = 0    // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOECN        = 0x80 // VIRTIO_NET_HDR_GSO_ECN, a flag on the type
	vnetGSOUDPL4      = 5    // VIRTIO_NET_HDR_GSO_UDP_L4
)

// cost is what a frame costs the budgets and the counters: the frames it
// is on the wire, their bytes (Ethernet headers included, no FCS), and the
// largest of them (for --max-frame).
type cost struct {
	pkts, bytes, largest int
}

// single is the cost of one frame of n bytes.
func single(n int) cost { return cost{1, n, n} }

// frameCost returns the cost of frame, whose offload header is hdr
// (VnetHdrLen bytes; all zero for a plain frame): one frame, or for a GSO
// segment the frames the kernel will cut it into. A header that does not
// add up (no checksum start, headers past the end, a GSO size of 0) makes
// it one frame of its length.
func frameCost(hdr, frame []byte) cost {
	n := len(frame)
	if len(hdr) < VnetHdrLen {
		return single(n)
	}
	typ := hdr[1] &^ vnetGSOECN
	size := int(binary.LittleEndian.Uint16(hdr[4:]))
	if typ == vnetGSONone || size == 0 || hdr[0]&vnetFlagNeedsCsum == 0 {
		return single(n)
	}
	// The kernel sets csum_start to the transport header of a GSO
	// segment: the headers end after it.
	l4 := int(binary.LittleEndian.Uint16(hdr[6:]))
	hl := l4 + 8 // UDP
	if typ != vnetGSOUDPL4 {
		if l4+13 > n {
			return single(n)
		}
		hl = l4 + int(frame[l4+12]>>4)*4 // TCP data offset
	}
	if hl >= n {
		return single(n)
	}
	payload := n - hl
	k := (payload + size - 1) / size
	return cost{pkts: k, bytes: k*hl + payload, largest: hl + min(size, payload)}
}

// gsoSetter is a Device that the kernel may hand GSO segments when allowed
// (a tap opened with offload).
type gsoSetter interface{ SetGSO(on bool) error }

// gsoRole says which budgets an input's frames can meet, for gsoAllowed.
type gsoRole uint8

const (
	gsoNever  gsoRole = iota // the priority tap, and inputs made by NewPipe: no GSO
	gsoOthers                // the VM tap: every budget but bypass and control (steered to the priority tap)
	gsoAll                   // the net tap: every budget, bypass and control included
)

// A GSO segment of TCP is at most 64 KB: about 45 frames of a 1448-byte
// MSS, with their headers about 68 KB on the wire. gsoAllowed asks every
// budget for room for a little more.
const (
	gsoMaxPkts  = 64
	gsoMaxBytes = 80 << 10
)

// gsoAllowed reports whether the reader of an input of role r may be
// handed GSO segments under pol: when every budget its frames can be
// charged to holds a whole segment in its burst. Otherwise a segment would
// be refused whole where its frames, one by one, would have passed in
// part; the kernel then cuts segments into frames before the forwarder
// reads them, as without offloads.
func gsoAllowed(pol *Policy, r gsoRole) bool {
	if r == gsoNever {
		return false
	}
	roomy := func(l bucket.Limits) bool {
		if l.Unlimited() {
			return true
		}
		e := l.Effective()
		return !l.Block && (e.PPS == 0 || e.BurstPackets >= gsoMaxPkts) && (e.BytesPerSec == 0 || e.BurstBytes >= gsoMaxBytes)
	}
	if !roomy(pol.Aggregate) {
		return false
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		if r == gsoOthers && (c == classify.Bypass || c == classify.Control) {
			continue
		}
		if !roomy(pol.Classes[c]) {
			return false
		}
	}
	for i := range pol.Rules.Len() {
		if cl := pol.Rules.Class(i); !roomy(cl.Limits) || !roomy(cl.PerLimits) {
			return false
		}
	}
	return true
}

// applyGSOLocked lets each input's device deliver GSO segments or not, as
// the policy in force allows. Caller holds mu (or owns a pipe no goroutine
// runs yet).
func (p *Pipe) applyGSOLocked() {
	for i := range p.ins {
		in := &p.ins[i]
		s, ok := in.dev.(gsoSetter)
		if !ok {
			continue
		}
		want := gsoAllowed(p.current, in.gso)
		if want == in.gsoOn {
			continue
		}
		if err := s.SetGSO(want); err != nil {
			p.log.Warn("cannot change the tap's offloads", "gso", want, "err", err)
			continue
		}
		in.gsoOn = want
	}
}
