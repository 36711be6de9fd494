package rules

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/units"
)

// ErrInvalid is matched (errors.Is) by every *Error: a rule that does not
// parse or does not make sense. Nothing was applied; report the error,
// which says where, to whoever wrote the rule.
var ErrInvalid = errors.New("invalid class")

// Error is an invalid rule, located in its source.
type Error struct {
	// Line is the 1-based line in the source (of the config file, for
	// ParseYAML); 0 for a single rule given on its own (a --class flag).
	Line int
	// Column is the 1-based column (in bytes) of the offending word, or of
	// the rule when no single word is to blame; 0 when unknown.
	Column int
	Msg    string
}

func (e *Error) Error() string {
	switch {
	case e.Line > 0:
		return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Msg)
	case e.Column > 0:
		return fmt.Sprintf("column %d: %s", e.Column, e.Msg)
	}
	return e.Msg
}

// Is makes every *Error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func errorAt(line, col int, format string, args ...any) *Error {
	return &Error{Line: line, Column: col, Msg: fmt.Sprintf(format, args...)}
}

// posFunc maps a byte offset in a rule's text to its line and column in
// the source.
type posFunc func(off int) (line, col int)

// ParseRule parses one rule, as a --class flag gives it. Errors are *Error
// with the column in s (Line 0).
func ParseRule(s string) (Class, error) {
	if strings.ContainsAny(s, "\n\r") {
		return Class{}, errorAt(0, 0, "a --class flag holds one rule, on one line")
	}
	c, err := parseRule(s, func(off int) (int, int) { return 0, off + 1 })
	if err != nil {
		return Class{}, err
	}
	if c == nil {
		return Class{}, errorAt(0, 1, "an empty rule; a rule is NAME: MATCH... LIMITS... [ACTION], as in \"dns: udp dport 53 pps 1000\"")
	}
	return *c, nil
}

// ParseLines parses rules, one per line; blank lines and comments (# to the
// end of the line) are skipped. Errors are *Error with the line and column
// in src. It checks each rule on its own; NewSet checks them together.
func ParseLines(src string) ([]Class, error) {
	var out []Class
	for i, line := range strings.Split(src, "\n") {
		line = strings.TrimSuffix(line, "\r")
		c, err := parseRule(line, func(off int) (int, int) { return i + 1, off + 1 })
		if err != nil {
			return nil, err
		}
		if c != nil {
			out = append(out, *c)
		}
	}
	return out, nil
}

// Parse parses rules, one per line (see ParseLines), into a Set.
func Parse(src string) (*Set, error) {
	cs, err := ParseLines(src)
	if err != nil {
		return nil, err
	}
	return NewSet(cs)
}

// tok is a word of a rule and its byte offset in the rule's text.
type tok struct {
	s   string
	off int
}

