package ovspolicy

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shaperd/shaperd/internal/nftutil"
	"github.com/shaperd/shaperd/portpolicy"
	"github.com/shaperd/shaperd/splice/ovssplice"
)

// Options configure a Manager.
type Options struct {
	// Run runs the OVS tools; nil means ovssplice.Exec (the real ones,
	// which find the daemons through OVS_RUNDIR).
	Run ovssplice.ExecFunc
	// Logger receives one line per change; nil means slog.Default().
	Logger *slog.Logger
	// Watcher watches ovs-vswitchd: a new pid is a restart, which loses
	// every flow and no-flood flag, and the Manager then applies its last
	// set again; so it does when the splices change (an isolated port's
	// splice needs a flow of the isolation's). nil means
	// ovssplice.DefaultWatcher, the one the OVS splice backend uses.
	Watcher *ovssplice.Watcher
}

// Manager keeps the OVS flows of the port policies equal to the last
// desired set given to Apply. Like portpolicy.Manager it reads what the
// bridges hold on every Apply and changes only the difference, so a new
// Manager (after a daemon restart) adopts the flows instead of duplicating
// them. Safe for concurrent use; calls are serialised.
type Manager struct {
	mu  sync.Mutex
	run ovssplice.ExecFunc
	log *slog.Logger
	// owners maps a policy cookie (reason 0) to its port and kind, as the
	// last Apply installed it; bridges are the bridges those are on, which
	// Stats reads. Guarded by mu.
	owners  map[uint64]owner
	bridges []string
	// desired is the set of the last Apply that succeeded; the watcher
	// puts it back after a restart of ovs-vswitchd while it is not empty.
	desired map[string]portpolicy.Policy
	watch   *ovssplice.WatchClient
	// last and base keep the drop counters monotonic across a restart
	// of ovs-vswitchd, which starts the flows' n_packets at 0 again: per
	// drop cookie, the last count read and what earlier flows counted.
	last, base map[uint64]uint64
}

type owner struct {
	port string
	kind kind
}

