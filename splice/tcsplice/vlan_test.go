package tcsplice

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
)

// fakeVLANs is a bridge port's VLAN table behind bridgeVLANs. It records
// every call and keeps the kernel's rules (net/bridge/br_netlink.c,
// br_vlan.c): VIDs 1-4094; a range needs first < last and takes no PVID
// flag; adding an existing VID sets its flags anew (a PVID moves to it, and
// a re-add without PVID takes the PVID from it); deleting a missing VID
// fails. self and master are never set (the port's bridge, by default).
type fakeVLANs struct {
	isPort  bool
	dumpErr error
	failOn  string // a call (as recorded) that fails with EINVAL

	vids  map[uint16]vlan
	calls []string
}

func newFakeVLANs(have ...vlan) *fakeVLANs {
	f := &fakeVLANs{isPort: true, vids: map[uint16]vlan{}}
	for _, v := range have {
		f.vids[v.VID] = v
	}
	return f
}

// entries returns the table sorted by VID, as dumpBrPort does.
func (f *fakeVLANs) entries() []vlan {
	var out []vlan
	for _, vid := range slices.Sorted(maps.Keys(f.vids)) {
		out = append(out, f.vids[vid])
	}
	return out
}

func (f *fakeVLANs) dumpBrPort(ifindex int) (brPort, bool, error) {
	f.calls = append(f.calls, fmt.Sprintf("dump %d", ifindex))
	if f.dumpErr != nil || !f.isPort {
		return brPort{}, false, f.dumpErr
	}
	return brPort{master: 1, vlans: f.entries()}, true, nil
}

func (f *fakeVLANs) call(op string, link netlink.Link, first, last uint16, pvid, untagged, self, master bool) error {
	c := fmt.Sprintf("%s %s %d", op, link.Attrs().Name, first)
	if last != 0 {
		c += fmt.Sprintf("-%d", last)
	}
	if pvid {
		c += " pvid"
	}
	if untagged {
		c += " untagged"
	}
	if self || master {
		c += fmt.Sprintf(" self=%v master=%v", self, master)
	}
	f.calls = append(f.calls, c)
	if c == f.failOn || self || master {
		return syscall.EINVAL
	}
	if last == 0 {
		last = first
	} else if first >= last || pvid {
		return syscall.EINVAL
	}
	if first < 1 || last > 4094 {
		return syscall.EINVAL
	}
	for vid := first; vid <= last; vid++ {
		if op == "del" {
			if _, ok := f.vids[vid]; !ok {
				return syscall.ENOENT
			}
			delete(f.vids, vid)
			continue
		}
		if pvid {
			for k, v := range f.vids {
				v.PVID = false
				f.vids[k] = v
			}
		}
		f.vids[vid] = vlan{VID: vid, PVID: pvid, Untagged: untagged}
	}
	return nil
}

func (f *fakeVLANs) BridgeVlanAdd(link netlink.Link, vid uint16, pvid, untagged, self, master bool) error {
	return f.call("add", link, vid, 0, pvid, untagged, self, master)
}

func (f *fakeVLANs) BridgeVlanAddRange(link netlink.Link, vid, vidEnd uint16, pvid, untagged, self, master bool) error {
	return f.call("add", link, vid, vidEnd, pvid, untagged, self, master)
}

func (f *fakeVLANs) BridgeVlanDel(link netlink.Link, vid uint16, pvid, untagged, self, master bool) error {
	return f.call("del", link, vid, 0, pvid, untagged, self, master)
}

func (f *fakeVLANs) BridgeVlanDelRange(link netlink.Link, vid, vidEnd uint16, pvid, untagged, self, master bool) error {
	return f.call("del", link, vid, vidEnd, pvid, untagged, self, master)
}

