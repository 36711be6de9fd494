package owner

import (
	"errors"
	"log/slog"
	"os"
	"testing"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/forward/fakedev"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

func testEnv(fb *fakesplice.Backend) *Env {
	return &Env{
		Backends:   []splice.Backend{fb},
		OpenTap:    func(string) (forward.Device, error) { return fakedev.New(4), nil },
		PortExists: fb.Exists,
		Log:        slog.New(slog.DiscardHandler),
	}
}

func want(k Kind, pps float64) Want {
	pol := forward.Policy{Aggregate: bucket.Limits{PPS: pps}}
	return Want{Kind: k, Options: splice.Options{BypassPorts: []uint16{22}}, FailFallback: true, FromVM: pol, ToVM: pol, Intent: "pps=x"}
}

// The owner makes one splice per kind, changes policies in place, re-splices
// on a change of kind, and reverts for None.
func TestApply(t *testing.T) {
	fb := fakesplice.New("vm-1")
	p := New("vm-1", testEnv(fb))
	p.Lock()
	defer p.Unlock()
	steps := []struct {
		w        Want
		out      Outcome
		splices  int
		released int
		kind     Kind
	}{
		{want(Quarantine, 1000), Spliced, 1, 0, Quarantine},
		{want(Quarantine, 2000), Updated, 1, 0, Quarantine},
		{want(Tenant, 0), Spliced, 2, 1, Tenant},
		{want(Tenant, 0), Updated, 2, 1, Tenant},
		{Want{}, Reverted, 2, 2, None},
		{Want{}, Unchanged, 2, 2, None},
	}
	for i, s := range steps {
		out, exists, err := p.Apply(s.w)
		if err != nil || out != s.out || !exists {
			t.Fatalf("step %d: Apply = %v, %v, %v; want %v", i, out, exists, err, s.out)
		}
		sp, fwd, k := p.State()
		if fb.Splices() != s.splices || fb.Released() != s.released || k != s.kind || (sp != nil) != (k != None) || (fwd != nil) != (k != None) {
			t.Fatalf("step %d: %d splices, %d released, kind %v, splice %v, forwarder %v", i, fb.Splices(), fb.Released(), k, sp, fwd)
		}
		if fwd != nil && fwd.FromVM.Policy().Aggregate.PPS != s.w.FromVM.Aggregate.PPS {
			t.Fatalf("step %d: forwarder's pps %v, want %v", i, fwd.FromVM.Policy().Aggregate.PPS, s.w.FromVM.Aggregate.PPS)
		}
		if k == Quarantine && fb.Intent("vm-1") != "pps=x" {
			t.Fatalf("step %d: intent %q", i, fb.Intent("vm-1"))
		}
	}
	if !p.Idle() {
		t.Fatal("not idle after None")
	}
}

// A port that is gone is not spliced, and loses what it had.
func TestApplyPortGone(t *testing.T) {
	fb := fakesplice.New("vm-1")
	p := New("vm-1", testEnv(fb))
	p.Lock()
	defer p.Unlock()
	if _, _, err := p.Apply(want(Quarantine, 1000)); err != nil {
		t.Fatal(err)
	}
	delete(fb.Ports, "vm-1")
	out, exists, err := p.Apply(want(Quarantine, 1000))
	if err != nil || exists || out != Reverted || !p.Idle() || fb.Released() != 1 {
		t.Fatalf("Apply on a gone port = %v, %v, %v; idle %v, released %d", out, exists, err, p.Idle(), fb.Released())
	}
}

// A failed splice leaves nothing; an error the operator can fix is marked.
func TestApplyErrors(t *testing.T) {
	fb := fakesplice.New("vm-1")
	env := testEnv(fb)
	errUsage := errors.New("usage")
	env.Usage = func(err error) error { return errors.Join(errUsage, err) }
	p := New("vm-1", env)
	p.Lock()
	defer p.Unlock()
	fb.FailSplice = errors.New("ovs-vsctl: no answer")
	if out, _, err := p.Apply(want(Quarantine, 1000)); err == nil || errors.Is(err, errUsage) || out != Unchanged || !p.Idle() {
		t.Fatalf("failed splice: %v, %v; idle %v", out, err, p.Idle())
	}
	fb.FailSplice = nil
	w := want(Quarantine, 1000)
	w.FailFallback = false
	w.Options.FailOpen = true // the fake cannot fail open
	if _, _, err := p.Apply(w); !errors.Is(err, errUsage) || !errors.Is(err, splice.ErrFailOpen) || !p.Idle() {
		t.Fatalf("fail open without fallback: %v", err)
	}
	fb.Ports["vm-2"] = false // on no bridge
	q := New("vm-2", env)
	q.Lock()
	defer q.Unlock()
	if _, _, err := q.Apply(want(Quarantine, 1000)); !errors.Is(err, errUsage) || !errors.Is(err, splice.ErrNotBridged) {
		t.Fatalf("a port on no bridge: %v", err)
	}
}

// Stop keeps the splice for the next daemon; Adopt takes it over.
func TestStopAndAdopt(t *testing.T) {
	fb := fakesplice.New("vm-1")
	p := New("vm-1", testEnv(fb))
	p.Lock()
	if _, _, err := p.Apply(want(Quarantine, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	p.Unlock()
	if sp, fwd, _ := p.State(); sp == nil || fwd != nil || !fb.Spliced("vm-1") {
		t.Fatalf("after Stop: splice %v forwarder %v", sp, fwd)
	}
	sp, err := fb.Adopt("vm-1")
	if err != nil {
		t.Fatal(err)
	}
	p2 := New("vm-1", testEnv(fb))
	p2.Lock()
	defer p2.Unlock()
	if err := p2.Adopt(sp, want(Quarantine, 3000)); err != nil {
		t.Fatal(err)
	}
	if out, _, err := p2.Apply(want(Quarantine, 3000)); err != nil || out != Updated || fb.Splices() != 1 {
		t.Fatalf("Apply after Adopt: %v %v, %d splices; want Updated in place", out, err, fb.Splices())
	}
	_, fwd, _ := p2.State()
	fwd.Close()
}

// remnant is a splice that can only be released (splice.Remnant).
type remnant struct{ splice.Splice }

func (remnant) Remnant() string { return "its bridge is gone" }

// Adopt refuses a remnant (no forwarder runs on taps that lead nowhere)
// and releases it; the next Apply splices again.
func TestAdoptRemnant(t *testing.T) {
	fb := fakesplice.New("vm-1")
	p := New("vm-1", testEnv(fb))
	p.Lock()
	defer p.Unlock()
	sp, err := fb.Splice("vm-1", splice.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Adopt(remnant{sp}, want(Quarantine, 1000)); err == nil {
		t.Fatal("Adopt of a remnant succeeded")
	}
	if got, fwd, _ := p.State(); got != nil || fwd != nil || fb.Released() != 1 {
		t.Fatalf("after a refused remnant: splice %v, forwarder %v, %d released; want it released and nothing held", got, fwd, fb.Released())
	}
	if out, _, err := p.Apply(want(Quarantine, 1000)); err != nil || out != Spliced || fb.Released() != 1 || fb.Splices() != 2 {
		t.Fatalf("Apply after the remnant: %v %v; %d released, %d splices", out, err, fb.Released(), fb.Splices())
	}
}

// holding is a splice that holds the files of its taps (splice.TapHolder)
// and takes GSO segments (splice.Offloader), as the tc backend's does.
type holding struct {
	splice.Splice
	files map[string]*os.File
}

func (h holding) TakeTap(name string) *os.File {
	f := h.files[name]
	delete(h.files, name)
	return f
}

func (holding) Offloads() bool { return true }

// holdingBackend splices through fb and wraps each splice in holding.
type holdingBackend struct {
	*fakesplice.Backend
	files map[string]*os.File
}

func (b holdingBackend) Splice(port string, opt splice.Options) (splice.Splice, error) {
	sp, err := b.Backend.Splice(port, opt)
	if err != nil {
		return nil, err
	}
	return holding{sp, b.files}, nil
}

// The owner takes the files a splice holds (splice.TapHolder) for its
// taps' first queues, with the splice's offloads, and attaches anew
// (OpenQueues) only to a tap whose file it was not handed.
func TestStartTakesTheSplicesFiles(t *testing.T) {
	fb := fakesplice.New("vm-1")
	vm, nt := splice.TapNames("vm-1")
	prio := splice.PriorityTapName("vm-1")
	files := map[string]*os.File{}
	for _, name := range []string{vm, nt} { // the priority tap's file is not held
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		files[name] = r
	}
	held := map[string]*os.File{vm: files[vm], nt: files[nt]}
	env := testEnv(fb)
	env.Backends = []splice.Backend{holdingBackend{fb, files}}
	env.TapQueues = 2
	took, opened := map[string]int{}, map[string]int{}
	env.TakeQueues = func(f *os.File, name string, n int, offload bool) ([]forward.Device, error) {
		if f != held[name] || !offload {
			t.Errorf("TakeQueues(%v, %s, %d, %v): not the splice's file of %s, or no offload", f, name, n, offload, name)
		}
		f.Close()
		took[name] = n
		return []forward.Device{fakedev.New(4), fakedev.New(4)}[:n], nil
	}
	env.OpenQueues = func(name string, n int, offload bool) ([]forward.Device, error) {
		opened[name] = n
		return []forward.Device{fakedev.New(4), fakedev.New(4)}[:n], nil
	}
	p := New("vm-1", env)
	p.Lock()
	defer p.Unlock()
	if _, _, err := p.Apply(want(Quarantine, 1000)); err != nil {
		t.Fatal(err)
	}
	if len(took) != 2 || took[vm] != 2 || took[nt] != 2 || len(opened) != 1 || opened[prio] != 1 || len(files) != 0 {
		t.Errorf("taken %v, attached anew %v, left with the splice %v; want %s and %s taken (2 queues), only %s attached", took, opened, files, vm, nt, prio)
	}
	if _, _, err := p.Apply(Want{}); err != nil {
		t.Fatal(err)
	}
}
