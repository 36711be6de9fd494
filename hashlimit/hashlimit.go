// Package hashlimit keeps one token bucket per address in a bounded table,
// like iptables' hashlimit: per source to stop one host brute-forcing a
// VM's ssh without hurting the others, per destination to stop a VM
// hammering one victim.
//
// Each entry holds a packet bucket and a byte bucket as GCRA timestamps in
// integer nanoseconds (the time at which the bucket will be full again), so
// an entry is 40 bytes and a check is a few integer operations. An entry
// whose buckets are full carries no information: it is free for reuse, so
// the table needs no idle timeout. The table never grows; when the slots a
// new key may use are all taken, the one that will be full again soonest
// (the least limited) is evicted. A host being limited keeps its entry; a
// flood of new keys mostly evicts itself.
//
// A Table has one owner: the forwarding goroutines of one direction of one
// port, under that direction's mutex. It is not safe for concurrent use. It
// allocates nothing after New. Times are the caller's monotonic clock in
// nanoseconds.
package hashlimit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/netip"

	"github.com/shaperd/shaperd/bucket"
)

// Bounds of Config.Size.
const (
	// DefaultSize is the number of entries when Config.Size is 0: 4096
	// entries, 160 KiB.
	DefaultSize = 4096
	// MaxSize bounds Config.Size: 1Mi entries, 40 MiB.
	MaxSize = 1 << 20
	// EntryBytes is the memory of one entry.
	EntryBytes = 40
)

// Default prefix lengths of the key: a host for IPv4, a subnet for IPv6,
// where one host usually holds a whole /64 and could otherwise rotate its
// source address to escape its bucket.
const (
	DefaultBitsV4 = 32
	DefaultBitsV6 = 64
)

// probeWindow is the number of consecutive slots a key may live in.
const probeWindow = 8

// ErrInvalidConfig is wrapped by every error of Config.Validate and New;
// the message names the setting to fix. Report it; do not retry.
var ErrInvalidConfig = errors.New("invalid hashlimit")

// Config configures a Table. The zero value is a table of DefaultSize
// entries without limits, which admits everything.
type Config struct {
	// Limits apply to each key separately: PPS and BytesPerSec are the
	// rates of one key's buckets, BurstPackets and BurstBytes their depths
	// (0 for the defaults of bucket.Limits.Effective), Block refuses every
	// frame.
	Limits bucket.Limits
	// Size is the number of entries, at most MaxSize; 0 means DefaultSize.
	Size int
	// BitsV4 and BitsV6 are the prefix lengths that make a key: addresses
	// that share them share a bucket. 0 means DefaultBitsV4 (32) and
	// DefaultBitsV6 (64).
	BitsV4, BitsV6 int
}

// Validate checks c; errors wrap ErrInvalidConfig or
// bucket.ErrInvalidLimits.
func (c Config) Validate() error {
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	switch {
	case c.Size < 0 || c.Size > MaxSize:
		return fmt.Errorf("%w: table size %d: want 1 to %d entries, or 0 for %d", ErrInvalidConfig, c.Size, MaxSize, DefaultSize)
	case c.BitsV4 < 0 || c.BitsV4 > 32:
		return fmt.Errorf("%w: IPv4 prefix length %d: want 1 to 32, or 0 for %d", ErrInvalidConfig, c.BitsV4, DefaultBitsV4)
	case c.BitsV6 < 0 || c.BitsV6 > 128:
		return fmt.Errorf("%w: IPv6 prefix length %d: want 1 to 128, or 0 for %d", ErrInvalidConfig, c.BitsV6, DefaultBitsV6)
	}
	return nil
}

// key is an address masked to its prefix, IPv4 as IPv4-mapped, and its
// family (0 for a frame without an address, 4 or 6).
type key struct {
	addr   [16]byte
	family uint8
}

type entry struct {
	key  key
	used bool
	// tatP and tatB are when the packet and byte buckets will be full
	// again (GCRA's theoretical arrival time), ns; at or before now the
	// bucket is full.
	tatP, tatB int64
}

// Table is a bounded table of per-key buckets; see the package comment.
// The zero value is not usable; call New.
type Table struct {
	seed  [3]uint64
	slots []entry
	used  int

	block bool
	// Packet bucket: nsPerPkt is one packet's worth of time, tauP the
	// depth in time (burst × nsPerPkt); 0 without a packet rate.
	nsPerPkt, tauP int64
	// Byte bucket: nsPerByte is one byte's worth of time; tauB the depth
	// in time; 0 without a byte rate.
	nsPerByte float64
	tauB      int64

	bitsV4, bitsV6 int
	limits         bucket.Limits
	evictions      uint64
}

// New returns an empty table, or an error from c.Validate.
func New(c Config) (*Table, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	size := c.Size
	if size == 0 {
		size = DefaultSize
	}
	t := &Table{slots: make([]entry, size), bitsV4: c.BitsV4, bitsV6: c.BitsV6}
	if t.bitsV4 == 0 {
		t.bitsV4 = DefaultBitsV4
	}
	if t.bitsV6 == 0 {
		t.bitsV6 = DefaultBitsV6
	}
	for i := range t.seed {
		t.seed[i] = rand.Uint64()
	}
	t.setLimits(c.Limits)
	return t, nil
}

// SetLimits changes the per-key limits in place at now (monotonic ns),
// keeping the entries: what a key has used of its buckets carries over as
// time, capped at the new depths. It validates l first; on error t is
// unchanged. It walks the whole table: call it on a policy change, not per
// frame.
func (t *Table) SetLimits(l bucket.Limits, now int64) error {
	if err := l.Validate(); err != nil {
		return err
	}
	t.setLimits(l)
	for i := range t.slots {
		e := &t.slots[i]
		e.tatP = min(e.tatP, now+t.tauP)
		e.tatB = min(e.tatB, now+t.tauB)
	}
	return nil
}

