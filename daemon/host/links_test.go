package host

import (
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestLinkNamesAsNetlink: the names read from sysfs are the links netlink
// lists in the same namespace.
func TestLinkNamesAsNetlink(t *testing.T) {
	got, err := linkNames()
	if err != nil {
		t.Fatal(err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range links {
		want = append(want, l.Attrs().Name)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("linkNames = %v, netlink lists %v", got, want)
	}
}
