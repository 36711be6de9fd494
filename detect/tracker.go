// Package detect turns interface counters into per-port rates and flags the
// ports whose traffic stays above a threshold: the watch side of shaperd's
// automatic quarantine.
//
// The daemon's watch loop reads the counters of the watched ports every
// --watch-interval (netlink, or ReadCounters) and hands the snapshot to
// Tracker.Observe with the time of the reading; time is a parameter, never
// read here. For each port the Tracker keeps the rates of the last interval
// and a window (5 minutes by default) of per-interval deltas, which give the
// seed's LASTPPS, LASTBW and AVGPKT = LASTBW / LASTPPS, and it reports the
// ports that stay above a Threshold for --flag-after. The short-term rates
// are those of the last interval, not a moving average, so that a flood
// shows in full at the first observation after it starts.
//
// Which ports are watched is a Matcher (--watch, --exclude). How many flagged
// ports may be quarantined at once (--max-auto) is the daemon's decision;
// SplitAtCap helps with it.
//
// Nothing here starts a goroutine or takes a lock.
package detect

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Sample is one reading of a port's interface counters, as the kernel keeps
// them (/sys/class/net/PORT/statistics, or netlink's IFLA_STATS64). Bytes are
// as the driver counts them: for a tap, the frame with its Ethernet header
// and without FCS (lo counts the IP packet only).
//
// On the hypervisor the port is the host's end of the VM's tap: frames FROM
// the VM are the port's RX (RxPackets, RxBytes), and frames TO the VM are its
// TX (TxPackets, TxBytes). The RX counters are incremented by the driver
// before tc ingress, so they keep showing the VM's offered load after the
// port is spliced, policed frames included.
type Sample struct {
	RxPackets, RxBytes, TxPackets, TxBytes uint64
}

// DirRates are the rates of one direction of a port over some span.
type DirRates struct {
	// PPS is in packets (frames) per second.
	PPS float64
	// BitsPerSec is in bits per second of frame bytes (8 × bytes/s).
	BitsPerSec float64
	// AvgFrame is the average frame size in bytes: bytes / packets over the
	// span, or 0 when no frame was counted.
	AvgFrame float64
}

// Rates are a port's rates in both directions over Span, ending At.
type Rates struct {
	// FromVM are the frames sent by the VM (the port's RX).
	FromVM DirRates
	// ToVM are the frames sent to the VM (the port's TX).
	ToVM DirRates
	// Span is the time the rates are averaged over: one observation
	// interval for Tracker.Rates, up to Config.Window for
	// Tracker.WindowRates.
	Span time.Duration
	// At is the time of the latest observation in the span.
	At time.Time
}

// Flag reports a port that has stayed above the threshold for FlagAfter.
type Flag struct {
	// Port is the interface name.
	Port string
	// Since is the start of the observation interval from which the port
	// has been above the threshold without a break.
	Since time.Time
	// At is the time of the observation that flagged the port.
	At time.Time
	// Rates are the port's rates over its latest interval: the one ending
	// At for a flag returned by Observe, the latest one for AppendFlagged.
	Rates Rates
}

// Config configures a Tracker. Start from DefaultConfig; the zero Config
// fails Validate.
type Config struct {
	// Interval is the expected time between observations (--watch-interval,
	// default 500 ms). It sizes each port's history ring to Window/Interval
	// + 1 intervals. Observations may come at other intervals, each weighted
	// by its own length; if they come faster than Interval, the ring fills
	// before it covers Window and the window is that much shorter.
	Interval time.Duration
	// Window is the span of the long-term rates (LASTPPS, LASTBW, AVGPKT),
	// default 5 minutes.
	Window time.Duration
	// FlagAfter is how long a port must stay above Threshold to be flagged
	// (--flag-after, default 1 s). Time above counts from the start of the
	// first observation interval above the threshold, so with a 500 ms
	// interval a flood is flagged on its second observation; any FlagAfter
	// up to Interval flags on the first observation above.
	FlagAfter time.Duration
	// ReArmAfter is how long a flagged port must stay at or below Threshold
	// before it can be flagged again (default 10 s). A port is reported by
	// Observe once per episode, not on every observation; the re-arm time
	// keeps a port that hovers around the threshold from being reported
	// again at every crossing.
	ReArmAfter time.Duration
	// Threshold is the rate above which a port is suspect.
	Threshold Threshold
	// MaxPorts caps the number of ports tracked (default 1024). A new port
	// beyond it is not tracked; Untracked counts such ports. A port that is
	// gone frees its place in the same Observe. Memory per port is about 40
	// bytes per Window/Interval (24 KiB at the defaults).
	MaxPorts int
}

