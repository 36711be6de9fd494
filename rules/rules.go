// Package rules is shaperd's small language for traffic classes: which
// frames a class matches, what budget it has, and what happens to a frame
// over that budget, in the manner of tc's policing filters (seed 002).
//
// A rule is one line:
//
//	NAME: MATCH... [LIMIT...] [per src|dst LIMIT... [table N]] [ACTION] [mode police|shape]
//
// for example
//
//	ssh-brute: tcp dport 22 syn per src pps 5 burst 10
//	dns:       udp dport 53 pps 1000 burst 200 continue
//	ping:      icmp bps 2kbit drop
//	big:       size >1400 block
//	scan:      syn per dst pps 20 reclassify tcp-syn
//
// Matches (all must hold; "not" before one negates it):
//
//	any                        every frame
//	ether T[,T...]             innermost ethertype: a number (0x88cc) or ipv4, ipv6, arp, lldp
//	ip | ipv4 | ipv6           IP of either version, IPv4, IPv6
//	proto P[,P...]             IP protocol: a number or tcp, udp, icmp, icmpv6, gre, esp, ah, sctp
//	tcp | udp | icmp           proto tcp, proto udp, proto icmp,icmpv6
//	syn                        tcp flags syn,!ack: the first segment of a connection
//	src A[,A...], dst A[,A...] source, destination address or prefix (198.18.0.0/15, 2001:db8::/32)
//	sport P, dport P, port P   TCP/UDP source, destination, either port: numbers and ranges (80,443,8000-8100)
//	flags F[,F...]             TCP flags that must be set (syn) or clear (!ack): fin syn rst psh ack urg ece cwr
//	vlan V[,V...] | vlan none  outer VLAN id or range; none for untagged
//	size S[,S...]              frame length in bytes, Ethernet header included: N, N-M, >N, >=N, <N, <=N
//	frag                       an IP fragment, first or later
//
// Limits, for the whole class, or with "per src" / "per dst" for each
// source or destination address (IPv6 by /64) in a bounded table (table N
// entries, default 4096) that evicts the least limited first:
//
//	pps N           packets per second
//	bps RATE        bits per second, in tc syntax (2kbit, 10mbit; 1kbps is 1000 BYTES per second)
//	burst N         bucket depth in packets (default 10 ms of pps, at least 1)
//	burst-bytes S   bucket depth in bytes (default 10 ms of bps, at least 1522)
//	block           admit nothing
//
// A class with no limit admits everything it matches: it exempts that
// traffic from the classes after it.
//
// Evaluation (package forward): the classes are tried in order. A frame
// that a class matches and whose budgets (the class's and, with per, its
// address's) admit it is decided: the class passes it on to the port
// aggregate, and no later class sees it. Over the budget, the action
// decides: drop (the default) drops it; continue goes on with the classes
// after this one, as if it had not matched; reclassify NAME charges it to
// class NAME instead, without looking at NAME's matches (a later class, or
// one of the built-in classes tcp-syn, tcp, udp, icmp, other), whose own
// action applies if that is over too. A frame no class decides goes to its
// built-in class. Nothing is charged to a budget that refused the frame,
// nor to one that admitted it when a later step (the port aggregate)
// refuses it.
//
// mode shape makes a class queue what its budget refuses in the
// direction's delay queue, released at the class's rate, instead of
// applying the action; it needs --mode shape, a class-wide rate, no per,
// and the drop action.
//
// The language is parsed into a Set, which is immutable and safe for
// concurrent use; Set.Match allocates nothing.
package rules

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/units"
)

// MaxClasses bounds the number of classes in a Set.
const MaxClasses = 64

// MaxNameLen bounds a class name.
const MaxNameLen = 32

// Action is what a class does with a frame over its limits.
type Action uint8

const (
	// Drop drops the frame (the default).
	Drop Action = iota
	// Continue goes on to the next matching class.
	Continue
	// Reclassify charges the frame to Class.Target instead.
	Reclassify
)

