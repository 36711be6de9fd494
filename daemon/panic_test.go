package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/forward/fakedev"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// panicDev is a tap whose reads panic, as a forwarder bug met by a frame
// would.
type panicDev struct{}

func (d *panicDev) Read([][]byte, []int, int) (int, error) { panic("a bug met by a frame") }
func (d *panicDev) Write(b [][]byte, _ int) (int, error)   { return len(b), nil }
func (d *panicDev) Close() error                           { return nil }

// A panic in one port's forwarder is contained: that port's forwarder
// stops and its status says so, with the panic counted; the daemon stays
// alive for the watchdog; another port's forwarder goes on.
func TestForwarderPanicIsContained(t *testing.T) {
	fb := fakesplice.New("vm-1", "vm-2")
	bad, _ := splice.TapNames("vm-1")
	good, _ := splice.TapNames("vm-2")
	goodDev := fakedev.New(16)
	h := &hosttest.Host{Exists: fb.Exists, Tap: func(name string) (forward.Device, error) {
		switch name {
		case bad:
			return &panicDev{}, nil
		case good:
			return goodDev, nil
		}
		return fakedev.New(16), nil
	}}
	m := NewWithOptions(nil, Options{StateDir: t.TempDir(), PendingTTL: time.Hour, Host: h}, fb)
	t.Cleanup(func() { m.Close() })
	for _, p := range []string{"vm-1", "vm-2"} {
		if _, err := quarantineFlags(m, p, api.LimitFlags{"pps": "5000"}, false); err != nil {
			t.Fatal(err)
		}
	}
	var q api.Quarantine
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		q = mustStatus(t, m, "vm-1")
		if q.Directions.FromVM.Panics == 1 || time.Now().After(deadline) {
			break
		}
	}
	if q.Directions.FromVM.Panics != 1 {
		t.Fatalf("vm-1: %d panics in status, want 1", q.Directions.FromVM.Panics)
	}
	if w := strings.Join(q.Warnings, "; "); !strings.Contains(w, "the forwarder panicked (a bug met by a frame, from_vm) and stopped") {
		t.Errorf("vm-1's warnings %q do not say its forwarder panicked", w)
	}
	if !m.Alive() {
		t.Error("the daemon reports itself dead to the watchdog after a contained panic")
	}
	for deadline := time.Now().Add(5 * time.Second); m.Events().Health[EventForwarderPanic] != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("health events %v, want forwarder_panic 1", m.Events().Health)
			break
		}
	}
	// vm-2 still forwards.
	fr := make([]byte, 60)
	fr[12], fr[13] = 0x88, 0xb5 // local experimental ethertype: class other
	goodDev.Inject(fr)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if mustStatus(t, m, "vm-2").Directions.FromVM.Classes["other"].PassedPackets == 1 {
			return
		}
	}
	t.Error("vm-2's forwarder did not forward after vm-1's panicked")
}