// DefaultConfig returns the defaults: 500 ms interval, 5 minute window, 1 s
// flag-after, 10 s re-arm, DefaultThreshold, 1024 ports.
func DefaultConfig() Config {
	return Config{
		Interval:   500 * time.Millisecond,
		Window:     5 * time.Minute,
		FlagAfter:  time.Second,
		ReArmAfter: 10 * time.Second,
		Threshold:  DefaultThreshold(),
		MaxPorts:   1024,
	}
}

// maxSlots bounds a port's history ring, and with it Window / Interval.
const maxSlots = 1 << 16

// Validate checks c and returns an error naming the flag or key to fix and
// wrapping ErrInvalidConfig, or nil.
func (c Config) Validate() error {
	if c.Interval <= 0 {
		return invalid("--watch-interval %v: want a positive duration such as 500ms", c.Interval)
	}
	if c.Window < c.Interval {
		return invalid("window %v is shorter than --watch-interval %v", c.Window, c.Interval)
	}
	if slots(c) > maxSlots {
		return invalid("--watch-interval %v is too short for a %v window: at least %v",
			c.Interval, c.Window, (c.Window+maxSlots-2)/(maxSlots-1))
	}
	if c.FlagAfter < 0 {
		return invalid("--flag-after %v is negative; want a duration such as 1s", c.FlagAfter)
	}
	if c.ReArmAfter < 0 {
		return invalid("rearm_after %v is negative; want a duration such as 10s", c.ReArmAfter)
	}
	if c.MaxPorts <= 0 {
		return invalid("max_ports %d: want a positive number of ports", c.MaxPorts)
	}
	return c.Threshold.Validate()
}

// slots is the capacity of a port's ring: enough intervals to cover Window,
// plus one so that a window of exactly Window fits when the oldest interval
// is about to be dropped.
func slots(c Config) int64 {
	n := int64(c.Window / c.Interval)
	if c.Window%c.Interval != 0 {
		n++
	}
	return n + 1
}

// slot is the change of a port's counters over one observation interval.
type slot struct {
	dt                 time.Duration
	rxp, rxb, txp, txb uint64
}

func (s *slot) add(d slot) {
	s.dt += d.dt
	s.rxp += d.rxp
	s.rxb += d.rxb
	s.txp += d.txp
	s.txb += d.txb
}

func (s *slot) sub(d slot) {
	s.dt -= d.dt
	s.rxp -= d.rxp
	s.rxb -= d.rxb
	s.txp -= d.txp
	s.txb -= d.txb
}

func (s slot) rates(at time.Time) Rates {
	sec := s.dt.Seconds()
	return Rates{
		FromVM: dirRates(s.rxp, s.rxb, sec),
		ToVM:   dirRates(s.txp, s.txb, sec),
		Span:   s.dt,
		At:     at,
	}
}

func dirRates(packets, bytes uint64, sec float64) DirRates {
	r := DirRates{PPS: float64(packets) / sec, BitsPerSec: 8 * float64(bytes) / sec}
	if packets > 0 {
		r.AvgFrame = float64(bytes) / float64(packets)
	}
	return r
}

// port is what a Tracker keeps of one port.
type port struct {
	last   Sample    // counters at lastAt
	lastAt time.Time // time of the latest reading
	cur    slot      // the latest interval; cur.dt == 0 until there is one

	ring []slot // per-interval deltas, oldest at head
	head int
	n    int
	sum  slot // sum of the n slots in ring

	above      bool      // the latest interval was above the threshold
	aboveSince time.Time // start of the run of intervals above
	flagged    bool      // reported, not yet re-armed
	flagSince  time.Time // aboveSince when flagged
	flagAt     time.Time // when flagged
	below      bool      // flagged and the latest interval was not above
	belowSince time.Time // start of the run of intervals not above
}

// restart makes s at now the port's baseline and forgets its history and
// flag state.
func (p *port) restart(now time.Time, s Sample) {
	ring := p.ring
	*p = port{last: s, lastAt: now, ring: ring}
}

func (p *port) push(d slot, window time.Duration) {
	if p.n == len(p.ring) {
		p.pop()
	}
	p.ring[(p.head+p.n)%len(p.ring)] = d
	p.n++
	p.sum.add(d)
	// Keep the shortest run of newest intervals that covers window.
	for p.n > 1 && p.sum.dt-p.ring[p.head].dt >= window {
		p.pop()
	}
}