func (a Action) String() string {
	switch a {
	case Drop:
		return "drop"
	case Continue:
		return "continue"
	case Reclassify:
		return "reclassify"
	}
	return "invalid"
}

// Mode is how a class treats a frame over its limits.
type Mode uint8

const (
	// Police applies the action at once (the default).
	Police Mode = iota
	// Shape queues the frame until the class's budget admits it.
	Shape
)

func (m Mode) String() string {
	switch m {
	case Police:
		return "police"
	case Shape:
		return "shape"
	}
	return "invalid"
}

// Per says what a class's per-address limits are keyed by.
type Per uint8

const (
	// PerNone: no per-address limits.
	PerNone Per = iota
	// PerSource: one bucket per source address (IPv6 per /64).
	PerSource
	// PerDest: one bucket per destination address (IPv6 per /64).
	PerDest
)

func (p Per) String() string {
	switch p {
	case PerNone:
		return "none"
	case PerSource:
		return "src"
	case PerDest:
		return "dst"
	}
	return "invalid"
}

// Class is one parsed rule. Build it with Parse, ParseRule or ParseYAML;
// a Set holds it read-only.
type Class struct {
	// Name identifies the class in status, metrics and reclassify.
	Name string
	// Match says which frames the class is for.
	Match Match
	// Limits is the class-wide budget; the zero value is no limit.
	Limits bucket.Limits
	// Per, PerLimits and Table are the per-address budget: its key, its
	// limits for each address, and its table size in entries (0 for
	// hashlimit.DefaultSize).
	Per       Per
	PerLimits bucket.Limits
	Table     int
	// Action applies over the limits; Target names the class of
	// Reclassify.
	Action Action
	Target string
	// Mode is Police or Shape.
	Mode Mode
	// Line and Column locate the rule in its source (1-based; 0 when
	// unknown). They are not part of the rule's meaning.
	Line, Column int
}

// HasLimits reports whether the class-wide budget limits anything.
func (c *Class) HasLimits() bool { return !c.Limits.Unlimited() }

// String renders c in canonical form; Parse reads it back to the same
// class.
func (c *Class) String() string {
	var b strings.Builder
	b.WriteString(c.Name)
	b.WriteString(": ")
	b.WriteString(c.Match.String())
	writeLimits(&b, c.Limits)
	if c.Per != PerNone {
		b.WriteString(" per ")
		b.WriteString(c.Per.String())
		writeLimits(&b, c.PerLimits)
		if c.Table != 0 {
			fmt.Fprintf(&b, " table %d", c.Table)
		}
	}
	switch c.Action {
	case Continue:
		b.WriteString(" continue")
	case Reclassify:
		b.WriteString(" reclassify ")
		b.WriteString(c.Target)
	}
	if c.Mode == Shape {
		b.WriteString(" mode shape")
	}
	return b.String()
}

func writeLimits(b *strings.Builder, l bucket.Limits) {
	if l.Block {
		b.WriteString(" block")
	}
	if l.PPS > 0 {
		b.WriteString(" pps ")
		b.WriteString(strconv.FormatFloat(l.PPS, 'g', -1, 64))
	}
	if l.BurstPackets > 0 {
		fmt.Fprintf(b, " burst %d", l.BurstPackets)
	}
	if l.BytesPerSec > 0 {
		b.WriteString(" bps ")
		b.WriteString(units.Rate(l.BytesPerSec * 8).String())
	}
	if l.BurstBytes > 0 {
		b.WriteString(" burst-bytes ")
		b.WriteString(units.Size(l.BurstBytes).String())
	}
}

// Match is a conjunction of terms; the zero value matches every frame.
type Match struct {
	terms []term
}

type kind uint8

const (
	kEther kind = iota
	kVersion
	kProto
	kSrc
	kDst
	kSport
	kDport
	kPort
	kFlags
	kVLAN
	kSize
	kFrag
)

