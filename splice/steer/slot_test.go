package steer

import (
	"errors"
	"testing"
	"time"
)

type fakeHolder struct {
	beats  int
	set    Backstop
	closed bool
}

func (f *fakeHolder) SetBackstop(d Dir, b Backstop) error        { f.set = b; return nil }
func (f *fakeHolder) Beat(now uint64, stale time.Duration) error { f.beats++; return nil }
func (f *fakeHolder) Stats() (Stats, error)                      { return Stats{}, nil }
func (f *fakeHolder) Close() error                               { f.closed = true; return nil }

// A slot answers for the kernel half it holds, and ErrNoKernel without one.
func TestSlot(t *testing.T) {
	var s Slot[*fakeHolder]
	check := func(want error) {
		t.Helper()
		if err := s.Beat(1, time.Second); !errors.Is(err, want) {
			t.Errorf("Beat: %v, want %v", err, want)
		}
		if err := s.SetBackstop(0, Backstop{}); !errors.Is(err, want) {
			t.Errorf("SetBackstop: %v, want %v", err, want)
		}
		if _, err := s.KernelStats(); !errors.Is(err, want) {
			t.Errorf("KernelStats: %v, want %v", err, want)
		}
	}
	check(ErrNoKernel)
	h := &fakeHolder{}
	s.Hold(h)
	check(nil)
	if got, ok := s.Half(); !ok || got != h || h.beats != 1 {
		t.Fatalf("Half: %v %v, %d beats", got, ok, h.beats)
	}
	if got, ok := s.Take(); !ok || got != h {
		t.Fatalf("Take: %v %v", got, ok)
	}
	if _, ok := s.Take(); ok {
		t.Fatal("taken twice")
	}
	check(ErrNoKernel)
}