func (p *port) pop() {
	p.sum.sub(p.ring[p.head])
	p.head = (p.head + 1) % len(p.ring)
	p.n--
}

// Tracker keeps the rates of a set of ports and flags those above a
// threshold. It belongs to the daemon's watch loop and is not safe for
// concurrent use; the daemon copies what status needs (Rates, Window,
// AppendFlagged) under its own lock.
//
// Memory is bounded: at most Config.MaxPorts ports, each with a fixed ring.
// Observe on a steady set of ports allocates nothing.
type Tracker struct {
	cfg       Config
	slots     int
	ports     map[string]*port
	flags     []Flag // Observe's result, reused
	untracked int
}

// NewTracker returns an empty Tracker, or an error from c.Validate.
func NewTracker(c Config) (*Tracker, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Tracker{cfg: c, slots: int(slots(c)), ports: make(map[string]*port)}, nil
}

// Config returns the configuration t was built with.
func (t *Tracker) Config() Config { return t.cfg }

// Observe records a reading of the counters of every watched port, taken
// at now, and returns the ports flagged by it: those whose traffic has now
// been above the threshold for FlagAfter, highest offered pps first (in the
// threshold's direction), then by name.
//
// The returned slice is reused by the next Observe; copy it to keep it. A
// port is returned once per episode: it can be returned again only after it
// has stayed at or below the threshold for ReArmAfter.
//
// counters must hold every watched port:
//   - a port seen for the first time gets a baseline, and rates from the
//     next observation on;
//   - a port missing from counters is forgotten with its history (it
//     disappeared, or is no longer watched);
//   - a port whose counters went down was re-created (or reset): its
//     history restarts from this reading. A single 32-bit counter that went
//     down from its upper half to a value consistent with its pair (bytes
//     per packet between 1 and 128 KiB) is taken as a wrap instead;
//   - a reading not later than the port's previous one is ignored.
func (t *Tracker) Observe(now time.Time, counters map[string]Sample) []Flag {
	t.flags = t.flags[:0]
	t.untracked = 0
	for name := range t.ports {
		if _, ok := counters[name]; !ok {
			delete(t.ports, name)
		}
	}
	for name, s := range counters {
		p := t.ports[name]
		if p == nil {
			if len(t.ports) >= t.cfg.MaxPorts {
				t.untracked++
				continue
			}
			p = &port{ring: make([]slot, t.slots)}
			p.restart(now, s)
			t.ports[name] = p
			continue
		}
		dt := now.Sub(p.lastAt)
		if dt <= 0 {
			continue
		}
		d, ok := delta(p.last, s)
		if !ok {
			p.restart(now, s)
			continue
		}
		d.dt = dt
		prevAt := p.lastAt
		p.last, p.lastAt, p.cur = s, now, d
		p.push(d, t.cfg.Window)
		if t.flag(p, prevAt, now) {
			t.flags = append(t.flags, Flag{Port: name, Since: p.aboveSince, At: now, Rates: d.rates(now)})
		}
	}
	t.sortFlags(t.flags)
	return t.flags
}

// flag updates p's threshold state for the interval (prevAt, now] and
// reports whether p is newly flagged.
func (t *Tracker) flag(p *port, prevAt, now time.Time) bool {
	if t.cfg.Threshold.Above(p.cur.rates(now)) {
		p.below = false
		if !p.above {
			p.above, p.aboveSince = true, prevAt
		}
		if !p.flagged && now.Sub(p.aboveSince) >= t.cfg.FlagAfter {
			p.flagged, p.flagSince, p.flagAt = true, p.aboveSince, now
			return true
		}
		return false
	}
	p.above = false
	if p.flagged {
		if !p.below {
			p.below, p.belowSince = true, prevAt
		}
		if now.Sub(p.belowSince) >= t.cfg.ReArmAfter {
			p.flagged, p.below = false, false
		}
	}
	return false
}

