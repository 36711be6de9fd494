package quota

import (
	"time"

	"github.com/shaperd/shaperd/classify"
)

// Hook adapts an Account to the forwarder's per-pipe quota hook
// (forward.Quota): each pipe of each of the tenant's ports gets its own
// Hook from Account.Hook, all sharing the Account. A Hook owns the Rand
// that decides its frames in the probabilistic zone, so it is not safe for
// concurrent use: the pipe's mutex serialises its calls. The verdict's
// reason (soft zone or hard cap) is counted in the Account's Counters.
type Hook struct {
	a   *Account
	rnd Rand
}

// Hook returns a new Hook on a, its Rand seeded with seed (give each pipe
// a different seed, e.g. from a counter).
func (a *Account) Hook(seed uint64) *Hook { return &Hook{a: a, rnd: NewRand(seed)} }

// Admit implements forward.Quota: it decides and counts a frame of n bytes
// travelling in dir at now; must marks bypass and control frames, which
// always pass. It does not allocate.
func (h *Hook) Admit(now time.Time, dir classify.Direction, n int, must bool) bool {
	return h.a.Admit(Dir(dir), n, must, now, h.rnd.Uint32()) == Pass
}
