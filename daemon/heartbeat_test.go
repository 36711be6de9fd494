package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/splice/fakesplice"
	"github.com/shaperd/shaperd/splice/steer"
)

// TestHeartbeat: the daemon beats the kernel half of a running quarantine
// every HeartbeatInterval, with steer's clock, and stops when its forwarder
// stops.
func TestHeartbeat(t *testing.T) {
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, t.TempDir(), fb)
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "5000"}, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.RunHeartbeat(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	var last uint64
	beats := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b := fb.Beat("vm-1"); b != last {
			beats++
			last = b
			if lag := steer.Now() - b; lag > uint64(HeartbeatInterval+50*time.Millisecond) {
				t.Errorf("a beat %v old", time.Duration(lag))
			}
		}
	}
	if beats < 4 || beats > 7 {
		t.Errorf("%d beats in 1 s, want about %d", beats, time.Second/HeartbeatInterval)
	}
	// The forwarder stops: no more beats.
	m.mu.Lock()
	_, fwd := m.qSpliceLocked(m.q["vm-1"])
	m.mu.Unlock()
	fwd.Close()
	time.Sleep(2 * HeartbeatInterval)
	b := fb.Beat("vm-1")
	time.Sleep(3 * HeartbeatInterval)
	if fb.Beat("vm-1") != b {
		t.Error("beats went on after the forwarder stopped")
	}
}
