package ovssplice

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shaperd/shaperd/splice"
)

const testCookie = 0x5351_0000_0000_abcd

func newTestBackend(t *testing.T) (*Backend, *fakeOVS, *fakeKernel) {
	t.Helper()
	o, k := newFakeOVS(), newFakeKernel()
	b := newBackend(nil, o.run, k, func() bool { return true })
	b.cookie = func() uint64 { return testCookie }
	return b, o, k
}

func state(o *fakeOVS, k *fakeKernel) string { return o.state() + k.state() }

var opts = splice.Options{BypassPorts: []uint16{22, 3389}, FailOpen: true}

func TestSpliceAndRelease(t *testing.T) {
	b, o, k := newTestBackend(t)
	before := state(o, k)
	sp, err := b.Splice("vm-1", opts)
	if err != nil {
		t.Fatal(err)
	}
	vm, nt := splice.TapNames("vm-1")
	if sp.Backend() != "ovs" || sp.VMTap() != vm || sp.NetTap() != nt || sp.PriorityTap() != splice.PriorityTapName("vm-1") || !sp.FailOpen() {
		t.Errorf("splice: %s %s %s %s %v", sp.Backend(), sp.VMTap(), sp.NetTap(), sp.PriorityTap(), sp.FailOpen())
	}
	// Only the net tap joins the bridge, with the splice recorded on it.
	if _, ok := o.ports[vm]; ok {
		t.Errorf("the vm tap joined the bridge")
	}
	p := o.ports[nt]
	if p == nil || !p.noFlood {
		t.Fatalf("net tap: %+v, want a no-flood port", p)
	}
	want := map[string]string{idPort: "vm-1", idRole: "net", idCookie: "0x535100000000abcd", idSlot: "0", idFail: "open",
		idOFPort: "1", idMACs: "02:c6:12:00:00:11", idPortNoFlood: "false", idGroups: "1397817344,1397817345", idVMTap: vm}
	for key, v := range want {
		if p.ids[key] != v {
			t.Errorf("external_ids:%s = %q, want %q", key, p.ids[key], v)
		}
	}
	if !o.ports["vm-1"].noFlood {
		t.Error("the VM's port floods while spliced")
	}
	// The kernel: the VM tap sends to the port, the port's frames go to the taps.
	if k.links[vm].redirect != k.links["vm-1"].index || !k.links["vm-1"].xdp {
		t.Errorf("kernel: vm tap redirect %d (want %d), xdp on the port %v", k.links[vm].redirect, k.links["vm-1"].index, k.links["vm-1"].xdp)
	}
	var ours int
	for _, f := range o.flows {
		if f.cookie == testCookie {
			ours++
		}
	}
	if ours != 4 { // from the net tap, from the VM, to its one MAC, multicast
		t.Errorf("%d flows with the splice's cookie, want 4:\n%s", ours, o.state())
	}

	if err := sp.(splice.IntentRecorder).SetIntent("pps=5000 fail=open"); err != nil {
		t.Fatal(err)
	}
	if got := o.ports[nt].ids[idIntent]; got != "pps=5000 fail=open" {
		t.Errorf("intent %q", got)
	}
	if err := sp.Release(); err != nil {
		t.Fatal(err)
	}
	if after := state(o, k); after != before {
		t.Errorf("release left changes:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := sp.Release(); err != nil {
		t.Errorf("second release: %v", err)
	}
	checkDeletes(t, o)
}

// checkDeletes fails the test if any command could delete flows that are not
// shaperd's: del-flows or a bundle delete not by an exact shaperd cookie.
func checkDeletes(t *testing.T, o *fakeOVS) {
	t.Helper()
	exact := regexp.MustCompile(`^flow delete cookie=0x5351[0-9a-f]{12}/-1$`)
	delFlows := regexp.MustCompile(`^ovs-ofctl del-flows br0 cookie=0x5351[0-9a-f]{12}/-1$`)
	for _, c := range o.calls {
		if (strings.Contains(c, "del-flows") && !delFlows.MatchString(c)) || strings.Contains(c, "del-groups") {
			t.Errorf("ran %q", c)
		}
	}
	for _, bnd := range o.bundles {
		for _, line := range strings.Split(strings.TrimSpace(bnd), "\n") {
			if strings.HasPrefix(line, "flow delete") && !exact.MatchString(line) {
				t.Errorf("bundle deletes flows by %q", line)
			}
			if strings.HasPrefix(line, "flow modify") || strings.HasPrefix(line, "group modify") {
				t.Errorf("bundle modifies: %q", line)
			}
		}
	}
}

// TestFailureAtEveryStep fails the splice after each step in turn (and in
// each step's command) and checks that the rollback leaves the bridge and
// the kernel exactly as they were, other parties' flows and group included.
func TestFailureAtEveryStep(t *testing.T) {
	steps := []string{stepTaps, stepVMRedirect, stepAddPort, stepNoFlood, stepBundle, stepXDP, stepVerify}
	for _, step := range steps {
		t.Run("after "+step, func(t *testing.T) {
			b, o, k := newTestBackend(t)
			before := state(o, k)
			b.hook = func(s string) error {
				if s == step {
					return errors.New("injected")
				}
				return nil
			}
			if _, err := b.Splice("vm-1", opts); err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("splice: %v, want the injected failure", err)
			}
			if after := state(o, k); after != before {
				t.Errorf("rollback left changes:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			checkDeletes(t, o)
		})
	}
	for _, cmd := range []string{"add-port", "mod-port br0 vm-1 no-flood", "bundle", "dump-flows br0 cookie="} {
		t.Run("in "+cmd, func(t *testing.T) {
			b, o, k := newTestBackend(t)
			before := state(o, k)
			done := false
			o.fail = func(line string) error {
				if !done && strings.Contains(line, cmd) {
					done = true
					return errors.New("injected")
				}
				return nil
			}
			if _, err := b.Splice("vm-1", opts); err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("splice: %v, want the injected failure", err)
			}
			if after := state(o, k); after != before {
				t.Errorf("rollback left changes:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			checkDeletes(t, o)
		})
	}
	for _, op := range []string{"createTap", "redirectTap", "attachXDP"} {
		t.Run("in "+op, func(t *testing.T) {
			b, o, k := newTestBackend(t)
			before := state(o, k)
			k.fail = func(o, _ string) error {
				if o == op {
					return errors.New("injected")
				}
				return nil
			}
			if _, err := b.Splice("vm-1", opts); err == nil {
				t.Fatal("splice succeeded")
			}
			if after := state(o, k); after != before {
				t.Errorf("rollback left changes:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestBundleRejected: OVS refuses the bundle (a group id taken under the
// splice's feet); none of it applies, and the rollback deletes no group it
// did not create.
func TestBundleRejected(t *testing.T) {
	b, o, k := newTestBackend(t)
	o.fail = func(line string) error {
		if strings.Contains(line, "ovs-ofctl bundle") && len(o.bundles) == 0 {
			o.groups[groupBase|1] = "group_id=1397817345,type=all,bucket=actions=output:2" // someone else's
		}
		return nil
	}
	before := state(o, k)
	if _, err := b.Splice("vm-1", opts); err == nil || !strings.Contains(err.Error(), "GROUP_EXISTS") {
		t.Fatalf("splice: %v, want OVS's refusal", err)
	}
	after := state(o, k)
	if !strings.Contains(after, "group_id=1397817345,type=all") {
		t.Errorf("the other party's group was deleted:\n%s", after)
	}
	delete(o.groups, groupBase|1)
	if after := state(o, k); after != before {
		t.Errorf("rollback left changes:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestSecondSpliceTakesTheNextSlot(t *testing.T) {
	b, o, k := newTestBackend(t)
	k.add("vm-2", "veth", "")
	o.addPort("vm-2").ids["attached-mac"] = "02:c6:12:00:00:12"
	before := state(o, k)
	n := uint64(0)
	b.cookie = func() uint64 { n++; return testCookie + n }
	s1, err := b.Splice("vm-1", opts)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := b.Splice("vm-2", splice.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a, c := s1.(*spliced), s2.(*spliced); a.plan.slot != 0 || c.plan.slot != 1 || a.Cookie() == c.Cookie() {
		t.Errorf("slots %d, %d and cookies %#x, %#x: want 0, 1 and distinct", a.plan.slot, c.plan.slot, a.Cookie(), c.Cookie())
	}
	if _, err := b.Splice("vm-1", opts); !errors.Is(err, splice.ErrSpliced) {
		t.Errorf("splicing vm-1 twice: %v, want ErrSpliced", err)
	}
	if err := s1.Release(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(o.state(), fmt.Sprintf("cookie=%#x", s2.(*spliced).Cookie())) {
		t.Error("releasing one splice removed the other's flows")
	}
	if err := s2.Release(); err != nil {
		t.Fatal(err)
	}
	if after := state(o, k); after != before {
		t.Errorf("release left changes:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestPortVanishes(t *testing.T) {
	b, o, k := newTestBackend(t)
	sp, err := b.Splice("vm-1", opts)
	if err != nil {
		t.Fatal(err)
	}
	delete(k.links, "vm-1") // the VM is destroyed; OVS keeps its row with ofport -1
	o.ports["vm-1"].ofport = -1
	if err := sp.Release(); err != nil {
		t.Fatalf("release of a vanished port: %v", err)
	}
	for name := range k.links {
		if strings.HasPrefix(name, splice.TapPrefix) {
			t.Errorf("tap %s left", name)
		}
	}
	for _, f := range o.flows {
		if isOurs(f.cookie) {
			t.Errorf("flow left: %s", f.line())
		}
	}
}

func TestHandles(t *testing.T) {
	b, _, k := newTestBackend(t)
	k.add("br-port", "veth", "") // a Linux bridge's port: OVS does not know it
	tests := []struct {
		port    string
		running bool
		want    bool
		err     error
	}{
		{"vm-1", true, true, nil},
		{"br-port", true, false, nil},
		{"nope", true, false, splice.ErrNoPort},
		{"nope", false, false, splice.ErrNoPort},
		{"vm-1", false, false, nil}, // OVS not installed or not running
	}
	for _, tt := range tests {
		b.running = func() bool { return tt.running }
		got, err := b.Handles(tt.port)
		if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
			t.Errorf("Handles(%s) with OVS running=%v = %v, %v; want %v, %v", tt.port, tt.running, got, err, tt.want, tt.err)
		}
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name  string
		setup func(o *fakeOVS, k *fakeKernel)
		want  string
	}{
		{"vlan tag", func(o *fakeOVS, _ *fakeKernel) { o.ports["vm-1"].tag = "100" }, "VLAN"},
		{"foreign flow uses the mark register", func(o *fakeOVS, _ *fakeKernel) {
			o.flows = append(o.flows, fakeFlow{priority: 5, rest: "reg12=0x1,actions=drop"})
		}, "reg12"},
		{"no MAC known", func(o *fakeOVS, _ *fakeKernel) {
			delete(o.ports["vm-1"].ids, "attached-mac")
			delete(o.fdb, "02:c6:12:00:00:11")
		}, "MAC address"},
		{"not on OVS", func(_ *fakeOVS, k *fakeKernel) { k.add("lone", "veth", "") }, "Open vSwitch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, o, k := newTestBackend(t)
			tt.setup(o, k)
			before := state(o, k)
			port := "vm-1"
			if tt.name == "not on OVS" {
				port = "lone"
			}
			_, err := b.Splice(port, opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("splice: %v, want an error about %s", err, tt.want)
			}
			if after := state(o, k); after != before {
				t.Errorf("a refused splice changed things:\n%s\n%s", before, after)
			}
		})
	}
}

func TestMACsFromTheBridge(t *testing.T) {
	b, o, _ := newTestBackend(t)
	delete(o.ports["vm-1"].ids, "attached-mac")
	o.fdb["02:c6:12:00:00:99"] = 1
	sp, err := b.Splice("vm-1", opts)
	if err != nil {
		t.Fatal(err)
	}
	got := macList(sp.(*spliced).plan.macs)
	if got != "02:c6:12:00:00:11,02:c6:12:00:00:99" {
		t.Errorf("MACs %s, want both learned on the port", got)
	}
}

func TestSpliceBundleText(t *testing.T) {
	p := plan{cookie: testCookie, slot: 3, port: 1, netTap: 7, failOpen: true,
		macs: []net.HardwareAddr{{2, 0xc6, 0x12, 0, 0, 0x11}}}
	want := `group add group_id=1397817356,type=ff,bucket=watch_port:7,actions=drop,bucket=watch_port:1,actions=load:1->NXM_NX_REG12[3],resubmit(,0)
group add group_id=1397817357,type=ff,bucket=watch_port:7,actions=output:7,bucket=watch_port:1,actions=output:1
flow add table=0,cookie=0x535100000000abcd,priority=65000,in_port=7,actions=load:1->NXM_OF_IN_PORT[],load:1->NXM_NX_REG12[3],resubmit(,0)
flow add table=0,cookie=0x535100000000abcd,priority=64980,in_port=1,reg12=0/0x8,actions=group:1397817356
flow add table=0,cookie=0x535100000000abcd,priority=64970,reg12=0/0x8,dl_dst=02:c6:12:00:00:11,actions=group:1397817357
flow add table=0,cookie=0x535100000000abcd,priority=64960,reg12=0/0x8,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=group:1397817357,load:1->NXM_NX_REG12[3],resubmit(,0)
`
	if got := p.spliceBundle(); got != want {
		t.Errorf("fail open bundle:\n%s\nwant:\n%s", got, want)
	}
	if n := strings.Count(want, "flow add"); n != p.numFlows() {
		t.Errorf("numFlows %d, bundle has %d", p.numFlows(), n)
	}
	p.failOpen = false
	closed := p.spliceBundle()
	for _, g := range []string{
		"group add group_id=1397817356,type=ff,bucket=watch_port:7,actions=drop\n",
		"group add group_id=1397817357,type=ff,bucket=watch_port:7,actions=output:7\n",
	} {
		if !strings.Contains(closed, g) {
			t.Errorf("fail closed bundle lacks %q:\n%s", g, closed)
		}
	}
}

func TestReleaseBundle(t *testing.T) {
	got, err := releaseBundle(testCookie, []uint32{groupBase, groupBase | 1})
	if err != nil {
		t.Fatal(err)
	}
	want := "flow delete cookie=0x535100000000abcd/-1\ngroup delete group_id=1397817344\ngroup delete group_id=1397817345\n"
	if got != want {
		t.Errorf("release bundle:\n%s\nwant:\n%s", got, want)
	}
	for _, bad := range []struct {
		cookie uint64
		groups []uint32
	}{
		{0, nil},         // cookie=0/-1 would delete every cookie-less flow
		{CookieTag, nil}, // no generation
		{0x1234, nil},    // someone else's
		{testCookie, []uint32{7}},
	} {
		if _, err := releaseBundle(bad.cookie, bad.groups); err == nil {
			t.Errorf("releaseBundle(%#x, %v) accepted", bad.cookie, bad.groups)
		}
	}
}

func TestParsers(t *testing.T) {
	ports := []byte(`OFPST_PORT_DESC reply (xid=0x2):
 1(vm-1-00c9): addr:4a:0a:68:30:1f:d5
     config:     NO_FLOOD
     state:      0
 2(ext-00c9): addr:3a:ff:10:21:c6:48
     config:     0
     state:      0
 LOCAL(br0): addr:fe:54:6a:d6:8b:46
     config:     PORT_DOWN
`)
	for port, want := range map[string][]string{"vm-1-00c9": {"NO_FLOOD"}, "ext-00c9": nil, "br0": {"PORT_DOWN"}} {
		got, ok := parsePortConfig(ports, port)
		if !ok || !slices.Equal(got, want) {
			t.Errorf("parsePortConfig(%s) = %v, %v; want %v", port, got, ok, want)
		}
	}
	if _, ok := parsePortConfig(ports, "vm-1"); ok {
		t.Error("parsePortConfig matched a prefix of a port name")
	}
	fdb := []byte(" port  VLAN  MAC                Age\n    4     0  02:c6:12:00:01:01   37\n    1     0  02:c6:12:00:00:11   10\n   11     0  02:c6:12:00:00:13   10\n    1     0  33:33:00:00:00:01   10\n")
	if got := macList(learnedMACs(fdb, 1)); got != "02:c6:12:00:00:11" {
		t.Errorf("learnedMACs = %s", got)
	}
	flows := ParseFlows([]byte(`OFPST_FLOW reply (OF1.4) (xid=0x2):
 cookie=0x5351339d821ad332, priority=65000,in_port=6 actions=load:0x1->NXM_OF_IN_PORT[],load:0x1->NXM_NX_REG12[0],resubmit(,0)
 cookie=0x5351339d821ad333, priority=64980,reg12=0/0x4,in_port=1 actions=group:1397817352
 cookie=0x1234, table=1, priority=10 actions=drop
 actions=NORMAL
`))
	if len(flows) != 4 || flows[0].Cookie != 0x5351339d821ad332 || flows[2].Table != 1 || flows[2].Priority != 10 || flows[3].Priority != 32768 || flows[3].Cookie != 0 {
		t.Errorf("ParseFlows = %+v", flows)
	}
	if used := slotsInUse(flows); !used[2] || len(used) != 1 {
		t.Errorf("slotsInUse = %v, want {2}", used)
	}
	// Slots past 31 are bits of reg13-reg15.
	for _, tc := range []struct {
		slot          uint
		mark, setMark string
	}{
		{0, "reg12=0/0x1", "load:1->NXM_NX_REG12[0]"},
		{31, "reg12=0/0x80000000", "load:1->NXM_NX_REG12[31]"},
		{40, "reg13=0/0x100", "load:1->NXM_NX_REG13[8]"},
		{maxSlots - 1, "reg15=0/0x80000000", "load:1->NXM_NX_REG15[31]"},
	} {
		p := plan{slot: tc.slot, cookie: 0x5351339d821ad332}
		if p.mark() != tc.mark || p.setMark() != tc.setMark {
			t.Errorf("slot %d: mark %q, setMark %q; want %q, %q", tc.slot, p.mark(), p.setMark(), tc.mark, tc.setMark)
		}
		if used := slotsInUse([]Flow{{Cookie: p.cookie, Text: "priority=64980," + p.mark() + ",in_port=1 actions=drop"}}); !used[tc.slot] || len(used) != 1 {
			t.Errorf("slot %d: slotsInUse of its flow = %v", tc.slot, used)
		}
	}
	for text, want := range map[string]bool{
		"priority=5,reg12=0x1 actions=drop":                    true,
		"priority=5 actions=load:0x1->NXM_NX_REG12[4]":         true,
		"priority=5 actions=set_field:0x1->reg12":              true,
		"priority=5,xreg6=0x1 actions=drop":                    true,
		"priority=5,reg1=0x1 actions=load:1->reg2[3]":          false,
		"priority=5,reg13=0x1 actions=NORMAL":                  true,
		"priority=5 actions=load:0x1->NXM_NX_REG15[0]":         true,
		"priority=5,xxreg3=0x1 actions=drop":                   true,
		"priority=5,reg11=0x1,reg16=0x2 actions=NORMAL":        false,
		"priority=5 actions=move:NXM_NX_REG1[]->NXM_NX_REG2[]": false,
	} {
		if got := usesMarkReg(Flow{Text: text}); got != want {
			t.Errorf("usesMarkReg(%q) = %v, want %v", text, got, want)
		}
	}
	gs := parseGroups([]byte("OFPST_GROUP_DESC reply (OF1.4) (xid=0x2):\n group_id=1397817344,type=ff,bucket=watch_port:7,actions=drop\n group_id=7,type=all,bucket=actions=output:2\n"))
	if len(gs) != 2 || !strings.Contains(gs[1397817344], "watch_port:7,") {
		t.Errorf("parseGroups = %v", gs)
	}
}

// TestConcurrentSplices: splices of different ports overlap (only the
// choice of a slot is serialised): 40 at once all succeed, each with a
// slot and groups of its own, past the 31 one register held; releasing
// them all restores the bridge.
func TestConcurrentSplices(t *testing.T) {
	b, o, k := newTestBackend(t)
	var next atomic.Uint64
	b.cookie = func() uint64 { return testCookie + next.Add(1) }
	var ports []string
	for i := range 40 {
		p := fmt.Sprintf("vmc-%d", i)
		o.mu.Lock()
		o.addPort(p).ids["attached-mac"] = fmt.Sprintf("02:c6:12:00:02:%02x", i)
		o.mu.Unlock()
		k.mu.Lock()
		k.add(p, "veth", "")
		k.mu.Unlock()
		ports = append(ports, p)
	}
	before := state(o, k)
	sps := make([]splice.Splice, len(ports))
	var wg sync.WaitGroup
	for i, p := range ports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sp, err := b.Splice(p, opts)
			if err != nil {
				t.Errorf("Splice %s: %v", p, err)
				return
			}
			sps[i] = sp
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slots := map[uint]string{}
	for i, sp := range sps {
		s := sp.(*spliced)
		if other, dup := slots[s.plan.slot]; dup {
			t.Errorf("%s and %s share slot %d", ports[i], other, s.plan.slot)
		}
		slots[s.plan.slot] = ports[i]
	}
	if len(b.pending) != 0 || len(b.splicing) != 0 || len(b.live) != len(ports) {
		t.Errorf("after the splices: %d pending, %d splicing, %d live", len(b.pending), len(b.splicing), len(b.live))
	}
	for _, sp := range sps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sp.Release(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if after := state(o, k); after != before {
		t.Errorf("after releasing every splice the bridge differs:\n%s\n---\n%s", before, after)
	}
}

// TestTapNameTakenInOVS: a port of the database named as one of the
// splice's taps (with no link of that name) refuses the splice before any
// change.
func TestTapNameTakenInOVS(t *testing.T) {
	for _, name := range []string{splice.PriorityTapName("vm-1"), "net"} {
		b, o, k := newTestBackend(t)
		if name == "net" {
			_, name = splice.TapNames("vm-1")
		}
		o.mu.Lock()
		o.addPort(name)
		o.mu.Unlock()
		before := state(o, k)
		if _, err := b.Splice("vm-1", opts); !errors.Is(err, splice.ErrSpliced) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s in OVS: Splice: %v, want ErrSpliced naming it", name, err)
		}
		if after := state(o, k); after != before {
			t.Errorf("%s in OVS: the refused splice changed:\n%s\n---\n%s", name, before, after)
		}
	}
}

// TestChooseWarnsOfHighFlows: a flow of someone else's at the splice's
// priorities or above is warned about; the port policies' flows
// (PolicyCookieTag), above them on purpose, are not.
func TestChooseWarnsOfHighFlows(t *testing.T) {
	b := &Backend{cookie: randomCookie}
	for _, c := range []struct {
		cookie uint64
		warn   bool
	}{{0x1234, true}, {PolicyCookieTag | 0xabcdef00, false}} {
		s := &spliced{b: b, bridge: "br0"}
		fs := []Flow{{Cookie: c.cookie, Priority: 65500, Text: "priority=65500,in_port=3 actions=drop"}}
		if err := s.choose(fs, map[uint32]string{}, map[uint]bool{}); err != nil {
			t.Fatal(err)
		}
		if got := len(s.warnings) > 0; got != c.warn {
			t.Errorf("cookie %#x: warnings %q, want a warning: %v", c.cookie, s.warnings, c.warn)
		}
	}
}

// TestNoFloodSharedWithIsolation: the port's no-flood flag is shared with
// an isolation (see policy.go), played here by hand as package
// portpolicy/ovspolicy does it: whichever goes last restores the flag, to
// what it was before either.
func TestNoFloodSharedWithIsolation(t *testing.T) {
	isolate := func(o *fakeOVS, was string) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.ports["vm-1"].ids[IsolateNoFloodID] = was
		o.ports["vm-1"].noFlood = true
	}
	unisolate := func(o *fakeOVS, restore bool) {
		o.mu.Lock()
		defer o.mu.Unlock()
		delete(o.ports["vm-1"].ids, IsolateNoFloodID)
		if restore {
			o.ports["vm-1"].noFlood = false
		}
	}
	noFlood := func(o *fakeOVS) bool { o.mu.Lock(); defer o.mu.Unlock(); return o.ports["vm-1"].noFlood }
	_, nt := splice.TapNames("vm-1")
	for _, tc := range []struct {
		name         string
		isolateFirst bool
		releaseFirst bool
	}{
		{"isolate, splice, release, unisolate", true, true},
		{"isolate, splice, unisolate, release", true, false},
		{"splice, isolate, release, unisolate", false, true},
		{"splice, isolate, unisolate, release", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, o, _ := newTestBackend(t)
			if tc.isolateFirst {
				isolate(o, "false")
			}
			sp, err := b.Splice("vm-1", opts)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.isolateFirst {
				isolate(o, o.ports[nt].ids[idPortNoFlood]) // as the isolation reads the splice's record
			}
			if got := o.ports[nt].ids[idPortNoFlood]; got != "false" {
				t.Errorf("the splice recorded the port's flag as %q, want %q (flooding before both)", got, "false")
			}
			if tc.releaseFirst {
				if err := sp.Release(); err != nil {
					t.Fatal(err)
				}
				if !noFlood(o) {
					t.Errorf("released while isolated: the port floods")
				}
				unisolate(o, true) // no splice left: the isolation restores
			} else {
				unisolate(o, false) // a splice is live: the isolation leaves the flag
				if !noFlood(o) {
					t.Errorf("isolation removed while spliced: the port floods")
				}
				if err := sp.Release(); err != nil {
					t.Fatal(err)
				}
			}
			if noFlood(o) {
				t.Errorf("after both ended the port is no-flood")
			}
		})
	}
}