// span is an inclusive range of values.
type span struct{ lo, hi int }

type term struct {
	kind       kind
	not        bool
	spans      []span         // ether, version, proto, ports, vlan, size
	prefixes   []netip.Prefix // src, dst
	set, clear uint8          // flags
	untagged   bool           // vlan none
}

// Matches reports whether f, a frame decoded by package classify, matches
// m. It allocates nothing.
func (m *Match) Matches(f *classify.Frame) bool {
	for i := range m.terms {
		t := &m.terms[i]
		if t.match(f) == t.not {
			return false
		}
	}
	return true
}

func (t *term) match(f *classify.Frame) bool {
	switch t.kind {
	case kEther:
		return inSpans(t.spans, int(f.EtherType))
	case kVersion:
		return f.IPVersion != 0 && inSpans(t.spans, int(f.IPVersion))
	case kProto:
		return f.IPVersion != 0 && inSpans(t.spans, int(f.Proto))
	case kSrc:
		return inPrefixes(t.prefixes, f.SrcIP)
	case kDst:
		return inPrefixes(t.prefixes, f.DstIP)
	case kSport, kDport, kPort:
		if !f.IsTCP() && !f.IsUDP() {
			return false
		}
		switch t.kind {
		case kSport:
			return inSpans(t.spans, int(f.SrcPort))
		case kDport:
			return inSpans(t.spans, int(f.DstPort))
		}
		return inSpans(t.spans, int(f.SrcPort)) || inSpans(t.spans, int(f.DstPort))
	case kFlags:
		return f.IsTCP() && f.TCPFlags&t.set == t.set && f.TCPFlags&t.clear == 0
	case kVLAN:
		if f.VLANs == 0 {
			return t.untagged
		}
		return inSpans(t.spans, int(f.VLANID))
	case kSize:
		return inSpans(t.spans, f.Len)
	case kFrag:
		return f.Fragment
	}
	return false
}

func inSpans(ss []span, v int) bool {
	for _, s := range ss {
		if v >= s.lo && v <= s.hi {
			return true
		}
	}
	return false
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// String renders m in canonical form ("any" for a match of every frame).
func (m *Match) String() string {
	if len(m.terms) == 0 {
		return "any"
	}
	parts := make([]string, len(m.terms))
	for i := range m.terms {
		parts[i] = m.terms[i].String()
	}
	return strings.Join(parts, " ")
}

func (t *term) String() string {
	var s string
	switch t.kind {
	case kEther:
		s = "ether " + joinSpans(t.spans, etherName)
	case kVersion:
		switch {
		case len(t.spans) == 1 && t.spans[0] == span{4, 4}:
			s = "ipv4"
		case len(t.spans) == 1 && t.spans[0] == span{6, 6}:
			s = "ipv6"
		default:
			s = "ip"
		}
	case kProto:
		s = "proto " + joinSpans(t.spans, protoName)
	case kSrc, kDst:
		ps := make([]string, len(t.prefixes))
		for i, p := range t.prefixes {
			ps[i] = p.String()
			if p.IsSingleIP() {
				ps[i] = p.Addr().String()
			}
		}
		s = [...]string{kSrc: "src", kDst: "dst"}[t.kind] + " " + strings.Join(ps, ",")
	case kSport, kDport, kPort:
		s = [...]string{kSport: "sport", kDport: "dport", kPort: "port"}[t.kind] + " " + joinSpans(t.spans, nil)
	case kFlags:
		var fs []string
		for i, n := range flagNames {
			switch bit := uint8(1) << i; {
			case t.set&bit != 0:
				fs = append(fs, n)
			case t.clear&bit != 0:
				fs = append(fs, "!"+n)
			}
		}
		s = "flags " + strings.Join(fs, ",")
	case kVLAN:
		if t.untagged {
			s = "vlan none"
		} else {
			s = "vlan " + joinSpans(t.spans, nil)
		}
	case kSize:
		parts := make([]string, len(t.spans))
		for i, sp := range t.spans {
			switch {
			case sp.lo == sp.hi:
				parts[i] = strconv.Itoa(sp.lo)
			case sp.hi == maxSize:
				parts[i] = ">" + strconv.Itoa(sp.lo-1)
			case sp.lo == 0:
				parts[i] = "<" + strconv.Itoa(sp.hi+1)
			default:
				parts[i] = strconv.Itoa(sp.lo) + "-" + strconv.Itoa(sp.hi)
			}
		}
		s = "size " + strings.Join(parts, ",")
	case kFrag:
		s = "frag"
	}
	if t.not {
		return "not " + s
	}
	return s
}

// joinSpans renders spans as "a,b-c"; name, if not nil, names single
// values it knows.
func joinSpans(ss []span, name func(int) string) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		if s.lo == s.hi {
			if name != nil {
				parts[i] = name(s.lo)
			} else {
				parts[i] = strconv.Itoa(s.lo)
			}
		} else {
			parts[i] = strconv.Itoa(s.lo) + "-" + strconv.Itoa(s.hi)
		}
	}
	return strings.Join(parts, ",")
}

