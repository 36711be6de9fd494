package classify

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Idle timeouts of ConnTable entries, measured from the last frame of the
// connection in either direction.
const (
	// EstablishedTimeout applies once both ends have been seen: the
	// initiator sending something other than a bare SYN, and the responder
	// sending anything. An ssh session idle for longer loses its entry; the
	// next frame from the remote side re-creates it.
	EstablishedTimeout = 2 * time.Hour
	// HalfOpenTimeout applies before that: a SYN that was never answered, or
	// a mid-stream frame the other end did not follow up.
	HalfOpenTimeout = 30 * time.Second
)

// OutboundSYNBudget is how many new outbound entries the VM's SYNs may create
// per second in one ConnTable (with Config.BypassOutbound). Further SYNs are
// classified TCPSyn, and a retransmission a second later gets through.
const OutboundSYNBudget = 16

// probeWindow is the number of consecutive slots a key may live in. A lookup
// reads all of them; an insert into a full window evicts one of them.
const probeWindow = 8

// sweepChunk is how many slots Sweep scans per lock acquisition.
const sweepChunk = 1024

// connKey identifies a TCP connection through the VM's port.
type connKey struct {
	vm, remote         [16]byte // addresses; IPv4 as IPv4-mapped IPv6
	vmPort, remotePort uint16
	flags              uint8 // keyIPv6 | keyOutbound
}

const (
	keyIPv6     = 1 << 0
	keyOutbound = 1 << 1 // the VM initiated: never matches an inbound key
)

// set fills k. outbound says the VM is the initiator.
func (k *connKey) set(vm netip.Addr, vmPort uint16, remote netip.Addr, remotePort uint16, outbound bool) {
	k.vm, k.remote = vm.As16(), remote.As16()
	k.vmPort, k.remotePort = vmPort, remotePort
	k.flags = 0
	if vm.Is6() {
		k.flags |= keyIPv6
	}
	if outbound {
		k.flags |= keyOutbound
	}
}

// role is which end of a connection sent a frame.
type role uint8

const (
	initiator role = iota // sent the SYN
	responder             // answered it
)

// Entry state bits.
const (
	stUsed     = 1 << 0
	stInitData = 1 << 1 // the initiator sent something other than a bare SYN
	stRespSeen = 1 << 2 // the responder sent something
	stEstab    = stUsed | stInitData | stRespSeen
)

type connEntry struct {
	key   connKey
	state uint8
	last  int64 // ns, the caller's monotonic clock, of the last frame
}

func (e *connEntry) expired(now int64) bool {
	timeout := int64(HalfOpenTimeout)
	if e.state == stEstab {
		timeout = int64(EstablishedTimeout)
	}
	return now-e.last > timeout
}

// ConnTable is the bounded table of bypass connections of one port, shared
// by the two Classifiers of that port. It is safe for concurrent use: one
// mutex guards it, taken only for TCP frames to or from a bypass port. It
// allocates nothing after NewConnTable.
//
// It is an open-addressing array: a key lives in one of probeWindow (8)
// consecutive slots from its hash, which is seeded per table so that remote
// hosts cannot aim their keys at one window. Expired entries are reclaimed
// when their window is visited, or by Sweep. When a window is full, the
// insert evicts the least recently seen half-open entry of the window or,
// only if all eight are established, the least recently seen of those: a
// flood of SYNs to port 22 mostly evicts its own half-open entries, and an
// established session goes only when its whole window is established
// sessions. Evictions are counted.
type ConnTable struct {
	seed      [4]uint64
	evictions atomic.Uint64

	mu      sync.Mutex
	slots   []connEntry // guarded by mu
	used    int         // occupied slots, guarded by mu
	obStart int64       // start of the current outbound SYN budget second, guarded by mu
	obCount int         // outbound entries created since obStart, guarded by mu
}

// NewConnTable returns an empty table of capacity entries (at least 1), for
// example 65536 (48 bytes each: 3 MiB).
func NewConnTable(capacity int) *ConnTable {
	if capacity < 1 {
		capacity = 1
	}
	t := &ConnTable{slots: make([]connEntry, capacity)}
	for i := range t.seed {
		t.seed[i] = rand.Uint64()
	}
	return t
}

// Len returns the number of occupied entries, expired ones not yet reclaimed
// included; it never exceeds Cap.
func (t *ConnTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.used
}

// Cap returns the capacity in entries.
func (t *ConnTable) Cap() int { return len(t.slots) }

// Evictions returns how many live entries were evicted to make room since
// the table was created.
func (t *ConnTable) Evictions() uint64 { return t.evictions.Load() }

