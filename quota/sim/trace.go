// Package sim replays an offered-load trace against quota policies on a
// simulated clock, as a fluid model of rates: no real time, no network.
// It compares shaperd's Account (driven through Account.AdmitFluid, the
// same interval, burst and drop logic the forwarders use) with a flat
// cap at the commit, the seed's 75% soft quota without bursting, and the
// offline optimum.
package sim

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/units"
)

// Step is one line of a trace: from At on, the offered rate is Rate, until
// the next step (the last one holds to the end of the period).
type Step struct {
	At   time.Duration // since the start of the trace
	Rate units.Rate    // bits per second
	Line int           // line number in the file, 0 if generated
}

// Trace is an offered load: steps in strictly increasing time. Before the
// first step nothing is offered.
type Trace []Step

// ErrBadTrace is wrapped by every ParseTrace error; the message gives the
// line number and what to fix.
var ErrBadTrace = errors.New("bad trace")

// MaxTraceLines bounds a trace file, so that a wrong file fails fast.
const MaxTraceLines = 10_000_000

// ParseTrace reads a CSV trace: one line per change,
// "seconds_from_start,offered_rate". Seconds may be fractional and must
// increase strictly from line to line; the rate takes tc units ("100mbit";
// "kbps" means kilobytes per second) or a plain number of bits per second.
// Blank lines and lines starting with '#' are skipped, and so is a header
// line whose first field is not a number (e.g.
// "seconds_from_start,offered_rate") if it comes before any data.
func ParseTrace(r io.Reader) (Trace, error) {
	var t Trace
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	bad := func(format string, args ...any) (Trace, error) {
		return nil, fmt.Errorf("%w: line %d: %s", ErrBadTrace, line, fmt.Sprintf(format, args...))
	}
	for sc.Scan() {
		line++
		if line > MaxTraceLines {
			return bad("more than %d lines", MaxTraceLines)
		}
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		f := strings.Split(s, ",")
		if len(f) != 2 {
			return bad("%q has %d fields; want seconds_from_start,offered_rate", s, len(f))
		}
		secStr, rateStr := strings.TrimSpace(f[0]), strings.TrimSpace(f[1])
		sec, err := strconv.ParseFloat(secStr, 64)
		if err != nil {
			if len(t) == 0 && !startsNumeric(secStr) {
				continue // a header
			}
			return bad("seconds %q is not a number", secStr)
		}
		if math.IsNaN(sec) || math.IsInf(sec, 0) || sec < 0 || sec > 1e9 {
			return bad("seconds %q is out of range (0 to 1e9)", secStr)
		}
		at := time.Duration(math.Round(sec * float64(time.Second)))
		if n := len(t); n > 0 && at <= t[n-1].At {
			return bad("%ss is not after the previous line's %ss (line %d); times must increase",
				secStr, fmtSec(t[n-1].At), t[n-1].Line)
		}
		if rateStr == "" {
			return bad("no rate after %q", secStr+",")
		}
		rate, err := units.ParseRate(rateStr)
		if err != nil {
			return bad("%v", err)
		}
		t = append(t, Step{At: at, Rate: rate, Line: line})
	}
	if err := sc.Err(); err != nil {
		return bad("%v", err)
	}
	if len(t) == 0 {
		return nil, fmt.Errorf("%w: no data lines (want seconds_from_start,offered_rate)", ErrBadTrace)
	}
	return t, nil
}

func startsNumeric(s string) bool {
	s = strings.TrimLeft(s, "+-")
	return s != "" && (s[0] >= '0' && s[0] <= '9' || s[0] == '.')
}

func fmtSec(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// WriteCSV writes t in ParseTrace's format, with a header line.
func (t Trace) WriteCSV(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, "seconds_from_start,offered_rate")
	for _, s := range t {
		fmt.Fprintf(bw, "%s,%d\n", fmtSec(s.At), uint64(s.Rate))
	}
	return bw.Flush()
}

// cursor integrates a trace over consecutive time ranges.
type cursor struct {
	t Trace
	i int // index of the step in force at the last position, -1 before the first
}

func newCursor(t Trace) *cursor { return &cursor{t: t, i: -1} }

// rate returns the offered rate in bits per second at d and advances the
// cursor to it; positions must not go backwards.
func (c *cursor) rate(d time.Duration) float64 {
	for c.i+1 < len(c.t) && c.t[c.i+1].At <= d {
		c.i++
	}
	if c.i < 0 {
		return 0
	}
	return float64(c.t[c.i].Rate)
}

// integrate returns the integral over [from, to) of f(rate), with the
// rate in bits per second and time in seconds: bytes when f divides the
// rate by 8. Positions must not go backwards.
func (c *cursor) integrate(from, to time.Duration, f func(r float64) float64) float64 {
	sum := 0.0
	for from < to {
		r := c.rate(from)
		next := to
		if c.i+1 < len(c.t) && c.t[c.i+1].At < to {
			next = c.t[c.i+1].At
		}
		sum += f(r) * (next - from).Seconds()
		from = next
	}
	return sum
}