var flagNames = [8]string{"fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"}

var etherNames = map[string]int{"ipv4": 0x0800, "ipv6": 0x86dd, "arp": 0x0806, "lldp": 0x88cc}

func etherName(v int) string {
	for n, x := range etherNames {
		if x == v {
			return n
		}
	}
	return fmt.Sprintf("0x%04x", v)
}

var protoNames = map[string]int{"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58, "sctp": 132}

func protoName(v int) string {
	for n, x := range protoNames {
		if x == v {
			return n
		}
	}
	return strconv.Itoa(v)
}

// Set is a validated, ordered list of classes: the rules of one direction.
// It is immutable and safe for concurrent use. The nil *Set has no
// classes.
type Set struct {
	classes []Class
	// target[i] is the index of class i's reclassify target in classes,
	// or -1 when the target is a built-in class (builtin[i]).
	target  []int
	builtin []classify.Class
}

// reclassifyBuiltins are the built-in classes a rule may reclassify to.
var reclassifyBuiltins = []classify.Class{classify.TCPSyn, classify.TCP, classify.UDP, classify.ICMP, classify.Other}

// NewSet checks the classes together (unique names, reclassify targets
// that exist and come later, at most MaxClasses) and each on its own, and
// returns them as a Set. Errors are *Error, located at the class (or its
// target) when the class has a Line.
func NewSet(cs []Class) (*Set, error) {
	if len(cs) > MaxClasses {
		c := &cs[MaxClasses]
		return nil, errorAt(c.Line, c.Column, "more than %d classes", MaxClasses)
	}
	s := &Set{classes: make([]Class, len(cs)), target: make([]int, len(cs)), builtin: make([]classify.Class, len(cs))}
	for i := range cs {
		c := cs[i]
		c.Match = c.Match.clone()
		if err := c.validate(); err != nil {
			return nil, err
		}
		for j := range i {
			if cs[j].Name == c.Name {
				return nil, errorAt(c.Line, c.Column, "class %q is defined twice (first at %s)", c.Name, where(cs[j].Line, cs[j].Column))
			}
		}
		s.classes[i] = c
		s.target[i] = -1
	}
	for i := range s.classes {
		c := &s.classes[i]
		if c.Action != Reclassify {
			continue
		}
		found := false
		for j := range s.classes {
			if s.classes[j].Name != c.Target {
				continue
			}
			if j <= i {
				return nil, errorAt(c.Line, c.Column, "class %q reclassifies to %q, which comes before it: a class may only reclassify to a later class, so that evaluation always ends", c.Name, c.Target)
			}
			s.target[i], found = j, true
		}
		for _, b := range reclassifyBuiltins {
			if b.String() == c.Target {
				s.builtin[i], found = b, true
			}
		}
		if !found {
			return nil, errorAt(c.Line, c.Column, "class %q reclassifies to %q, which is neither a later class nor a built-in class a frame may be reclassified to (tcp-syn, tcp, udp, icmp, other)", c.Name, c.Target)
		}
	}
	return s, nil
}

func where(line, col int) string {
	if line == 0 {
		return fmt.Sprintf("column %d", col)
	}
	return fmt.Sprintf("line %d, column %d", line, col)
}

// Len returns the number of classes.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.classes)
}

