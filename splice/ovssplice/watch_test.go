package ovssplice

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatcher: one Watcher for two clients. A restart of ovs-vswitchd (a
// new pid) calls both repairs, in the order they registered, and a repair
// that fails is called again until it succeeds; Others calls the other
// client only, at once; with no client active the loop stops, and Start
// runs it again.
func TestWatcher(t *testing.T) {
	var pid atomic.Value
	pid.Store("100")
	w := NewWatcher(func() string { return pid.Load().(string) }, 20*time.Millisecond, nil)
	var mu sync.Mutex
	var calls []string
	var activeA, activeB atomic.Bool
	failB := 2 // B's next two repairs fail
	a := w.Register("a", activeA.Load, func(restarted bool) bool {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, map[bool]string{true: "a restart", false: "a"}[restarted])
		return true
	})
	b := w.Register("b", activeB.Load, func(restarted bool) bool {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, map[bool]string{true: "b restart", false: "b"}[restarted])
		if failB > 0 {
			failB--
			return false
		}
		return true
	})
	got := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(calls) }
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for start := time.Now(); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Since(start) > 2*time.Second {
				t.Fatalf("%s: not after 2 s; calls %v", what, got())
			}
		}
	}

	activeA.Store(true)
	activeB.Store(true)
	a.Start()
	time.Sleep(60 * time.Millisecond)
	if c := got(); len(c) != 0 {
		t.Fatalf("calls without a restart: %v", c)
	}
	pid.Store("200")
	waitFor("both repaired", func() bool { return len(got()) == 4 })
	if c := got(); !slices.Equal(c, []string{"a restart", "b restart", "b restart", "b restart"}) {
		t.Errorf("calls after a restart %v, want a's once, then b's until it succeeds", c)
	}
	time.Sleep(60 * time.Millisecond)
	if c := got(); len(c) != 4 {
		t.Errorf("calls after the repairs: %v", c)
	}

	b.Others() // b changed something: a is called, not b
	waitFor("a called", func() bool { return len(got()) == 5 })
	if c := got(); c[4] != "a" {
		t.Errorf("after b.Others: %v", c)
	}

	activeA.Store(false)
	activeB.Store(false)
	waitFor("the loop stops", func() bool { return !w.Running() })
	pid.Store("300") // a restart while nobody watches: no call
	activeB.Store(true)
	b.Start()
	if !w.Running() {
		t.Fatal("Start did not start the loop")
	}
	time.Sleep(60 * time.Millisecond)
	if c := got(); len(c) != 5 {
		t.Errorf("calls after Start: %v (the pid at Start is the one it knows)", c)
	}
	activeB.Store(false)
	waitFor("the loop stops again", func() bool { return !w.Running() })
}
