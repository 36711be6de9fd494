// Package units parses and prints rates and sizes in the syntax of tc(8),
// so that shaperd's flags read like the qdisc commands operators already know.
//
// A Rate is in bits per second; a Size is in bytes. Both are plain unsigned
// integers: the zero value is zero, and the package holds no state.
package units

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Rate is a rate in bits per second.
type Rate uint64

// Size is a size in bytes.
type Size uint64

// unit is one suffix: a name (lower case) and how many base units
// (bits for Rate, eighths of a byte for Size) one of it holds.
type unit struct {
	name  string
	scale uint64
}

const (
	kilo = 1000
	kibi = 1024
)

// rateUnits lists tc's rate suffixes; scale is in bits per second.
// "bps" and its relatives are BYTES per second, as in tc.
var rateUnits = []unit{
	{"bit", 1},
	{"kbit", kilo},
	{"mbit", kilo * kilo},
	{"gbit", kilo * kilo * kilo},
	{"tbit", kilo * kilo * kilo * kilo},
	{"kibit", kibi},
	{"mibit", kibi * kibi},
	{"gibit", kibi * kibi * kibi},
	{"tibit", kibi * kibi * kibi * kibi},
	{"bps", 8},
	{"kbps", 8 * kilo},
	{"mbps", 8 * kilo * kilo},
	{"gbps", 8 * kilo * kilo * kilo},
	{"tbps", 8 * kilo * kilo * kilo * kilo},
	{"kibps", 8 * kibi},
	{"mibps", 8 * kibi * kibi},
	{"gibps", 8 * kibi * kibi * kibi},
	{"tibps", 8 * kibi * kibi * kibi * kibi},
}

// sizeUnits lists tc's size suffixes; scale is in bits, so that the bit
// suffixes stay integers. As in tc's get_size, the k/m/g of kbit, mbit
// and gbit are binary here: 1kbit is 1024 bits, 128 bytes.
var sizeUnits = []unit{
	{"b", 8},
	{"k", 8 * kibi},
	{"kb", 8 * kibi},
	{"m", 8 * kibi * kibi},
	{"mb", 8 * kibi * kibi},
	{"g", 8 * kibi * kibi * kibi},
	{"gb", 8 * kibi * kibi * kibi},
	{"kbit", kibi},
	{"mbit", kibi * kibi},
	{"gbit", kibi * kibi * kibi},
}

const (
	rateHint = "use bit, kbit, mbit, gbit; bps, kbps, mbps mean bytes per second"
	sizeHint = "use b, kb, mb, gb; kbit, mbit, gbit mean bits"
)

// ParseRate parses tc's rate syntax: a number (a fraction is allowed) with an
// optional unit, case-insensitive, optionally separated by spaces:
//
//	bit or no unit        bits per second
//	kbit mbit gbit tbit   ×1000, ×1000², … bits per second (SI)
//	kibit mibit gibit tibit ×1024, ×1024², … bits per second
//	bps kbps mbps gbps tbps      BYTES per second (×8), SI multiples
//	kibps mibps gibps tibps      BYTES per second, binary multiples
//
// A fractional result is rounded to the nearest bit per second. Zero is
// accepted (callers decide what it means); negative, NaN, infinite, empty
// and out-of-range inputs are errors that quote the input.
func ParseRate(s string) (Rate, error) {
	v, err := parse("rate", s, rateUnits, 1, rateHint)
	return Rate(v), err
}

// BytesPerSecond returns r in bytes per second.
func (r Rate) BytesPerSecond() float64 { return float64(r) / 8 }

// String returns r in compact tc syntax that ParseRate reads back exactly:
// the largest SI unit that divides r ("16mbit", "1500kbit", "800bit"),
// else the largest binary unit that does ("2kibit"), else bits.
func (r Rate) String() string {
	v := uint64(r)
	if v == 0 {
		return "0bit"
	}
	for _, names := range [2][4]string{
		{"tbit", "gbit", "mbit", "kbit"},
		{"tibit", "gibit", "mibit", "kibit"},
	} {
		for _, name := range names {
			if sc := scaleOf(rateUnits, name); v%sc == 0 {
				return strconv.FormatUint(v/sc, 10) + name
			}
		}
	}
	return strconv.FormatUint(v, 10) + "bit"
}