// Class returns class i, read-only: do not modify it.
func (s *Set) Class(i int) *Class { return &s.classes[i] }

// Classes returns a copy of the classes.
func (s *Set) Classes() []Class {
	if s == nil {
		return nil
	}
	out := make([]Class, len(s.classes))
	copy(out, s.classes)
	return out
}

// Target returns where class i reclassifies to: the index of a later
// class, or -1 and a built-in class. Only meaningful for Reclassify.
func (s *Set) Target(i int) (int, classify.Class) { return s.target[i], s.builtin[i] }

// Index returns the index of the class named name, or -1.
func (s *Set) Index(name string) int {
	for i := range s.Len() {
		if s.classes[i].Name == name {
			return i
		}
	}
	return -1
}

// Matches reports whether class i matches f. It allocates nothing.
func (s *Set) Matches(i int, f *classify.Frame) bool { return s.classes[i].Match.Matches(f) }

// String renders the set, one class per line, in canonical form.
func (s *Set) String() string {
	if s == nil {
		return ""
	}
	lines := make([]string, len(s.classes))
	for i := range s.classes {
		lines[i] = s.classes[i].String()
	}
	return strings.Join(lines, "\n")
}

// Strings returns each class in canonical form, for a state file or a
// status listing; Parse of each gives the set back.
func (s *Set) Strings() []string {
	if s == nil {
		return nil
	}
	out := make([]string, len(s.classes))
	for i := range s.classes {
		out[i] = s.classes[i].String()
	}
	return out
}

// Equal reports whether two sets have the same classes in the same order
// (positions aside).
func (s *Set) Equal(o *Set) bool {
	if s.Len() != o.Len() {
		return false
	}
	for i := range s.Len() {
		if s.classes[i].String() != o.classes[i].String() {
			return false
		}
	}
	return true
}

func (m Match) clone() Match {
	out := Match{terms: make([]term, len(m.terms))}
	for i, t := range m.terms {
		t.spans = append([]span(nil), t.spans...)
		t.prefixes = append([]netip.Prefix(nil), t.prefixes...)
		out.terms[i] = t
	}
	return out
}

// validate checks one class on its own.
func (c *Class) validate() error {
	if _, msg := c.problem(); msg != "" {
		return errorAt(c.Line, c.Column, "class %q: %s", c.Name, msg)
	}
	return nil
}

