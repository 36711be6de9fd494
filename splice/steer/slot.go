package steer

import (
	"errors"
	"sync"
	"time"
)

// ErrNoKernel means the splice holds no kernel half (it failed to adopt
// one, or is released).
var ErrNoKernel = errors.New("the splice holds no kernel half")

// Holder is what a splice keeps of its kernel half: a *Half, or a fake in a
// backend's unit tests.
type Holder interface {
	SetBackstop(d Dir, b Backstop) error
	Beat(now uint64, stale time.Duration) error
	Stats() (Stats, error)
	Close() error
}

var _ Holder = (*Half)(nil)

// Slot holds a splice's kernel half for the kernel's callers (the
// heartbeat, backstop changes, status), and gives every backend the same
// SetBackstop, Beat and KernelStats, which package splice's Kernel asks of
// a splice: ErrNoKernel when it holds none. Its lock is its own: a backend
// never takes its own lock around a Slot's methods, so the heartbeat does
// not wait for a slow Splice or Release of another port. The zero value
// holds nothing; a Slot must not be copied. Its methods are safe for
// concurrent use.
type Slot[H Holder] struct {
	mu   sync.Mutex
	half H
	held bool
}

// Hold makes h, a kernel half that is not nil, the one the slot holds.
func (s *Slot[H]) Hold(h H) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.half, s.held = h, true
}

// Half returns the kernel half held, and whether there is one.
func (s *Slot[H]) Half() (H, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.half, s.held
}

// Take stops holding the kernel half and returns it, for the caller to
// close; false if there was none.
func (s *Slot[H]) Take() (H, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, held := s.half, s.held
	var zero H
	s.half, s.held = zero, false
	return h, held
}

// SetBackstop sets direction d's backstop ceilings in the kernel half.
func (s *Slot[H]) SetBackstop(d Dir, b Backstop) error {
	h, ok := s.Half()
	if !ok {
		return ErrNoKernel
	}
	return h.SetBackstop(d, b)
}

// Beat writes and arms the kernel half's heartbeat.
func (s *Slot[H]) Beat(now uint64, stale time.Duration) error {
	h, ok := s.Half()
	if !ok {
		return ErrNoKernel
	}
	return h.Beat(now, stale)
}

// KernelStats reads the kernel half's counters.
func (s *Slot[H]) KernelStats() (Stats, error) {
	h, ok := s.Half()
	if !ok {
		return Stats{}, ErrNoKernel
	}
	return h.Stats()
}
