package ladder

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/shaperd/shaperd/detect"
)

// ErrInvalidConfig is wrapped by every error from Config.Validate and New.
// The message names the profile key to fix; callers should report it to the
// operator (with the profile's name) as a configuration error, not retry.
var ErrInvalidConfig = errors.New("invalid ladder configuration")

// configError is a Validate failure: its text names the profile key to fix,
// it matches ErrInvalidConfig under errors.Is, and it wraps the detect error
// of an invalid threshold, if that is the cause.
type configError struct {
	msg   string
	cause error
}

func (e *configError) Error() string        { return e.msg }
func (e *configError) Is(target error) bool { return target == ErrInvalidConfig }
func (e *configError) Unwrap() error        { return e.cause }

func invalid(format string, args ...any) error {
	return &configError{msg: "ladder: " + fmt.Sprintf(format, args...)}
}

// Config is the ladder of one profile. Every field is a profile key, named in
// its comment. Start from DefaultConfig; the zero Config fails Validate.
type Config struct {
	// TargetPPS is stage 1's packet budget in packets per second
	// (target_pps, default 10000). Stage 1's byte budget is TargetPPS × the
	// average frame size, in bytes per second.
	TargetPPS float64
	// Stage2Factor multiplies both of stage 1's budgets for stage 2
	// (stage2_factor, default 0.25), in (0, 1].
	Stage2Factor float64
	// Delay1 is stage 1's delay-queue delay (stage1_delay, default 200 ms);
	// it applies in shape mode only. 0 means no delay.
	Delay1 time.Duration
	// DelayFactor2 multiplies Delay1 for stage 2 (stage2_delay_factor,
	// default 2), at least 1.
	DelayFactor2 float64
	// Stage1Duration is how long stage 1 lasts before the ladder judges
	// whether to escalate (stage1_duration, default 5 minutes).
	Stage1Duration time.Duration
	// Stage2Duration is the same for stage 2 (stage2_duration, default 5
	// minutes).
	Stage2Duration time.Duration
	// SaturationShare is the share of a stage's period that the offered load
	// must spend above the stage's budget for the ladder to escalate
	// (saturation_share, default 0.5): escalation needs strictly more than
	// this share. In [0, 1).
	SaturationShare float64
	// ClearAfter is how long offered traffic must stay at or below
	// Threshold for the ladder to step down one rung (clear_after, default
	// 10 minutes).
	ClearAfter time.Duration
	// Threshold is the rate under which offered traffic counts as calm
	// (threshold_pps, threshold_bps, threshold_direction), with detect's
	// semantics: above PPS or above BitsPerSecond is not calm.
	Threshold detect.Threshold
}

// DefaultConfig returns the numbers of seed 001 and issue 6: 10000 pps,
// a quarter and twice the 200 ms delay in stage 2, 5 minute stages, half the
// period saturated, 10 minutes of calm to step down, detect's default
// threshold.
func DefaultConfig() Config {
	return Config{
		TargetPPS:       10000,
		Stage2Factor:    0.25,
		Delay1:          200 * time.Millisecond,
		DelayFactor2:    2,
		Stage1Duration:  5 * time.Minute,
		Stage2Duration:  5 * time.Minute,
		SaturationShare: 0.5,
		ClearAfter:      10 * time.Minute,
		Threshold:       detect.DefaultThreshold(),
	}
}

// Validate checks c and returns an error naming the profile key to fix and
// wrapping ErrInvalidConfig, or nil.
func (c Config) Validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case !finite(c.TargetPPS) || c.TargetPPS <= 0:
		return invalid("target_pps %v: want a positive number of packets per second, such as 10000", c.TargetPPS)
	case !finite(c.Stage2Factor) || c.Stage2Factor <= 0 || c.Stage2Factor > 1:
		return invalid("stage2_factor %v: want a share of stage 1's budgets in (0, 1], such as 0.25", c.Stage2Factor)
	case c.Delay1 < 0:
		return invalid("stage1_delay %v is negative; want a duration such as 200ms, or 0 for none", c.Delay1)
	case !finite(c.DelayFactor2) || c.DelayFactor2 < 1:
		return invalid("stage2_delay_factor %v: want a factor of at least 1, such as 2", c.DelayFactor2)
	case float64(c.Delay1)*c.DelayFactor2 > float64(time.Hour):
		return invalid("stage1_delay %v × stage2_delay_factor %v is over an hour; want a shorter delay", c.Delay1, c.DelayFactor2)
	case c.Stage1Duration <= 0:
		return invalid("stage1_duration %v: want a positive duration such as 5m", c.Stage1Duration)
	case c.Stage2Duration <= 0:
		return invalid("stage2_duration %v: want a positive duration such as 5m", c.Stage2Duration)
	case !finite(c.SaturationShare) || c.SaturationShare < 0 || c.SaturationShare >= 1:
		return invalid("saturation_share %v: want a share of the period in [0, 1), such as 0.5", c.SaturationShare)
	case c.ClearAfter <= 0:
		return invalid("clear_after %v: want a positive duration such as 10m", c.ClearAfter)
	}
	if err := c.Threshold.Validate(); err != nil {
		return &configError{msg: "ladder: " + strings.TrimPrefix(err.Error(), "detect: "), cause: err}
	}
	return nil
}

// limits returns the limits of rung 1 (stage 1), 2 or 3 for frames of
// avgFrame bytes on average (0: unknown, no byte budget).
func (c Config) limits(rung int, avgFrame float64) Limits {
	var l Limits
	switch rung {
	case 1:
		l = Limits{PPS: c.TargetPPS, BytesPerSec: c.TargetPPS * avgFrame, Delay: c.Delay1}
	case 2:
		l = Limits{
			PPS:         c.TargetPPS * c.Stage2Factor,
			BytesPerSec: c.TargetPPS * avgFrame * c.Stage2Factor,
			Delay:       time.Duration(math.Round(float64(c.Delay1) * c.DelayFactor2)),
		}
	default:
		l = Limits{Block: true}
	}
	return l
}