func (t *Table) setLimits(l bucket.Limits) {
	e := l.Effective()
	t.limits, t.block = l, l.Block
	t.nsPerPkt, t.tauP, t.nsPerByte, t.tauB = 0, 0, 0, 0
	if e.PPS > 0 {
		t.nsPerPkt = durNS(1e9 / e.PPS)
		t.tauP = durNS(float64(e.BurstPackets) * 1e9 / e.PPS)
	}
	if e.BytesPerSec > 0 {
		t.nsPerByte = 1e9 / e.BytesPerSec
		t.tauB = durNS(float64(e.BurstBytes) * t.nsPerByte)
	}
}

// durNS converts a duration in ns to int64, saturating, at least 1.
func durNS(ns float64) int64 {
	if ns >= math.MaxInt64/4 {
		return math.MaxInt64 / 4
	}
	return max(int64(math.Ceil(ns)), 1)
}

// Limits returns the per-key limits as configured.
func (t *Table) Limits() bucket.Limits { return t.limits }

// Len returns the number of entries in use, including those whose buckets
// have refilled since and will be reused; never more than Cap.
func (t *Table) Len() int { return t.used }

// Cap returns the number of entries.
func (t *Table) Cap() int { return len(t.slots) }

// Evictions returns how many entries that still held a debt were evicted
// to make room for another key.
func (t *Table) Evictions() uint64 { return t.evictions }

// Ref is a slot of the table, from Lookup, valid until the next Lookup.
type Ref int

// keyOf masks addr to the table's prefix lengths.
func (t *Table) keyOf(addr netip.Addr) key {
	var k key
	switch {
	case addr.Is4():
		p, _ := addr.Prefix(t.bitsV4)
		k.addr, k.family = p.Addr().As16(), 4
	case addr.Is6():
		p, _ := addr.Prefix(t.bitsV6)
		k.addr, k.family = p.Addr().As16(), 6
	}
	return k
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func (t *Table) hash(k *key) uint64 {
	le := binary.LittleEndian
	h := mix(le.Uint64(k.addr[0:8])^t.seed[0], le.Uint64(k.addr[8:16])^t.seed[1])
	return mix(h^uint64(k.family), t.seed[2]^0x9e3779b97f4a7c15)
}

// full reports whether both buckets of e are full at now: e carries no
// information.
func (e *entry) full(now int64) bool { return e.tatP <= now && e.tatB <= now }

// Lookup returns the slot of addr's key at now (monotonic ns), creating it
// with full buckets if it is not in the table. A full window is made room
// in by reusing an entry whose buckets have refilled, or else by evicting
// the one that will refill soonest. It always succeeds and allocates
// nothing.
func (t *Table) Lookup(addr netip.Addr, now int64) Ref {
	k := t.keyOf(addr)
	n := len(t.slots)
	hi, _ := bits.Mul64(t.hash(&k), uint64(n))
	free, evict := -1, -1 // the first reusable slot; the slot that refills soonest
	var evictTat int64
	for i, j := int(hi), 0; j < min(probeWindow, n); j++ {
		e := &t.slots[i]
		switch {
		case e.used && e.key == k:
			return Ref(i)
		case !e.used || e.full(now):
			if free < 0 {
				free = i
			}
		default:
			if tat := max(e.tatP, e.tatB); evict < 0 || tat < evictTat {
				evict, evictTat = i, tat
			}
		}
		if i++; i == n {
			i = 0
		}
	}
	victim := free
	if victim < 0 {
		victim = evict
		t.evictions++
	}
	if !t.slots[victim].used {
		t.used++
	}
	t.slots[victim] = entry{key: k, used: true, tatP: now, tatB: now}
	return Ref(victim)
}

// Fits reports whether the key at r may send a frame of n bytes at now:
// not blocked, a packet and n bytes in its buckets. It charges nothing.
func (t *Table) Fits(r Ref, now int64, n int) bool { return t.FitsN(r, now, 1, n) }

// FitsN is Fits for k frames of n bytes in all (a GSO segment that the
// kernel will send as k frames).
func (t *Table) FitsN(r Ref, now int64, k, n int) bool {
	if t.block {
		return false
	}
	e := &t.slots[r]
	if t.nsPerPkt > 0 && max(e.tatP, now)+int64(k)*t.nsPerPkt-now > t.tauP {
		return false
	}
	if t.nsPerByte > 0 && max(e.tatB, now)+t.byteCost(n)-now > t.tauB {
		return false
	}
	return true
}

// Take charges a frame of n bytes to the key at r at now. Call it after
// Fits said yes at the same now (or use Admit).
func (t *Table) Take(r Ref, now int64, n int) { t.TakeN(r, now, 1, n) }

// TakeN is Take for k frames of n bytes in all (see FitsN).
func (t *Table) TakeN(r Ref, now int64, k, n int) {
	if t.block {
		return
	}
	e := &t.slots[r]
	if t.nsPerPkt > 0 {
		e.tatP = max(e.tatP, now) + int64(k)*t.nsPerPkt
	}
	if t.nsPerByte > 0 {
		e.tatB = max(e.tatB, now) + t.byteCost(n)
	}
}

func (t *Table) byteCost(n int) int64 { return int64(float64(n) * t.nsPerByte) }

// Admit looks addr up and, if its buckets admit a frame of n bytes at now,
// charges them and reports true.
func (t *Table) Admit(addr netip.Addr, now int64, n int) bool {
	r := t.Lookup(addr, now)
	if !t.Fits(r, now, n) {
		return false
	}
	t.Take(r, now, n)
	return true
}
