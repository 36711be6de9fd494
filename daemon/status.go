package daemon

import (
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward"
)

func dirStatus(d DirSpec, s forward.DirStats, qs *forward.QueueStats) api.Direction {
	var controlBurst *int
	if b := d.policy().Classes[classify.Control].BurstPackets; b > 0 {
		controlBurst = &b
	}
	out := api.Direction{
		Limits:        apiLimits(d.PPS, d.BPS, d.Burst, d.BurstBytes),
		BypassLimits:  apiLimits(d.BypassPPS, d.BypassBPS, nil, nil),
		ControlLimits: apiLimits(d.ControlPPS, nil, controlBurst, nil),
		Classes:       make(map[string]api.ClassStats, classify.NumClasses),
		ReadErrors:    s.ReadErrors,
		Mode:          "police",
	}
	if d.Mode == "shape" {
		out.Mode = "shape"
	}
	if qs != nil {
		ms := func(t time.Duration) float64 { return float64(t) / float64(time.Millisecond) }
		out.Queue = api.Queue{DelayMS: ms(qs.Delay), MaxBytes: qs.MaxBytes, MaxTimeMS: ms(qs.MaxTime),
			Frames: qs.Frames, Bytes: qs.Bytes, OldestAgeMS: ms(qs.OldestAge)}
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		cs := s.Classes[c]
		drops := make(map[string]uint64)
		for r := forward.Reason(0); r < forward.NumReasons; r++ {
			drops[r.String()] = cs.Drops[r]
		}
		out.Classes[c.String()] = api.ClassStats{
			PassedPackets:  cs.PassedPackets,
			PassedBytes:    cs.PassedBytes,
			DroppedPackets: cs.DroppedPackets,
			DroppedBytes:   cs.DroppedBytes,
			Drops:          drops,
		}
	}
	return out
}
