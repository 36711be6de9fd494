package daemon

import (
	"maps"
	"strconv"
	"strings"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/units"
)

// Validation of requests: what the daemon and the command line refuse
// before anything is done, and the largest values accepted.

// CheckRequest checks what it can of a quarantine or set request without a
// daemon: the port's name and every value, with the daemon's own messages.
// The command line calls it before it sends, so that a typo is reported as
// such even when no daemon runs. A profile's name is the daemon's to check.
func CheckRequest(port string, req api.LimitRequest, forSet bool) error {
	if err := checkPortName(port); err != nil {
		return err
	}
	if err := refuseZeroRates(req); err != nil {
		return err
	}
	r := maps.Clone(req)
	delete(r, "profile")
	_, err := NewSpec().Apply(r, forSet)
	return err
}

// refuseZeroRates refuses a request that would block a direction by
// giving it a zero rate: blocking is spelled --block (--to-vm-block).
// Internally a block is a zero packet budget; the profiles' limits and the
// intents on the plumbing keep that spelling.
func refuseZeroRates(req api.LimitRequest) error {
	for _, pre := range []string{"", "to-vm-"} {
		for _, f := range []string{"pps", "bps"} {
			v, ok := req[pre+f]
			if !ok {
				continue
			}
			zero := false
			if f == "pps" {
				n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				zero = err == nil && n == 0
			} else {
				r, err := units.ParseRate(v)
				zero = err == nil && r == 0
			}
			if zero {
				return usagef("--%s%s %s would drop everything but the bypass and control classes: say so with --%sblock", pre, f, v, pre)
			}
		}
	}
	return nil
}

// The largest limits accepted: anything above is refused (exit 2), not
// taken for "no limit".
const (
	MaxPPS     = 10_000_000          // packets per second, any --*-pps
	MaxRate    = 100_000_000_000     // bits per second (100gbit), any --*-bps
	MaxBurst   = 10_000_000          // packets, --burst
	MaxBytes   = units.Size(1 << 30) // bytes (1gb): --burst-bytes, --queue-bytes, --max-frame
	maxPPSText = "10000000"
)

// optCount parses a whole-number flag's value, at least 1; "none" is nil.
// what completes "want a whole number of ...".
func optCount(v string, none bool, flag, what string) (*int, error) {
	if none {
		return nil, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return nil, usagef("%s %q: want a whole number of %s", flag, v, what)
	}
	if n > MaxBurst {
		return nil, usagef("%s %q: at most %d", flag, v, MaxBurst)
	}
	return &n, nil
}

// optSize parses a size flag's value; "none" is nil.
func optSize(v string, none bool, flag string) (*units.Size, error) {
	if none {
		return nil, nil
	}
	z, err := units.ParseSize(v)
	if err != nil {
		return nil, usagef("%s: %v", flag, err)
	}
	if z > MaxBytes {
		return nil, usagef("%s %q: at most 1gb", flag, v)
	}
	return &z, nil
}
