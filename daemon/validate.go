package daemon

import (
	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
)

// Validation of requests: what the daemon and the command line refuse
// before anything is done, and the largest values accepted.

// CheckRequest checks what it can of a quarantine or set request without a
// daemon: the port's name and every value, with the daemon's own messages.
// The command line calls it before it sends, so that a typo is reported as
// such even when no daemon runs. A profile's name is the daemon's to check.
func CheckRequest(port string, f api.LimitFlags, forSet bool) error {
	if err := api.CheckPort(port); err != nil {
		return err
	}
	req, err := api.ParseRequest(f)
	if err != nil {
		return err
	}
	_, err = intent.New().Apply(req, forSet)
	return err
}

// The largest limits accepted: anything above is refused (exit 2), not
// taken for "no limit".
const (
	MaxPPS   = api.MaxPPS   // packets per second, any --*-pps
	MaxRate  = api.MaxRate  // bits per second (100gbit), any --*-bps
	MaxBurst = api.MaxBurst // packets, --burst
	MaxBytes = api.MaxBytes // bytes (1gb): --burst-bytes, --queue-bytes, --max-frame
)