// ParseSize parses tc's size syntax: a number (a fraction is allowed) with an
// optional unit, case-insensitive, optionally separated by spaces:
//
//	b or no unit   bytes
//	k kb           ×1024 bytes
//	m mb           ×1024² bytes
//	g gb           ×1024³ bytes
//	kbit mbit gbit 1024, 1024², 1024³ bits (÷8), as tc's get_size reads them
//
// A fractional result is rounded to the nearest byte. Zero is accepted;
// negative, NaN, infinite, empty and out-of-range inputs are errors that
// quote the input.
func ParseSize(s string) (Size, error) {
	v, err := parse("size", s, sizeUnits, 8, sizeHint)
	return Size(v), err
}

// String returns s in compact tc syntax that ParseSize reads back exactly:
// the largest binary unit that divides s ("1522b", "2kb", "16mb", "1gb").
func (s Size) String() string {
	v := uint64(s)
	if v != 0 {
		for _, u := range [...]struct {
			name  string
			scale uint64
		}{{"gb", kibi * kibi * kibi}, {"mb", kibi * kibi}, {"kb", kibi}} {
			if v%u.scale == 0 {
				return strconv.FormatUint(v/u.scale, 10) + u.name
			}
		}
	}
	return strconv.FormatUint(v, 10) + "b"
}

func scaleOf(us []unit, name string) uint64 {
	for _, u := range us {
		if u.name == name {
			return u.scale
		}
	}
	panic("units: no unit " + name)
}

// parse reads "<number>[ ]<unit>" with units from us, whose scales are in
// base units; the result is in base units divided by div (1 for rates in
// bits, 8 for sizes in bytes), rounded to nearest.
func parse(what, s string, us []unit, div uint64, hint string) (uint64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("units: %s %q: empty", what, s)
	}
	n := numberPrefix(in)
	num, suffix := in[:n], strings.TrimSpace(in[n:])
	if num == "" {
		return 0, fmt.Errorf("units: %s %q: no number (want e.g. %s)", what, s, example(what))
	}
	if num[0] == '-' {
		return 0, fmt.Errorf("units: %s %q: negative", what, s)
	}
	scale := us[0].scale // no unit: bits for a rate, bytes for a size
	if suffix != "" {
		found := false
		for _, u := range us {
			if strings.EqualFold(suffix, u.name) {
				scale, found = u.scale, true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("units: %s %q: unknown unit %q (%s)", what, s, suffix, hint)
		}
	}
	outOfRange := func() error { return fmt.Errorf("units: %s %q: out of range", what, s) }

	// Integers take an exact path so that every value String prints,
	// up to the largest uint64, reads back unchanged.
	if i, err := strconv.ParseUint(strings.TrimPrefix(num, "+"), 10, 64); err == nil {
		hi, lo := bits.Mul64(i, scale)
		if hi >= div {
			return 0, outOfRange()
		}
		q, r := bits.Div64(hi, lo, div)
		if div > 1 && r >= div-r { // round half up
			if q == math.MaxUint64 {
				return 0, outOfRange()
			}
			q++
		}
		return q, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return 0, outOfRange()
		}
		return 0, fmt.Errorf("units: %s %q: bad number %q", what, s, num)
	}
	v := math.Round(f * float64(scale) / float64(div))
	if math.IsNaN(v) || v < 0 {
		return 0, fmt.Errorf("units: %s %q: bad number %q", what, s, num)
	}
	if v >= 1<<64 {
		return 0, outOfRange()
	}
	return uint64(v), nil
}

func example(what string) string {
	if what == "rate" {
		return "10mbit"
	}
	return "1522b"
}

// numberPrefix returns the length of the decimal number at the start of s:
// an optional sign, digits with at most one point, and an optional exponent
// (consumed only when digits follow, so that no unit is eaten). Words such
// as NaN and Inf are not numbers here.
func numberPrefix(s string) int {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := false
	for i < len(s) && isDigit(s[i]) {
		i, digits = i+1, true
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			i, digits = i+1, true
		}
	}
	if !digits {
		return 0
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < len(s) && isDigit(s[j]) {
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			i = j
		}
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
