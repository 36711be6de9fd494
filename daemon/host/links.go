package host

import (
	"fmt"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/quota"
)

// sysClassNet lists the links of the daemon's network namespace.
const sysClassNet = "/sys/class/net"

// linkNames lists the links of the daemon's network namespace.
//
// It reads the names from sysfs, as the watch loop reads the counters: a
// directory listing, where a netlink dump would have the kernel fill in
// every link's attributes (on a host with 100 quarantines, 700 links twice
// a second). Without sysfs it falls back to netlink.
func linkNames() ([]string, error) {
	if ents, err := os.ReadDir(sysClassNet); err == nil {
		out := make([]string, 0, len(ents))
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(links))
	for i, l := range links {
		out[i] = l.Attrs().Name
	}
	return out, nil
}

// readPortMeters reads each port's ifindex and byte counters from sysfs;
// a port that does not exist gets ifindex 0.
func readPortMeters(ports []string) ([]quota.PortMeter, error) {
	counters, err := detect.ReadCounters(ports)
	if err != nil {
		return nil, err
	}
	out := make([]quota.PortMeter, 0, len(ports))
	for _, p := range ports {
		pm := quota.PortMeter{Name: p}
		if c, ok := counters[p]; ok {
			ifx, err := detect.ReadAttr(p, "ifindex")
			if err != nil {
				return nil, fmt.Errorf("ifindex of %s: %w", p, err)
			}
			pm.Ifindex, pm.FromVMBytes, pm.ToVMBytes = int(ifx), c.RxBytes, c.TxBytes
		}
		out = append(out, pm)
	}
	return out, nil
}