// tokenize splits text into words at blanks, up to a '#'. A word ending in
// a comma is joined with the next ("80, 443" is one list), and so is a
// lone comparison (">" "1400").
func tokenize(text string, base int) []tok {
	if i := strings.IndexByte(text, '#'); i >= 0 {
		text = text[:i]
	}
	var out []tok
	for i := 0; i < len(text); {
		if isBlank(text[i]) {
			i++
			continue
		}
		j := i
		for j < len(text) && !isBlank(text[j]) {
			j++
		}
		w := tok{s: text[i:j], off: base + i}
		if n := len(out); n > 0 {
			if p := &out[n-1]; strings.HasSuffix(p.s, ",") || p.s == ">" || p.s == ">=" || p.s == "<" || p.s == "<=" {
				p.s += w.s
				i = j
				continue
			}
		}
		out = append(out, w)
		i = j
	}
	return out
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' }

// parser holds the state of one rule's parse.
type parser struct {
	toks []tok
	i    int
	pos  posFunc
	name string
	// seen maps a keyword ("pps", "per pps", "drop", ...) to its offset,
	// to refuse repeats and to locate errors.
	seen map[string]int
}

func (p *parser) errAt(off int, format string, args ...any) *Error {
	line, col := p.pos(off)
	return errorAt(line, col, format, args...)
}

// parseRule parses one rule; it returns nil, nil for a blank or comment
// line.
func parseRule(text string, pos posFunc) (*Class, error) {
	body := text
	if i := strings.IndexByte(body, '#'); i >= 0 {
		body = body[:i]
	}
	if strings.TrimSpace(body) == "" {
		return nil, nil
	}
	start := len(body) - len(strings.TrimLeft(body, " \t\v\f\r"))
	colon := strings.IndexByte(body, ':')
	p := &parser{pos: pos, seen: map[string]int{}}
	if colon < 0 {
		return nil, p.errAt(start, "a rule starts with its class name and a colon, as in \"dns: udp dport 53 pps 1000\"")
	}
	p.name = strings.TrimSpace(body[:colon])
	if msg := checkName(p.name); msg != "" {
		return nil, p.errAt(start, "%s", msg)
	}
	p.toks = tokenize(body[colon+1:], colon+1)
	line, col := pos(start)
	c := &Class{Name: p.name, Line: line, Column: col}
	if err := p.parseBody(c); err != nil {
		return nil, err
	}
	if kw, msg := c.problem(); msg != "" {
		off, ok := p.seen[kw]
		if !ok {
			off = start
		}
		return nil, p.errAt(off, "class %q: %s", c.Name, msg)
	}
	return c, nil
}

// Keywords, for suggestions.
var (
	matchWords  = []string{"any", "ether", "ip", "ipv4", "ipv6", "arp", "proto", "tcp", "udp", "icmp", "syn", "src", "dst", "sport", "dport", "port", "flags", "vlan", "size", "frag", "not"}
	limitWords  = []string{"pps", "bps", "burst", "burst-bytes", "block"}
	otherWords  = []string{"per", "table", "drop", "continue", "reclassify", "mode"}
	allKeywords = append(append(append([]string{}, matchWords...), limitWords...), otherWords...)
)

func isIn(w string, ws []string) bool {
	for _, x := range ws {
		if x == w {
			return true
		}
	}
	return false
}

func (p *parser) parseBody(c *Class) error {
	matching := true // matches are still allowed
	var per bool     // limit words now apply to the per-address budget
	for p.i < len(p.toks) {
		t := p.toks[p.i]
		p.i++
		w := strings.ToLower(t.s)
		switch {
		case isIn(w, matchWords):
			if !matching {
				return p.errAt(t.off, "match %q after the limits or the action: put every match first, as in \"web: tcp dport 80 pps 1000\"", t.s)
			}
			not := false
			if w == "not" {
				if p.i == len(p.toks) {
					return p.errAt(t.off, "not needs a match after it")
				}
				t = p.toks[p.i]
				p.i++
				w = strings.ToLower(t.s)
				if !isIn(w, matchWords) || w == "not" || w == "any" {
					return p.errAt(t.off, "not needs a match after it (such as not dst 10.0.0.0/8), not %q", t.s)
				}
				not = true
			}
			if w == "any" {
				continue
			}
			tm, err := p.parseTerm(w, t)
			if err != nil {
				return err
			}
			tm.not = not
			c.Match.terms = append(c.Match.terms, tm)
		case isIn(w, limitWords):
			matching = false
			key := w
			l := &c.Limits
			if per {
				key, l = "per "+w, &c.PerLimits
			}
			if err := p.once(key, t); err != nil {
				return err
			}
			if err := p.parseLimit(w, t, l); err != nil {
				return err
			}
		case w == "per":
			matching = false
			if err := p.once("per", t); err != nil {
				return err
			}
			v, err := p.value(t)
			if err != nil {
				return err
			}
			switch strings.ToLower(v.s) {
			case "src", "source":
				c.Per = PerSource
			case "dst", "destination":
				c.Per = PerDest
			default:
				return p.errAt(v.off, "per %q: want per src or per dst", v.s)
			}
			per = true
		case w == "table":
			if !per {
				return p.errAt(t.off, "table sizes the per-address table: give it after per src or per dst")
			}
			if err := p.once("table", t); err != nil {
				return err
			}
			v, err := p.value(t)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v.s)
			if err != nil || n < 1 || n > maxTable {
				return p.errAt(v.off, "table %q: want a number of entries from 1 to %d", v.s, maxTable)
			}
			c.Table = n
		case w == "drop" || w == "continue" || w == "reclassify":
			matching = false
			if off, ok := p.seen["action"]; ok {
				l, col := p.pos(off)
				return p.errAt(t.off, "a second action %q; the class already has one at %s", t.s, where(l, col))
			}
			p.seen["action"] = t.off
			p.seen[w] = t.off
			switch w {
			case "drop":
				c.Action = Drop
			case "continue":
				c.Action = Continue
			default:
				c.Action = Reclassify
				v, err := p.value(t)
				if err != nil {
					return err
				}
				if !plausibleName(v.s) {
					return p.errAt(v.off, "reclassify %q: not a class name", v.s)
				}
				c.Target = v.s
				p.seen["target"] = v.off
			}
		case w == "mode":
			matching = false
			if err := p.once("mode", t); err != nil {
				return err
			}
			v, err := p.value(t)
			if err != nil {
				return err
			}
			switch strings.ToLower(v.s) {
			case "police":
				c.Mode = Police
			case "shape":
				c.Mode = Shape
			default:
				return p.errAt(v.off, "mode %q: want police or shape", v.s)
			}
		default:
			msg := fmt.Sprintf("unknown word %q", t.s)
			if strings.HasSuffix(t.s, ":") {
				msg += "; one rule per line"
			} else if s := suggest(w); s != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", s)
			}
			return p.errAt(t.off, "%s", msg)
		}
	}
	return nil
}