// problem returns what is wrong with c on its own, and the keyword of the
// rule to blame ("" for the rule as a whole).
func (c *Class) problem() (kw, msg string) {
	if m := checkName(c.Name); m != "" {
		return "", m
	}
	for _, x := range []struct {
		l      bucket.Limits
		prefix string
	}{{c.Limits, ""}, {c.PerLimits, "per "}} {
		l := x.l
		switch {
		case l.BurstPackets > 0 && l.PPS == 0:
			return x.prefix + "burst", x.prefix + "burst needs pps: a burst is the depth of a rate's bucket"
		case l.BurstBytes > 0 && l.BytesPerSec == 0:
			return x.prefix + "burst-bytes", x.prefix + "burst-bytes needs bps: a burst is the depth of a rate's bucket"
		case l.Block && (l.PPS > 0 || l.BytesPerSec > 0):
			return x.prefix + "block", x.prefix + "block admits nothing, so pps and bps mean nothing beside it; give one or the other"
		}
		if err := l.Validate(); err != nil {
			return "", x.prefix + err.Error()
		}
	}
	if c.Per == PerNone && (c.PerLimits != bucket.Limits{} || c.Table != 0) {
		return "", "per-address limits without per src or per dst"
	}
	if c.Per != PerNone && c.PerLimits.Unlimited() {
		return "per", fmt.Sprintf("per %s needs a limit for each address after it (pps, bps or block), as in \"per src pps 5\"", c.Per)
	}
	if c.Table < 0 || c.Table > maxTable {
		return "table", fmt.Sprintf("table %d: want 1 to %d entries", c.Table, maxTable)
	}
	if c.Action > Reclassify || c.Mode > Shape || c.Per > PerDest {
		return "", "invalid action, mode or per"
	}
	switch {
	case c.Action == Reclassify && c.Target == "":
		return "reclassify", "reclassify needs a class name"
	case c.Action != Reclassify && c.Target != "":
		return "", "a target without reclassify"
	case c.Action == Reclassify && c.Target == c.Name:
		return "target", "reclassify to itself would never end"
	}
	if c.Action != Drop && !c.HasLimits() && c.Per == PerNone {
		return c.Action.String(), fmt.Sprintf("%s applies to frames over a limit, and the class has none; give pps, bps or block", c.Action)
	}
	if c.Mode == Shape {
		switch {
		case c.Per != PerNone:
			return "mode", fmt.Sprintf("mode shape queues what the class-wide budget refuses and cannot wait on one address's budget; drop per %s or use mode police", c.Per)
		case c.Limits.PPS == 0 && c.Limits.BytesPerSec == 0:
			return "mode", "mode shape needs a class-wide pps or bps to release the queue at"
		case c.Action != Drop:
			return "mode", fmt.Sprintf("mode shape queues what is over the limit, so %s never applies; remove it or use mode police", c.Action)
		}
	}
	for i := range c.Match.terms {
		if m := c.Match.terms[i].validate(); m != "" {
			return "", m
		}
	}
	return "", ""
}

func (t *term) validate() string {
	switch t.kind {
	case kSrc, kDst:
		if len(t.prefixes) == 0 {
			return "an address match without addresses"
		}
		for _, p := range t.prefixes {
			if !p.IsValid() || p != p.Masked() {
				return fmt.Sprintf("prefix %s is not masked or not valid", p)
			}
		}
	case kFlags:
		if t.set == 0 && t.clear == 0 || t.set&t.clear != 0 {
			return "flags must name each flag once, set or !clear"
		}
	case kVLAN:
		if !t.untagged && len(t.spans) == 0 {
			return "a vlan match without ids"
		}
	case kFrag:
	default:
		if len(t.spans) == 0 {
			return "a match without values"
		}
	}
	for _, s := range t.spans {
		if s.lo < 0 || s.hi < s.lo || s.hi > t.kind.max() {
			return fmt.Sprintf("range %d-%d out of bounds", s.lo, s.hi)
		}
	}
	return ""
}

const maxSize = 65535

// maxTable bounds Class.Table (hashlimit.MaxSize).
const maxTable = 1 << 20

func (k kind) max() int {
	switch k {
	case kEther, kSport, kDport, kPort, kSize:
		return 65535
	case kProto:
		return 255
	case kVLAN:
		return 4095
	case kVersion:
		return 6
	}
	return 0
}

// checkName returns what is wrong with a class name, or "".
func checkName(n string) string {
	if n == "" {
		return "a rule starts with its class name and a colon, as in \"dns: udp dport 53 pps 1000\""
	}
	if len(n) > MaxNameLen {
		return fmt.Sprintf("class name %q is longer than %d characters", n, MaxNameLen)
	}
	for i, r := range n {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || i > 0 && (r == '-' || r == '_' || r == '.')
		if !ok {
			return fmt.Sprintf("class name %q: use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit", n)
		}
	}
	if _, err := classify.ParseClass(n); err == nil {
		return fmt.Sprintf("class name %q is a built-in class; choose another name", n)
	}
	return ""
}
