package daemon

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// fakeSubs records WatchLinks's subscriptions.
type fakeSubs struct {
	mu   sync.Mutex
	subs []fakeSub
}

type fakeSub struct {
	ch    chan netlink.LinkUpdate
	done  chan struct{}
	onErr func(error)
}

func (f *fakeSubs) subscribe(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs = append(f.subs, fakeSub{ch, done, onErr})
	return nil
}

func (f *fakeSubs) get(i int) (fakeSub, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i >= len(f.subs) {
		return fakeSub{}, false
	}
	return f.subs[i], true
}

// TestLinkWatchResubscribes: when the netlink subscription fails (events
// lost, as with ENOBUFS), WatchLinks subscribes again and checks every
// port: a quarantined port that vanished meanwhile goes pending, a pending
// one whose port appeared meanwhile is applied.
func TestLinkWatchResubscribes(t *testing.T) {
	fb := fakesplice.New("vm-7")
	m := newTestManager(t, t.TempDir(), fb)
	subs := &fakeSubs{}
	testHost(m).Subscribe = subs.subscribe
	testHost(m).LinkNames = func() ([]string, error) {
		var out []string
		for _, p := range []string{"vm-7", "vm-8", "lo"} {
			if fb.Exists(p) {
				out = append(out, p)
			}
		}
		return out, nil
	}
	req := api.LimitFlags{"pps": "5000"}
	if _, err := quarantineFlags(m, "vm-7", req, false); err != nil {
		t.Fatal(err)
	}
	if _, err := quarantineFlags(m, "vm-8", req, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.WatchLinks(ctx); err != nil {
		t.Fatal(err)
	}
	first, _ := subs.get(0)

	// Events lost: vm-7 goes, vm-8 comes; then the subscription fails.
	delete(fb.Ports, "vm-7")
	fb.Ports["vm-8"] = true
	first.onErr(errors.New("Receive failed: no buffer space available"))
	close(first.ch)
	select {
	case <-first.done:
	case <-time.After(time.Second):
		t.Fatal("the failed subscription's done was not closed")
	}

	deadline := time.Now().Add(ResubscribeDelay + 3*time.Second)
	for {
		s7, s8 := mustStatus(t, m, "vm-7"), mustStatus(t, m, "vm-8")
		if s7.State == StatePending && s8.State == StateActive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the watch failed: vm-7 %s (want pending), vm-8 %s (want active)", s7.State, s8.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fb.Spliced("vm-7") || !fb.Spliced("vm-8") {
		t.Errorf("splices after the resync: vm-7 %v, vm-8 %v", fb.Spliced("vm-7"), fb.Spliced("vm-8"))
	}
	second, ok := subs.get(1)
	if !ok {
		t.Fatal("no second subscription")
	}
	// The end of the watch closes the live subscription, without
	// subscribing again.
	cancel()
	select {
	case <-second.done:
	case <-time.After(time.Second):
		t.Fatal("the watch did not end with its context")
	}
	time.Sleep(ResubscribeDelay + 200*time.Millisecond)
	if _, ok := subs.get(2); ok {
		t.Error("subscribed again after the context ended")
	}
}
