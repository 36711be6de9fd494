// Package fakesplice is an in-memory splice.Backend for unit tests: it knows
// a set of ports, records what is spliced, and can be told to fail.
package fakesplice

import (
	"fmt"
	"sync"
	"time"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

// Backend is a fake splice backend. Safe for concurrent use.
type Backend struct {
	mu sync.Mutex
	// Ports maps a port name to whether it is on a bridge.
	Ports map[string]bool
	// FailSplice, when set, makes Splice fail with it.
	FailSplice error
	// CanFailOpen lets Splice accept Options.FailOpen.
	CanFailOpen bool
	// Delay is how long each Splice and Release takes, as a slow
	// switch's command-line tools would.
	Delay     time.Duration
	spliced   map[string]bool
	intents   map[string]string
	backstops map[string][2]steer.Backstop // by port, by direction
	beats     map[string]uint64
	released  int
	splices   int
}

// New returns a backend that knows the given bridged ports.
func New(bridged ...string) *Backend {
	b := &Backend{Ports: map[string]bool{}, spliced: map[string]bool{}, intents: map[string]string{},
		backstops: map[string][2]steer.Backstop{}, beats: map[string]uint64{}}
	for _, p := range bridged {
		b.Ports[p] = true
	}
	return b
}

// Name implements splice.Backend.
func (b *Backend) Name() string { return "fake" }

// Handles implements splice.Backend.
func (b *Backend) Handles(port string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bridged, ok := b.Ports[port]
	if !ok {
		return false, fmt.Errorf("%s: %w", port, splice.ErrNoPort)
	}
	if !bridged {
		return false, fmt.Errorf("%s: %w", port, splice.ErrNotBridged)
	}
	return true, nil
}

// Splice implements splice.Backend.
func (b *Backend) Splice(port string, opt splice.Options) (splice.Splice, error) {
	b.wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	if opt.FailOpen && !b.CanFailOpen {
		return nil, fmt.Errorf("%s: %w", port, splice.ErrFailOpen)
	}
	if b.FailSplice != nil {
		return nil, b.FailSplice
	}
	if b.spliced[port] {
		return nil, fmt.Errorf("%s: %w", port, splice.ErrSpliced)
	}
	b.spliced[port] = true
	b.splices++
	return &fakeSplice{b: b, port: port, failOpen: opt.FailOpen}, nil
}

// wait sleeps the backend's Delay.
func (b *Backend) wait() {
	b.mu.Lock()
	d := b.Delay
	b.mu.Unlock()
	time.Sleep(d)
}

// Spliced reports whether port is currently spliced.
func (b *Backend) Spliced(port string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.spliced[port]
}

// Released counts releases.
func (b *Backend) Released() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.released
}

type fakeSplice struct {
	b        *Backend
	port     string
	failOpen bool
	once     sync.Once
}

func (s *fakeSplice) Port() string        { return s.port }
func (s *fakeSplice) Backend() string     { return "fake" }
func (s *fakeSplice) VMTap() string       { v, _ := splice.TapNames(s.port); return v }
func (s *fakeSplice) NetTap() string      { _, n := splice.TapNames(s.port); return n }
func (s *fakeSplice) PriorityTap() string { return splice.PriorityTapName(s.port) }
func (s *fakeSplice) Warnings() []string  { return nil }
func (s *fakeSplice) Release() error {
	s.b.wait()
	s.once.Do(func() {
		s.b.mu.Lock()
		defer s.b.mu.Unlock()
		delete(s.b.spliced, s.port)
		delete(s.b.intents, s.port)
		s.b.released++
	})
	return nil
}

// FailOpen reports what Splice was asked for.
func (s *fakeSplice) FailOpen() bool { return s.failOpen }

// Exists reports whether the backend knows port (bridged or not).
func (b *Backend) Exists(port string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.Ports[port]
	return ok
}

// Splices counts successful Splice calls (adoptions are not counted).
func (b *Backend) Splices() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.splices
}

// Intent returns the intent recorded for port.
func (b *Backend) Intent(port string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.intents[port]
}

// SetIntent records intent, as a backend keeps it on the plumbing.
func (s *fakeSplice) SetIntent(intent string) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.intents[s.port] = intent
	return nil
}

// Found lists the spliced ports, as a restarted daemon finds them.
func (b *Backend) Found() ([]splice.Found, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []splice.Found
	for p := range b.spliced {
		out = append(out, splice.Found{Port: p, Intent: b.intents[p]})
	}
	return out, nil
}

// Adopt returns the splice of a spliced port.
func (b *Backend) Adopt(port string) (splice.Splice, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.spliced[port] {
		return nil, fmt.Errorf("%s: %w", port, splice.ErrNotSpliced)
	}
	return &fakeSplice{b: b, port: port}, nil
}

// SetBackstop records b, as a kernel half would hold it.
func (s *fakeSplice) SetBackstop(d steer.Dir, b steer.Backstop) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if d > steer.ToVM {
		return fmt.Errorf("fake: no direction %d", d)
	}
	v := s.b.backstops[s.port]
	v[d] = b
	s.b.backstops[s.port] = v
	return nil
}

// Beat records the heartbeat.
func (s *fakeSplice) Beat(now uint64, _ time.Duration) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.beats[s.port] = now
	return nil
}

// KernelStats returns zeros.
func (s *fakeSplice) KernelStats() (steer.Stats, error) { return steer.Stats{}, nil }

// Backstop returns the backstop last set on port's splice for d.
func (b *Backend) Backstop(port string, d steer.Dir) steer.Backstop {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.backstops[port][d]
}

// Beat returns the heartbeat last written on port's splice (0: none).
func (b *Backend) Beat(port string) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.beats[port]
}

var (
	_ splice.Adopter        = (*Backend)(nil)
	_ splice.IntentRecorder = (*fakeSplice)(nil)
	_ splice.Kernel         = (*fakeSplice)(nil)
)