// syncVLANs leaves the port with exactly the entries wanted (VIDs, PVID,
// untagged), deleting before adding, in the fewest requests the kernel
// accepts: a range per run of consecutive VIDs with the same flags, a
// single VID alone, a PVID never in a range.
func TestSyncVLANs(t *testing.T) {
	const defaultVLAN = 1 // what a port gets on joining a bridge: VID 1, PVID, untagged
	tests := []struct {
		name  string
		have  []vlan
		want  []vlan
		calls []string
	}{
		{
			name: "copy a port's entries to the net tap that just joined",
			have: []vlan{{VID: defaultVLAN, PVID: true, Untagged: true}},
			want: []vlan{{VID: 100, PVID: true, Untagged: true}, {VID: 200}, {VID: 201}, {VID: 202}, {VID: 300, Untagged: true}},
			calls: []string{"dump 7", "del shq1 1",
				"add shq1 100 pvid untagged", "add shq1 200-202", "add shq1 300 untagged"},
		},
		{
			name: "restore a port that rejoined: VID 1 kept but re-flagged, the PVID moved",
			have: []vlan{{VID: defaultVLAN, PVID: true, Untagged: true}},
			want: []vlan{{VID: 1}, {VID: 10, PVID: true, Untagged: true}, {VID: 11, Untagged: true}, {VID: 12, Untagged: true}},
			calls: []string{"dump 7",
				"add shq1 1", "add shq1 10 pvid untagged", "add shq1 11-12 untagged"},
		},
		{
			name: "the PVID moves to an entry that exists, untagged flags swap",
			have: []vlan{{VID: 10, PVID: true, Untagged: true}, {VID: 20}},
			want: []vlan{{VID: 10}, {VID: 20, PVID: true, Untagged: true}},
			calls: []string{"dump 7",
				"add shq1 10", "add shq1 20 pvid untagged"},
		},
		{
			name: "delete what is not wanted, in ranges, keep the rest untouched",
			have: []vlan{{VID: 1, PVID: true, Untagged: true}, {VID: 5}, {VID: 6, Untagged: true}, {VID: 7}, {VID: 9}, {VID: 4094}},
			want: []vlan{{VID: 9}},
			calls: []string{"dump 7",
				"del shq1 1", "del shq1 5-7", "del shq1 4094"},
		},
		{
			name:  "already equal: nothing but the dump",
			have:  []vlan{{VID: 100, PVID: true, Untagged: true}, {VID: 200}},
			want:  []vlan{{VID: 100, PVID: true, Untagged: true}, {VID: 200}},
			calls: []string{"dump 7"},
		},
		{
			name:  "a bridge without VLAN filtering: no entries either side",
			calls: []string{"dump 7"},
		},
		{
			name:  "a port with no VLAN at all after the copy",
			have:  []vlan{{VID: 1, PVID: true, Untagged: true}},
			calls: []string{"dump 7", "del shq1 1"},
		},
	}
	link := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "shq1", Index: 7}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeVLANs(tt.have...)
			if err := syncVLANs(f, link, tt.want); err != nil {
				t.Fatalf("%v (calls %q)", err, f.calls)
			}
			if !reflect.DeepEqual(f.calls, tt.calls) {
				t.Errorf("calls\n%q\nwant\n%q", f.calls, tt.calls)
			}
			if got := f.entries(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("entries %v, want %v", got, tt.want)
			}
			// A second sync finds nothing to do.
			f.calls = nil
			if err := syncVLANs(f, link, tt.want); err != nil || len(f.calls) != 1 {
				t.Errorf("second sync: %v, calls %q", err, f.calls)
			}
		})
	}
}

// syncVLANs stops at the first refused request and names it; a link that is
// not a bridge port, or a failed dump, changes nothing.
func TestSyncVLANsErrors(t *testing.T) {
	link := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "shq1", Index: 7}}
	want := []vlan{{VID: 100, PVID: true, Untagged: true}, {VID: 200}, {VID: 201}, {VID: 300}}
	have := []vlan{{VID: 1, PVID: true, Untagged: true}}

	f := newFakeVLANs(have...)
	f.failOn = "add shq1 200-201"
	err := syncVLANs(f, link, want)
	if !errors.Is(err, syscall.EINVAL) || err.Error() != "add vlan 200-201: invalid argument" {
		t.Fatalf("error %v", err)
	}
	if calls := []string{"dump 7", "del shq1 1", "add shq1 100 pvid untagged", "add shq1 200-201"}; !reflect.DeepEqual(f.calls, calls) {
		t.Errorf("calls %q, want %q", f.calls, calls)
	}

	f = newFakeVLANs(have...)
	f.isPort = false
	if err := syncVLANs(f, link, want); err == nil || err.Error() != "shq1 is not a bridge port" || len(f.calls) != 1 {
		t.Errorf("not a port: %v, calls %q", err, f.calls)
	}
	f = newFakeVLANs(have...)
	f.dumpErr = syscall.ENOBUFS
	if err := syncVLANs(f, link, want); !errors.Is(err, syscall.ENOBUFS) || len(f.calls) != 1 {
		t.Errorf("dump failed: %v, calls %q", err, f.calls)
	}
	if got := f.entries(); !reflect.DeepEqual(got, have) {
		t.Errorf("entries changed to %v", got)
	}
}