// Sweep removes the entries idle past their timeout at now (monotonic ns)
// and returns how many it removed. It holds the lock for sweepChunk slots at
// a time, so forwarding is not stalled; call it from a housekeeping
// goroutine, for example every minute, to keep Len meaningful.
func (t *ConnTable) Sweep(now int64) int {
	removed := 0
	for start := 0; start < len(t.slots); start += sweepChunk {
		end := min(start+sweepChunk, len(t.slots))
		t.mu.Lock()
		for i := start; i < end; i++ {
			if e := &t.slots[i]; e.state != 0 && e.expired(now) {
				t.removeLocked(i)
				removed++
			}
		}
		t.mu.Unlock()
	}
	return removed
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func (t *ConnTable) hash(k *connKey) uint64 {
	le := binary.LittleEndian
	h := mix(le.Uint64(k.vm[0:8])^t.seed[0], le.Uint64(k.vm[8:16])^t.seed[1])
	h = mix(h^le.Uint64(k.remote[0:8]), le.Uint64(k.remote[8:16])^t.seed[2])
	p := uint64(k.vmPort)<<32 | uint64(k.remotePort)<<16 | uint64(k.flags)
	return mix(h^p, t.seed[3]^0x9e3779b97f4a7c15)
}

// start maps a hash to the first slot of its window.
func (t *ConnTable) start(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(t.slots)))
	return int(hi)
}

// windowLen is the number of slots in a window.
func (t *ConnTable) windowLen() int { return min(probeWindow, len(t.slots)) }

func (t *ConnTable) removeLocked(i int) {
	t.slots[i] = connEntry{}
	t.used--
}

// findLocked returns the slot holding k, or -1, reclaiming the expired
// entries of k's window on the way.
func (t *ConnTable) findLocked(k *connKey, h uint64, now int64) int {
	i, n := t.start(h), len(t.slots)
	for range t.windowLen() {
		if e := &t.slots[i]; e.state != 0 {
			if e.expired(now) {
				t.removeLocked(i)
			} else if e.key == *k {
				return i
			}
		}
		if i++; i == n {
			i = 0
		}
	}
	return -1
}

// insertLocked stores k in its window, which findLocked has just swept of
// expired entries, evicting if the window is full.
func (t *ConnTable) insertLocked(k *connKey, h uint64, now int64, state uint8) {
	i, n := t.start(h), len(t.slots)
	victim := -1
	for range t.windowLen() {
		e := &t.slots[i]
		if e.state == 0 {
			victim = i
			break
		}
		if victim < 0 {
			victim = i
		} else if v := &t.slots[victim]; (v.state == stEstab) != (e.state == stEstab) {
			if v.state == stEstab { // prefer a half-open victim
				victim = i
			}
		} else if e.last < v.last {
			victim = i
		}
		if i++; i == n {
			i = 0
		}
	}
	if t.slots[victim].state != 0 {
		t.evictions.Add(1)
		t.used--
	}
	t.slots[victim] = connEntry{key: *k, state: state, last: now}
	t.used++
}

// takeBudgetLocked reports whether one more outbound entry may be created at
// now, and counts it.
func (t *ConnTable) takeBudgetLocked(now int64) bool {
	if now-t.obStart >= int64(time.Second) || now < t.obStart {
		t.obStart, t.obCount = now, 0
	}
	if t.obCount >= OutboundSYNBudget {
		return false
	}
	t.obCount++
	return true
}

// observe records a TCP segment with flags sent by r on connection k at now
// (monotonic ns) and reports whether it is Bypass:
//
//   - an entry exists: refresh it and say yes; RST removes it (still yes).
//     A bare SYN from the responder is never yes.
//   - no entry, a bare SYN from the initiator: create a half-open entry (if
//     budgeted, only within OutboundSYNBudget) and say yes.
//   - no entry, ACK without SYN or RST, and mayJoin (the frame comes from
//     the remote host): create an entry for a connection that predates the
//     quarantine and say yes.
//   - otherwise no.
func (t *ConnTable) observe(k *connKey, now int64, flags uint8, r role, mayJoin, budgeted bool) bool {
	syn, ack, rst := flags&TCPFlagSYN != 0, flags&TCPFlagACK != 0, flags&TCPFlagRST != 0
	bareSyn := syn && !ack
	if r == responder && bareSyn {
		return false
	}
	h := t.hash(k)
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := t.findLocked(k, h, now); i >= 0 {
		if rst {
			t.removeLocked(i)
			return true
		}
		e := &t.slots[i]
		e.last = now
		switch {
		case bareSyn: // the initiator opens again on the same 4-tuple
			e.state = stUsed
		case r == initiator && !syn:
			e.state |= stInitData
		case r == responder:
			e.state |= stRespSeen
		}
		return true
	}
	var state uint8
	switch {
	case rst:
		return false
	case bareSyn:
		if budgeted && !t.takeBudgetLocked(now) {
			return false
		}
		state = stUsed
	case mayJoin && ack && !syn:
		state = stUsed | stInitData
		if r == responder {
			state = stUsed | stRespSeen
		}
	default:
		return false
	}
	t.insertLocked(k, h, now, state)
	return true
}
