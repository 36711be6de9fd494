package forward

import (
	"encoding/hex"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward/fakedev"
)

// panicQuota panics on a frame of exactly size bytes, and admits the rest.
type panicQuota struct{ size int }

func (q panicQuota) Admit(_ time.Time, _ classify.Direction, n int, _ bool) bool {
	if n == q.size {
		panic("quota: a frame of the poisoned size")
	}
	return true
}

// A panic while a frame is decided stops that forwarder only: it is
// counted, its Failure holds the frame's hex and the panic, the forwarder
// closes itself (with the direction's lock released, so Close and Stats do
// not hang), and another forwarder goes on forwarding.
func TestPanicIsContained(t *testing.T) {
	flood := udpFlood(t)
	poisoned := frame(t, true, &layers.UDP{SrcPort: 40000, DstPort: 9}, 250-14-20-8+7, 0)
	bad := Policy{Aggregate: bucket.Limits{PPS: 1e6}, Quota: panicQuota{size: len(poisoned)}}
	vm, nt := fakedev.New(64), fakedev.New(64)
	f, err := New(Config{FromVM: bad}, Devices{VM: vm, Net: nt})
	if err != nil {
		t.Fatal(err)
	}
	vm2, nt2 := fakedev.New(64), fakedev.New(64)
	g, err := New(Config{FromVM: bad}, Devices{VM: vm2, Net: nt2})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	vm.Inject(flood)
	vm.Inject(poisoned)
	select {
	case <-f.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the forwarder that panicked did not stop")
	}
	fl := f.Failure()
	if fl == nil {
		t.Fatal("no Failure after a panic")
	}
	if fl.Frame != hex.EncodeToString(poisoned) || !strings.Contains(fl.Value, "poisoned size") || fl.Direction != classify.FromVM || !strings.Contains(fl.Stack, "panicQuota") {
		t.Errorf("Failure %+v; want the poisoned frame's hex, the panic's value, the direction and the stack", fl)
	}
	if s := f.FromVM.Stats(); s.Panics != 1 {
		t.Errorf("%d panics counted, want 1", s.Panics)
	}
	if len(nt.Written()) != 1 {
		t.Errorf("%d frames written before the panic, want the one before it", len(nt.Written()))
	}
	if f.Alive() {
		t.Error("alive after a contained panic")
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close after a contained panic: %v", err)
	}

	// The other forwarder: unaffected.
	for range 3 {
		vm2.Inject(flood)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(nt2.Written()) < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := len(nt2.Written()); n != 3 || !g.Alive() || g.Failure() != nil {
		t.Errorf("the other forwarder wrote %d of 3 frames, alive %v, failure %v", n, g.Alive(), g.Failure())
	}
	runtime.Gosched()
}

// In shape mode the quota is asked when a frame leaves the queue, on the
// releaser or on an input goroutine (releaseDue): a panic there is
// contained too, and Close does not hang on a lock it left.
func TestPanicInReleaseIsContained(t *testing.T) {
	flood := udpFlood(t)
	poisoned := frame(t, true, &layers.UDP{SrcPort: 40000, DstPort: 9}, 250-14-20-8+7, 0)
	pol := Policy{Mode: Shape, Delay: time.Millisecond, Aggregate: bucket.Limits{PPS: 1e6}, Quota: panicQuota{size: len(poisoned)}}
	vm, nt := fakedev.New(64), fakedev.New(64)
	f, err := New(Config{FromVM: pol}, Devices{VM: vm, Net: nt})
	if err != nil {
		t.Fatal(err)
	}
	vm.Inject(flood)
	vm.Inject(poisoned)
	for range 5 {
		vm.Inject(flood)
	}
	select {
	case <-f.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the forwarder that panicked in its release path did not stop")
	}
	if fl := f.Failure(); fl == nil || !strings.Contains(fl.Value, "poisoned size") {
		t.Fatalf("Failure %+v, want the release path's panic", fl)
	}
	if s := f.FromVM.Stats(); s.Panics != 1 {
		t.Errorf("%d panics counted, want 1", s.Panics)
	}
	done := make(chan error, 1)
	go func() { done <- f.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs after a panic in the release path")
	}
}