// plausibleName reports whether n could name a class, built-in or not;
// NewSet says whether it does.
func plausibleName(n string) bool {
	if n == "" || len(n) > MaxNameLen {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// once records keyword key at t, refusing a repeat.
func (p *parser) once(key string, t tok) error {
	if off, ok := p.seen[key]; ok {
		l, c := p.pos(off)
		return p.errAt(t.off, "%s is given twice (first at %s)", key, where(l, c))
	}
	p.seen[key] = t.off
	return nil
}

// value returns the word after keyword t.
func (p *parser) value(t tok) (tok, error) {
	if p.i == len(p.toks) {
		return tok{}, p.errAt(t.off, "%s needs a value", t.s)
	}
	v := p.toks[p.i]
	p.i++
	return v, nil
}

func (p *parser) parseLimit(w string, t tok, l *bucket.Limits) error {
	if w == "block" {
		l.Block = true
		return nil
	}
	v, err := p.value(t)
	if err != nil {
		return err
	}
	switch w {
	case "pps":
		f, err := strconv.ParseFloat(v.s, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return p.errAt(v.off, "pps %q: want a number of packets per second", v.s)
		}
		if f == 0 {
			return p.errAt(v.off, "pps 0: use block to admit nothing")
		}
		if f < 1e-3 || f > 1e12 {
			return p.errAt(v.off, "pps %q: want 0.001 to 1e12 packets per second", v.s)
		}
		l.PPS = f
	case "bps":
		r, err := units.ParseRate(v.s)
		if err != nil {
			return p.errAt(v.off, "bps: %v", err)
		}
		if r < 8 {
			return p.errAt(v.off, "bps %q is below one byte per second; use block to admit nothing", v.s)
		}
		l.BytesPerSec = r.BytesPerSecond()
	case "burst":
		n, err := strconv.Atoi(v.s)
		if err != nil || n < 1 || n > math.MaxInt32 {
			return p.errAt(v.off, "burst %q: want a whole number of packets, at least 1", v.s)
		}
		l.BurstPackets = n
	case "burst-bytes":
		z, err := units.ParseSize(v.s)
		if err != nil {
			return p.errAt(v.off, "burst-bytes: %v", err)
		}
		if z < bucket.MaxFrame || z > math.MaxInt32 {
			return p.errAt(v.off, "burst-bytes %s is smaller than the largest frame, %d bytes with two VLAN tags; use at least %db", v.s, bucket.MaxFrame, bucket.MaxFrame)
		}
		l.BurstBytes = int(z)
	}
	return nil
}

// parseTerm parses the values of match keyword w (at t).
func (p *parser) parseTerm(w string, t tok) (term, error) {
	switch w {
	case "ip":
		return term{kind: kVersion, spans: []span{{4, 4}, {6, 6}}}, nil
	case "ipv4":
		return term{kind: kVersion, spans: []span{{4, 4}}}, nil
	case "ipv6":
		return term{kind: kVersion, spans: []span{{6, 6}}}, nil
	case "arp":
		return term{kind: kEther, spans: []span{{0x0806, 0x0806}}}, nil
	case "tcp":
		return term{kind: kProto, spans: []span{{6, 6}}}, nil
	case "udp":
		return term{kind: kProto, spans: []span{{17, 17}}}, nil
	case "icmp":
		return term{kind: kProto, spans: []span{{1, 1}, {58, 58}}}, nil
	case "syn":
		return term{kind: kFlags, set: 0x02, clear: 0x10}, nil
	case "frag":
		return term{kind: kFrag}, nil
	}
	v, err := p.value(t)
	if err != nil {
		return term{}, err
	}
	tm := term{}
	switch w {
	case "ether":
		tm.kind = kEther
		err = p.spans(v, &tm, 0xffff, etherNames, "an ethertype such as 0x88cc, or ipv4, ipv6, arp, lldp")
	case "proto":
		tm.kind = kProto
		err = p.spans(v, &tm, 255, protoNames, "an IP protocol number or tcp, udp, icmp, icmpv6, gre, esp, ah, sctp")
	case "sport", "dport", "port":
		tm.kind = map[string]kind{"sport": kSport, "dport": kDport, "port": kPort}[w]
		err = p.spans(v, &tm, 65535, nil, "port numbers and ranges such as 80,443,8000-8100")
	case "vlan":
		tm.kind = kVLAN
		if strings.EqualFold(v.s, "none") {
			tm.untagged = true
			return tm, nil
		}
		err = p.spans(v, &tm, 4095, nil, "VLAN ids 0-4095 and ranges, or none")
	case "size":
		tm.kind = kSize
		err = p.sizes(v, &tm)
	case "src", "dst":
		tm.kind = kSrc
		if w == "dst" {
			tm.kind = kDst
		}
		err = p.prefixes(v, &tm)
	case "flags":
		tm.kind = kFlags
		err = p.flags(v, &tm)
	}
	return tm, err
}

// items splits a comma list, with each item's offset.
func items(v tok) []tok {
	var out []tok
	off := v.off
	for _, s := range strings.Split(v.s, ",") {
		out = append(out, tok{s: s, off: off})
		off += len(s) + 1
	}
	return out
}

func (p *parser) spans(v tok, tm *term, maxv int, names map[string]int, want string) error {
	num := func(s string) (int, bool) {
		if n, ok := names[strings.ToLower(s)]; ok {
			return n, true
		}
		n, err := strconv.ParseUint(s, 0, 32)
		if err != nil || int(n) > maxv {
			return 0, false
		}
		return int(n), true
	}
	for _, it := range items(v) {
		lo, hi, isRange := strings.Cut(it.s, "-")
		a, ok := num(lo)
		b := a
		if ok && isRange {
			b, ok = num(hi)
			ok = ok && b >= a
		}
		if !ok {
			return p.errAt(it.off, "%q: want %s (at most %d)", it.s, want, maxv)
		}
		tm.spans = append(tm.spans, span{a, b})
	}
	return nil
}

func (p *parser) sizes(v tok, tm *term) error {
	for _, it := range items(v) {
		s := it.s
		bad := func() error {
			return p.errAt(it.off, "size %q: want bytes as N, N-M, >N, >=N, <N or <=N, from 0 to %d", s, maxSize)
		}
		var lo, hi int
		var err error
		switch {
		case strings.HasPrefix(s, ">="):
			lo, err = strconv.Atoi(s[2:])
			hi = maxSize
		case strings.HasPrefix(s, ">"):
			lo, err = strconv.Atoi(s[1:])
			lo++
			hi = maxSize
		case strings.HasPrefix(s, "<="):
			hi, err = strconv.Atoi(s[2:])
		case strings.HasPrefix(s, "<"):
			hi, err = strconv.Atoi(s[1:])
			hi--
		default:
			a, b, isRange := strings.Cut(s, "-")
			lo, err = strconv.Atoi(a)
			hi = lo
			if err == nil && isRange {
				hi, err = strconv.Atoi(b)
			}
		}
		if err != nil || lo < 0 || hi > maxSize || hi < lo {
			return bad()
		}
		tm.spans = append(tm.spans, span{lo, hi})
	}
	return nil
}

func (p *parser) prefixes(v tok, tm *term) error {
	for _, it := range items(v) {
		var pf netip.Prefix
		var err error
		if strings.Contains(it.s, "/") {
			pf, err = netip.ParsePrefix(it.s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(it.s); err == nil {
				pf = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || strings.Contains(it.s, "%") {
			return p.errAt(it.off, "%q: want an address or a prefix such as 198.18.0.0/15 or 2001:db8::/32", it.s)
		}
		if pf.Addr().Is4In6() {
			return p.errAt(it.off, "%q: an IPv4-mapped IPv6 address; write the IPv4 address", it.s)
		}
		if pf != pf.Masked() {
			return p.errAt(it.off, "%q has bits set past its prefix length; did you mean %s?", it.s, pf.Masked())
		}
		tm.prefixes = append(tm.prefixes, pf)
	}
	return nil
}

func (p *parser) flags(v tok, tm *term) error {
	for _, it := range items(v) {
		s, clear := strings.CutPrefix(strings.ToLower(it.s), "!")
		bit := uint8(0)
		for i, n := range flagNames {
			if s == n {
				bit = 1 << i
			}
		}
		if bit == 0 {
			return p.errAt(it.off, "flags %q: want TCP flags fin, syn, rst, psh, ack, urg, ece, cwr, each set or !clear", it.s)
		}
		if (tm.set|tm.clear)&bit != 0 {
			return p.errAt(it.off, "flags: %s is named twice", s)
		}
		if clear {
			tm.clear |= bit
		} else {
			tm.set |= bit
		}
	}
	return nil
}

// suggest returns the keyword nearest to w (edit distance at most 2), or "".
func suggest(w string) string {
	best, bestD := "", 3
	for _, k := range allKeywords {
		if d := editDistance(w, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours cost 1.
func editDistance(a, b string) int {
	if len(a) > 32 || len(b) > 32 {
		return 99
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
