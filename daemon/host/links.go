package host

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/quota"
)

// linkNames lists the links of the daemon's network namespace.
func linkNames() ([]string, error) {
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