func (t *Tracker) sortFlags(f []Flag) {
	th := t.cfg.Threshold
	slices.SortFunc(f, func(a, b Flag) int {
		pa, _ := th.Offered(a.Rates)
		pb, _ := th.Offered(b.Rates)
		if c := cmp.Compare(pb, pa); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
}

// delta returns the change from prev to cur, with a 32-bit wrap undone, or
// ok false if the counters were reset. See Observe for the rules.
func delta(prev, cur Sample) (d slot, ok bool) {
	var rxp, rxb, txp, txb counterDelta
	rxp, rxb = diff(prev.RxPackets, cur.RxPackets), diff(prev.RxBytes, cur.RxBytes)
	txp, txb = diff(prev.TxPackets, cur.TxPackets), diff(prev.TxBytes, cur.TxBytes)
	if !direction(rxp, rxb) || !direction(txp, txb) {
		return slot{}, false
	}
	return slot{rxp: rxp.d, rxb: rxb.d, txp: txp.d, txb: txb.d}, true
}

type counterDelta struct {
	d       uint64
	wrapped bool
	reset   bool
}

// diff is cur - prev for one counter. A counter that went down wrapped if
// it is a 32-bit counter that was in its upper half; otherwise it was reset.
func diff(prev, cur uint64) counterDelta {
	switch {
	case cur >= prev:
		return counterDelta{d: cur - prev}
	case prev <= math.MaxUint32 && prev >= 1<<31:
		return counterDelta{d: cur + 1<<32 - prev, wrapped: true}
	}
	return counterDelta{reset: true}
}

// maxBytesPerPacket is the most bytes one counted packet may carry: a
// 64 KiB GSO frame from a tap with vnet headers, with room to spare.
const maxBytesPerPacket = 128 << 10

// direction checks the packet and byte deltas of one direction: no reset,
// not both counters down at once (a reset, not two wraps), and, if one
// wrapped, between 1 and maxBytesPerPacket bytes per packet.
func direction(p, b counterDelta) bool {
	switch {
	case p.reset || b.reset:
		return false
	case p.wrapped && b.wrapped:
		return false
	case p.wrapped || b.wrapped:
		return p.d > 0 && b.d >= p.d && b.d/p.d <= maxBytesPerPacket
	}
	return true
}

// Rates returns port's rates over its latest observation interval, or false
// if the port is not tracked or has no interval yet (one reading since it
// appeared or was reset).
func (t *Tracker) Rates(port string) (Rates, bool) {
	p := t.ports[port]
	if p == nil || p.cur.dt == 0 {
		return Rates{}, false
	}
	return p.cur.rates(p.lastAt), true
}

// WindowRates returns port's rates over its history: the newest intervals
// that cover Config.Window, or all of them if the port has been observed
// for less (Rates.Span says how long). It returns false if the port is not
// tracked or has no interval yet.
func (t *Tracker) WindowRates(port string) (Rates, bool) {
	p := t.ports[port]
	if p == nil || p.n == 0 {
		return Rates{}, false
	}
	return p.sum.rates(p.lastAt), true
}

// Window returns the seed's figures for frames from the VM over the
// history of WindowRates: LASTPPS in packets per second, LASTBW in bits per
// second, and AVGPKT = LASTBW / LASTPPS in bytes per frame (0 if no frame
// was counted; the caller then measures the frame size another way).
func (t *Tracker) Window(port string) (pps, bitsPerSec, avgFrame float64, ok bool) {
	r, ok := t.WindowRates(port)
	return r.FromVM.PPS, r.FromVM.BitsPerSec, r.FromVM.AvgFrame, ok
}

// AppendFlagged appends to dst the ports that are flagged and not yet
// re-armed, by name, and returns the result: the daemon's "flagged" list in
// dry-run mode, with the Since and At of the flag and the port's latest
// rates.
func (t *Tracker) AppendFlagged(dst []Flag) []Flag {
	start := len(dst)
	for name, p := range t.ports {
		if p.flagged {
			dst = append(dst, Flag{Port: name, Since: p.flagSince, At: p.flagAt, Rates: p.cur.rates(p.lastAt)})
		}
	}
	slices.SortFunc(dst[start:], func(a, b Flag) int { return cmp.Compare(a.Port, b.Port) })
	return dst
}

// Len returns the number of ports tracked.
func (t *Tracker) Len() int { return len(t.ports) }

// Untracked returns the number of ports the latest Observe left out because
// MaxPorts ports were already tracked. Which ports are left out is
// unspecified; the daemon should log a non-zero count.
func (t *Tracker) Untracked() int { return t.untracked }

// SplitAtCap splits flags (as ordered by Observe, worst first) into those the
// daemon may quarantine automatically, given active automatic quarantines
// and the --max-auto cap, and those it must refuse (each refusal is an
// event). A cap of 0 or less admits none. Both results share flags' array.
func SplitAtCap(flags []Flag, active, maxAuto int) (admit, refuse []Flag) {
	n := min(max(maxAuto-active, 0), len(flags))
	return flags[:n:n], flags[n:]
}
