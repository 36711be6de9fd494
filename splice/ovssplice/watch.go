package ovssplice

import (
	"log/slog"
	"sync"
	"time"
)

// VswitchdPoll is how often a Watcher reads ovs-vswitchd's pid while any
// of its clients is active: a small file read, five times a second. What
// a restart took is back within about this and the time of the repair.
const VswitchdPoll = 200 * time.Millisecond

// Watcher watches one ovs-vswitchd for its clients: the splices of the
// OVS backend and the port policies (package portpolicy/ovspolicy), whose
// flows, groups and no-flood flags ovs-vswitchd keeps only in memory.
// While any client is active it reads the pid every poll; after a restart
// (a new pid) it calls every client's repair, in the order they
// registered (none depends on another's: the policies read the splices'
// marks from the database, which a restart keeps), and calls again every
// poll a repair that reports failure until it succeeds. A
// client may also ask that the others be called (Others): the splices do
// when one starts or ends. It stops when no client is active. Safe for
// concurrent use.
type Watcher struct {
	pid  func() string
	poll time.Duration
	log  *slog.Logger

	mu      sync.Mutex // guards what follows; never held while a client is called
	clients []*WatchClient
	running bool
	kicked  bool // a client became active or asked for a call since the loop last looked
	wake    chan struct{}
}

// WatchClient is one client of a Watcher.
type WatchClient struct {
	w      *Watcher
	name   string
	active func() bool
	repair func(restarted bool) bool
	// dirty: repair is due; restarted: for a restart of ovs-vswitchd
	// (not only another client's change). Guarded by w.mu.
	dirty, restarted bool
}

// NewWatcher returns a Watcher of the ovs-vswitchd whose pid pid returns
// ("" if none), read every poll; it logs restarts to log (nil: discard).
func NewWatcher(pid func() string, poll time.Duration, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{pid: pid, poll: poll, log: log, wake: make(chan struct{}, 1)}
}

var (
	defaultWatcher     *Watcher
	defaultWatcherOnce sync.Once
)

// DefaultWatcher is the process's Watcher of the ovs-vswitchd of
// OVS_RUNDIR (VswitchdPID, every VswitchdPoll): one for the backend made
// by New and the port policies, so that one loop reads the pidfile.
func DefaultWatcher(log *slog.Logger) *Watcher {
	defaultWatcherOnce.Do(func() { defaultWatcher = NewWatcher(VswitchdPID, VswitchdPoll, log) })
	return defaultWatcher
}

// Register adds a client: active reports whether it has anything in
// ovs-vswitchd to watch, repair puts back what a restart took (restarted)
// or what another client's change needs, and reports whether it is whole. Neither
// is called with the Watcher's lock held, so both may take the client's
// own locks; the client may hold them while it calls Start or Others.
func (w *Watcher) Register(name string, active func() bool, repair func(restarted bool) bool) *WatchClient {
	c := &WatchClient{w: w, name: name, active: active, repair: repair}
	w.mu.Lock()
	w.clients = append(w.clients, c)
	w.mu.Unlock()
	return c
}

// Start makes sure the Watcher runs: the client has become active.
func (c *WatchClient) Start() { c.w.kick(nil) }

// Others asks for the other clients' repair at once: c changed something
// they depend on.
func (c *WatchClient) Others() {
	c.w.kick(func(o *WatchClient) bool { return o != c })
}

// kick marks the clients that due says (nil: none) as due, and starts or
// wakes the loop. The caller may hold its own locks, not w.mu.
func (w *Watcher) kick(due func(*WatchClient) bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, o := range w.clients {
		if due != nil && due(o) {
			o.dirty = true
		}
	}
	w.kicked = true
	if !w.running {
		w.running = true
		go w.run(w.pid())
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Running reports whether the loop runs (for tests).
func (w *Watcher) Running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running
}

// run is the loop; last is the pid when it started.
func (w *Watcher) run(last string) {
	t := time.NewTimer(w.poll)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-w.wake:
			if !t.Stop() {
				<-t.C
			}
		}
		t.Reset(w.poll)
		pid := w.pid()
		w.mu.Lock()
		clients := append([]*WatchClient(nil), w.clients...)
		w.kicked = false
		w.mu.Unlock()
		var active []*WatchClient
		for _, c := range clients {
			if c.active() {
				active = append(active, c)
			}
		}
		w.mu.Lock()
		if len(active) == 0 && !w.kicked {
			w.running = false
			w.mu.Unlock()
			return
		}
		if pid != last && pid != "" {
			w.log.Warn("ovs-vswitchd restarted: putting back the splices' and port policies' flows, groups and no-flood flags", "pid", pid, "was", last)
			for _, c := range clients {
				c.dirty, c.restarted = true, true
			}
		}
		var due []*WatchClient
		for _, c := range active {
			if c.dirty && pid != "" {
				due = append(due, c)
			}
		}
		w.mu.Unlock()
		last = pid
		for _, c := range due {
			w.mu.Lock()
			restarted := c.restarted
			c.dirty, c.restarted = false, false // a call asked for during the repair sets them again
			w.mu.Unlock()
			if !c.repair(restarted) {
				w.mu.Lock()
				c.dirty, c.restarted = true, c.restarted || restarted
				w.mu.Unlock()
			}
		}
	}
}