// New returns a Manager; it changes nothing.
func New(opts Options) *Manager {
	m := &Manager{run: opts.Run, log: opts.Logger, owners: map[uint64]owner{},
		last: map[uint64]uint64{}, base: map[uint64]uint64{}}
	if m.run == nil {
		m.run = ovssplice.Exec
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	w := opts.Watcher
	if w == nil {
		w = ovssplice.DefaultWatcher(m.log)
	}
	m.watch = w.Register("port policies", m.active, m.reapply)
	return m
}

const timeout = "--timeout=10"

func (m *Manager) vsctl(args ...string) ([]byte, error) {
	return m.run(nil, "ovs-vsctl", append([]string{timeout}, args...)...)
}

// Locate returns port's bridge and where its flows go: its OpenFlow
// number and, with macs, the VM's MACs (external_ids:attached-mac, as
// libvirt and OpenStack set it, and what the bridge learned on the port).
// An error wraps portpolicy.ErrInvalid when the port cannot have flows:
// not an OVS port, no OpenFlow number, no MAC known.
func (m *Manager) Locate(port string, macs bool) (string, Port, error) {
	p := Port{Name: port}
	out, err := m.vsctl("port-to-br", port, "--", "get", "Interface", port, "ofport", "--", "get", "Port", port, "tag",
		"--", "--if-exists", "get", "Interface", port, "external_ids:attached-mac")
	if err != nil {
		return "", p, fmt.Errorf("%w: %s is not a port of an Open vSwitch bridge (%v)", portpolicy.ErrInvalid, port, err)
	}
	f := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(f) < 3 {
		return "", p, fmt.Errorf("ovspolicy: ovs-vsctl about %s: unexpected answer %q", port, out)
	}
	if tag := strings.TrimSpace(f[2]); tag != "[]" {
		p.VLAN, _ = strconv.Atoi(tag)
	}
	f = append(f[:2], f[3:]...)
	br := strings.TrimSpace(f[0])
	if p.OFPort, err = strconv.Atoi(strings.TrimSpace(f[1])); err != nil || p.OFPort <= 0 || p.OFPort >= 0xff00 {
		return "", p, fmt.Errorf("%w: %s has no OpenFlow port number on %s (%q)", portpolicy.ErrInvalid, port, br, strings.TrimSpace(f[1]))
	}
	if !macs {
		return br, p, nil
	}
	if len(f) > 2 {
		if mac, err := net.ParseMAC(strings.Trim(strings.TrimSpace(f[2]), `"`)); err == nil && mac[0]&1 == 0 {
			p.MACs = append(p.MACs, mac)
		}
	}
	if fdb, err := m.run(nil, "ovs-appctl", timeout, "fdb/show", br); err == nil {
		for _, mac := range ovssplice.LearnedMACs(fdb, p.OFPort) {
			if !slices.ContainsFunc(p.MACs, func(x net.HardwareAddr) bool { return bytes.Equal(x, mac) }) {
				p.MACs = append(p.MACs, mac)
			}
		}
	}
	if len(p.MACs) == 0 {
		return "", p, fmt.Errorf("%w: cannot tell the MAC address of the VM on %s (frames to the VM are matched by it): the interface has no external_ids:attached-mac and bridge %s has learned none on it; set attached-mac, or retry once the VM has sent a frame", portpolicy.ErrInvalid, port, br)
	}
	slices.SortFunc(p.MACs, func(a, b net.HardwareAddr) int { return bytes.Compare(a, b) })
	return br, p, nil
}

// Apply makes the flows of the port policies equal to desired (port name
// -> policy; OVS ports only): for every bridge, one bundle deletes the
// flows of policies that went or changed (by their cookie) and adds those
// of new or changed ones, all or nothing. A port that is not (or no longer)
// an OVS port is skipped with a warning. Invalid input returns an error
// wrapping portpolicy.ErrInvalid and changes nothing.
func (m *Manager) Apply(desired map[string]portpolicy.Policy) error {
	if err := portpolicy.Validate(desired); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.applyLocked(desired); err != nil {
		return err
	}
	m.desired = maps.Clone(desired)
	if len(m.desired) > 0 {
		m.watch.Start()
	}
	return nil
}

// active reports whether the Manager has policies (the watcher's
// question).
func (m *Manager) active() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.desired) > 0
}

// reapply applies the last set again: the watcher calls it after a restart
// of ovs-vswitchd (restarted), and when the splices changed. It reports
// success.
func (m *Manager) reapply(restarted bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.desired) == 0 {
		return true
	}
	start := time.Now()
	if err := m.applyLocked(m.desired); err != nil {
		m.log.Debug("ovspolicy: port policies' flows not put back yet; trying again", "err", err)
		return false
	}
	if restarted {
		m.log.Warn("ovspolicy: port policies' flows put back after the restart of ovs-vswitchd", "took", time.Since(start).Round(time.Millisecond))
	}
	return true
}

// applyLocked is Apply, with m.mu held and desired valid.
func (m *Manager) applyLocked(desired map[string]portpolicy.Policy) error {
	want := map[string]map[uint64][]string{} // bridge -> policy cookie -> flows
	owners := map[uint64]owner{}
	isolated := map[string]map[string]Port{} // bridge -> isolated port
	// The splices (an isolated port's needs a flow) and the ports whose
	// isolation keeps them no-flood, as recorded.
	recorded, err := ovssplice.IsolatedPorts(m.run)
	if err != nil {
		return err
	}
	var splices map[string]ovssplice.Spliced
	if slices.ContainsFunc(slices.Collect(maps.Values(desired)), func(p portpolicy.Policy) bool { return p.Isolate != nil }) || len(recorded) > 0 {
		if splices, err = ovssplice.Splices(m.run); err != nil {
			return err
		}
	}
	for _, port := range nftutil.SortedKeys(desired) {
		pol := desired[port]
		br, p, err := m.Locate(port, pol.Isolate != nil)
		if err != nil {
			m.log.Warn("ovspolicy: port skipped", "port", port, "err", err)
			continue
		}
		if want[br] == nil {
			want[br] = map[uint64][]string{}
		}
		if pol.Isolate != nil {
			if sp, ok := splices[port]; ok {
				p.Splice = &sp
				c, line := splicedFlow(p)
				want[br][c] = []string{line}
			}
			if isolated[br] == nil {
				isolated[br] = map[string]Port{}
			}
			isolated[br][port] = p
		}
		for _, k := range []kind{kindGuard, kindIsolate} {
			if (k == kindGuard && pol.Guard == nil) || (k == kindIsolate && pol.Isolate == nil) {
				continue
			}
			c, lines := policyFlows(p, k, pol)
			want[br][c] = lines
			owners[c] = owner{port, k}
		}
	}
	for br, ports := range isolated {
		var ofports []int
		for _, p := range ports {
			ofports = append(ofports, p.OFPort)
		}
		slices.Sort(ofports)
		c, line := fanOut(ofports)
		want[br][c] = []string{line}
	}
	out, err := m.vsctl("list-br")
	if err != nil {
		return fmt.Errorf("ovspolicy: list bridges: %w", err)
	}
	bridges := strings.Fields(string(out))
	// Read every bridge first: a refusal changes nothing anywhere.
	texts := map[string]string{}
	for _, br := range bridges {
		fs, err := m.flows(br, false)
		if err != nil {
			return err
		}
		have := map[uint64]int{}
		for _, f := range fs {
			if f.Cookie&CookieMask == CookieTag {
				have[f.Cookie&policyMask]++
			}
		}
		var del, add []string
		for c, n := range have {
			if len(want[br][c]) != n {
				del = append(del, fmt.Sprintf("flow delete cookie=%#x/%#x", c, policyMask))
			}
		}
		for c, lines := range want[br] {
			if have[c] != len(lines) {
				add = append(add, lines...)
			}
		}
		if len(add) > 0 {
			for _, f := range fs {
				if f.Cookie&CookieMask != CookieTag && markUse.MatchString(strings.ToLower(f.Text)) {
					return fmt.Errorf("%w: bridge %s has a flow that uses reg%d, which the port policies mark frames with: %q", portpolicy.ErrInvalid, br, MarkReg, f.Text)
				}
				if f.Cookie&CookieMask != CookieTag && f.Table == DeliverTable && len(isolated[br]) > 0 {
					return fmt.Errorf("%w: bridge %s has a flow in table %d, where the isolations deliver multicast and broadcast frames: %q", portpolicy.ErrInvalid, br, DeliverTable, f.Text)
				}
			}
		}
		if len(del)+len(add) > 0 {
			slices.Sort(del)
			texts[br] = strings.Join(append(del, add...), "\n") + "\n"
		}
	}
	for br := range want {
		if !slices.Contains(bridges, br) {
			return fmt.Errorf("ovspolicy: bridge %s is not in the bridge list", br)
		}
	}
	// An isolated port is no-flood before its flows deliver to it (for a
	// moment the VM misses broadcasts rather than get them twice).
	if err := m.noFloodLocked(isolated, recorded, splices); err != nil {
		return err
	}
	var errs []error
	for _, br := range nftutil.SortedKeys(texts) {
		if _, err := m.run([]byte(texts[br]), "ovs-ofctl", timeout, "-O", "OpenFlow14", "bundle", br, "-"); err != nil {
			errs = append(errs, fmt.Errorf("ovspolicy: apply on %s (nothing changed there): %w", br, err))
			continue
		}
		m.log.Info("ovspolicy: applied", "bridge", br, "changes", strings.Count(texts[br], "\n"))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := m.floodBackLocked(isolated, recorded, splices); err != nil {
		errs = append(errs, err)
	}
	if len(recorded) > 0 && len(isolated) == 0 {
		// The last isolation went: its connections go too.
		if err := m.flushZone(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		m.owners, m.bridges = owners, nftutil.SortedKeys(want)
		for _, counts := range []map[uint64]uint64{m.last, m.base} {
			maps.DeleteFunc(counts, func(c, _ uint64) bool { _, ok := owners[c&policyMask]; return !ok })
		}
	}
	return errors.Join(errs...)
}

// noFloodLocked makes every isolated port (bridge -> port -> number)
// no-flood, first recording in its Interface row whether it was (recorded:
// the ports that have the record; splices: a spliced port's own flag is
// the one its splice found). See ovssplice's policy.go for how the flag
// is shared with the splices.
func (m *Manager) noFloodLocked(isolated map[string]map[string]Port, recorded map[string]bool, splices map[string]ovssplice.Spliced) error {
	for _, br := range nftutil.SortedKeys(isolated) {
		desc, err := m.run(nil, "ovs-ofctl", timeout, "dump-ports-desc", br)
		if err != nil {
			return fmt.Errorf("ovspolicy: read the ports of %s: %w", br, err)
		}
		for _, port := range nftutil.SortedKeys(isolated[br]) {
			noFlood, ok := ovssplice.PortNoFlood(desc, port)
			if !ok {
				return fmt.Errorf("ovspolicy: ovs-ofctl dump-ports-desc %s shows no port %s", br, port)
			}
			if _, ok := recorded[port]; !ok {
				was := noFlood
				if sp, ok := splices[port]; ok {
					was = sp.PortNoFlood
				}
				if _, err := m.vsctl("set", "Interface", port, fmt.Sprintf("external_ids:%s=%t", ovssplice.IsolateNoFloodID, was)); err != nil {
					return fmt.Errorf("ovspolicy: record the flooding of %s: %w", port, err)
				}
				recorded[port] = was
			}
			if !noFlood {
				if _, err := m.run(nil, "ovs-ofctl", timeout, "mod-port", br, port, "no-flood"); err != nil {
					return fmt.Errorf("ovspolicy: make %s no-flood: %w", port, err)
				}
			}
			// NORMAL must not forget the VM's MACs: a frame to a MAC it
			// has forgotten is flooded, and no longer to this port.
			p := isolated[br][port]
			for _, mac := range p.MACs {
				if _, err := m.run(nil, "ovs-appctl", timeout, "fdb/add", br, port, strconv.Itoa(p.VLAN), mac.String()); err != nil {
					m.log.Warn("ovspolicy: cannot pin the VM's MAC to its port; frames to it are lost once the bridge forgets it", "port", port, "mac", mac, "err", err)
				}
			}
		}
	}
	return nil
}

// floodBackLocked gives the ports that are no longer isolated their
// flooding back (unless they were no-flood before, or a splice keeps them
// so: its release restores it), and removes the record.
func (m *Manager) floodBackLocked(isolated map[string]map[string]Port, recorded map[string]bool, splices map[string]ovssplice.Spliced) error {
	var errs []error
	for _, port := range nftutil.SortedKeys(recorded) {
		if slices.ContainsFunc(slices.Collect(maps.Values(isolated)), func(ps map[string]Port) bool { _, ok := ps[port]; return ok }) {
			continue
		}
		br, p, err := m.Locate(port, true)
		if err == nil {
			// The MACs pinned at isolate time, learned again from
			// the VM's next frame.
			for _, mac := range p.MACs {
				m.run(nil, "ovs-appctl", timeout, "fdb/del", br, strconv.Itoa(p.VLAN), mac.String())
			}
		}
		if _, spliced := splices[port]; !recorded[port] && !spliced && br != "" {
			if _, err := m.run(nil, "ovs-ofctl", timeout, "mod-port", br, port, "flood"); err != nil {
				errs = append(errs, fmt.Errorf("ovspolicy: give %s its flooding back: %w", port, err))
				continue
			}
		}
		if _, err := m.vsctl("--if-exists", "remove", "Interface", port, "external_ids", ovssplice.IsolateNoFloodID); err != nil {
			errs = append(errs, fmt.Errorf("ovspolicy: remove the flooding record of %s: %w", port, err))
		}
	}
	return errors.Join(errs...)
}

// flushZone removes the isolations' conntrack entries (zone Zone).
// Entries carry no port, and the isolation does not know the VM's
// addresses to flush by tuple, so this is done only when no port is
// isolated any more; until then a removed isolation's entries age out
// (docs/guard.md). With one datapath (the userspace one, say) ovs-appctl
// finds it; with several, each is named (`dpctl/dump-dps`).
func (m *Manager) flushZone() error {
	zone := fmt.Sprintf("zone=%d", Zone)
	_, err := m.run(nil, "ovs-appctl", timeout, "dpctl/flush-conntrack", zone)
	if err == nil {
		m.log.Info("ovspolicy: the isolations' connections flushed", "zone", Zone)
		return nil
	}
	out, lerr := m.run(nil, "ovs-appctl", timeout, "dpctl/dump-dps")
	if lerr != nil || len(strings.Fields(string(out))) < 2 {
		return fmt.Errorf("ovspolicy: flush conntrack zone %d: %w", Zone, err)
	}
	var errs []error
	for _, dp := range strings.Fields(string(out)) {
		if _, err := m.run(nil, "ovs-appctl", timeout, "dpctl/flush-conntrack", dp, zone); err != nil {
			errs = append(errs, fmt.Errorf("ovspolicy: flush conntrack zone %d of %s: %w", Zone, dp, err))
			continue
		}
		m.log.Info("ovspolicy: the isolations' connections flushed", "datapath", dp, "zone", Zone)
	}
	return errors.Join(errs...)
}

// markUse finds a match on, or a load into, MarkReg or the wider registers
// holding it (xreg5, xxreg2).
var markUse = regexp.MustCompile(fmt.Sprintf(`\b(reg%d|xreg5|xxreg2)(=|\[|\b)|nxm_nx_(reg%d|xreg5|xxreg2)\b`, MarkReg, MarkReg))

// Stats reads the drop counters (the n_packets of the drop flows): port ->
// reason -> dropped frames, for the ports of the last Apply. A changed
// policy starts its counters at 0; a restart of ovs-vswitchd does not
// (what its flows had counted is kept, see Manager.base).
func (m *Manager) Stats() (map[string]map[string]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]map[string]uint64{}
	if len(m.owners) == 0 {
		return out, nil
	}
	var errs []error
	counts := map[uint64]uint64{} // cookie -> n_packets of its flows
	for _, br := range m.bridges {
		fs, err := m.flows(br, true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range fs {
			if _, ok := m.owners[f.Cookie&policyMask]; ok && f.Cookie&CookieMask == CookieTag {
				counts[f.Cookie] += f.Packets
			}
		}
	}
	// A cookie read before and not now (a restarted ovs-vswitchd that
	// has not got its flows back yet, a bridge not read) keeps its last
	// count; when its flows come back counting from 0, what they had
	// counted goes into its base.
	for c := range m.last {
		if _, ok := counts[c]; !ok {
			counts[c] = m.last[c]
		}
	}
	for c, n := range counts {
		if n < m.last[c] {
			m.base[c] += m.last[c]
		}
		m.last[c] = n
		o := m.owners[c&policyMask]
		if out[o.port] == nil {
			out[o.port] = map[string]uint64{}
		}
		if r := o.kind.reasonOf(c &^ policyMask); r != "" {
			out[o.port][r] += m.base[c] + n
		}
	}
	return out, errors.Join(errs...)
}

// flows dumps bridge's flows (ours only, with stats, if ours).
func (m *Manager) flows(br string, ours bool) ([]ovssplice.Flow, error) {
	args := []string{timeout, "dump-flows", br}
	if ours {
		args = append(args, fmt.Sprintf("cookie=%#x/%#x", CookieTag, CookieMask))
	} else {
		args = append(args, "--no-stats")
	}
	out, err := m.run(nil, "ovs-ofctl", args...)
	if err != nil {
		return nil, fmt.Errorf("ovspolicy: read the flows of %s: %w", br, err)
	}
	return ovssplice.ParseFlows(out), nil
}

// Check reports, changing nothing, whether pol can be installed on port:
// an error wrapping portpolicy.ErrInvalid says why not (see Locate).
func (m *Manager) Check(port string, pol portpolicy.Policy) error {
	if err := pol.Validate(); err != nil {
		return err
	}
	_, _, err := m.Locate(port, pol.Isolate != nil)
	return err
}
