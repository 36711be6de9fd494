package tcsplice

// Remnants: the splice taps of a port whose switch is gone. When the Linux
// bridge, or the Open vSwitch bridge, a splice was made on is deleted while
// no daemon runs, the net tap is left on no bridge (an OVS splice's
// Interface row goes with its bridge, so only its links are left, which
// this backend recognises by their alias). Nothing tells where the port
// belonged, so the splice cannot be adopted; but what it left can still be
// removed: its taps, the fail-open fallback pair, the kernel half's
// programs on the port (the tc steering filter, and the ingress qdisc the
// splice added for it, or an OVS splice's XDP program) and, with them, its
// maps.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

// remnant is what is left of a splice whose bridge is gone; it can only be
// released (see splice.Remnant).
type remnant struct {
	b        *Backend
	port     string
	netTap   string // on no bridge
	hadQdisc bool
	released bool
}

var (
	_ splice.Splice  = (*remnant)(nil)
	_ splice.Remnant = (*remnant)(nil)
)

func (r *remnant) Port() string        { return r.port }
func (r *remnant) Backend() string     { return BackendName }
func (r *remnant) VMTap() string       { vm, _ := splice.TapNames(r.port); return vm }
func (r *remnant) NetTap() string      { return r.netTap }
func (r *remnant) PriorityTap() string { return splice.PriorityTapName(r.port) }
func (r *remnant) FailOpen() bool      { return false }
func (r *remnant) Warnings() []string  { return []string{r.Remnant()} }

// Remnant says why the splice can only be released.
func (r *remnant) Remnant() string {
	if l, err := linkOrNil(r.netTap); err == nil && l == nil {
		return fmt.Sprintf("%s is missing: the splice of %s was cut short, so it can only be released", r.netTap, r.port)
	}
	return fmt.Sprintf("%s is on no bridge: the bridge %s was spliced out of is gone (or the splice was cut short), so the splice can only be released", r.netTap, r.port)
}

// Release removes, in this order, the kernel half's filter or XDP program
// on the port (and the ingress qdisc the splice added, if nothing else
// hangs on it), the fallback pair, and the taps; it logs what it removed.
// Safe to call twice; each step looks before it removes, and removes only
// what is named and aliased as this port's splice, or is shaperd's program.
func (r *remnant) Release() error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	if r.released {
		return nil
	}
	var removed []string
	var errs []error
	why := r.Remnant()
	port, err := linkOrNil(r.port)
	if err != nil {
		return fmt.Errorf("tcsplice: release %s: look up the port: %w", r.port, err)
	}
	if port != nil {
		removed = append(removed, r.releasePort(port, &errs)...)
	}
	fb, peer := splice.FallbackNames(r.port)
	vm, nt := splice.TapNames(r.port)
	for _, t := range []struct{ name, kind string }{
		{fb, "veth"}, {peer, "veth"}, // deleting one end deletes both
		{nt, "tuntap"}, {splice.PriorityTapName(r.port), "tuntap"}, {vm, "tuntap"},
	} {
		l, err := linkOrNil(t.name)
		if err != nil {
			errs = append(errs, fmt.Errorf("look up %s: %w", t.name, err))
			continue
		}
		if l == nil {
			continue
		}
		// A fallback pair with no alias was cut short in createFallback
		// (see findFallback); its names are the splice's own.
		if a := l.Attrs().Alias; l.Type() != t.kind || !ownAlias(a, r.port) && !(t.kind == "veth" && a == "") {
			errs = append(errs, fmt.Errorf("%s is a %s with alias %q, not %s's splice link; leaving it", t.name, l.Type(), l.Attrs().Alias, r.port))
			continue
		}
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", t.name, err))
			continue
		}
		removed = append(removed, t.kind+" "+t.name)
	}
	if err := errors.Join(errs...); err != nil {
		if len(removed) > 0 {
			r.b.log.Warn("released part of what is left of a splice that cannot be adopted", "port", r.port, "why", why, "removed", removed)
		}
		return fmt.Errorf("tcsplice: release %s: %w", r.port, err)
	}
	r.released = true
	r.b.log.Warn("released what was left of a splice that cannot be adopted", "port", r.port, "why", why, "removed", removed)
	return nil
}

// releasePort removes shaperd's programs from port: the tc steering filter
// (and then the ingress qdisc, if the splice added it and nothing else
// hangs on it), and an XDP program named as shaperd's entry program.
func (r *remnant) releasePort(port netlink.Link, errs *[]error) (removed []string) {
	name := port.Attrs().Name
	fs, err := ingressFilters(port)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("list tc filters of %s: %w", name, err))
		return nil
	}
	if prio, id, ok := steerOf(fs); ok {
		if err := delSteer(port, prio); err != nil {
			*errs = append(*errs, err)
			return removed
		}
		removed = append(removed, "tc filter pref "+strconv.Itoa(int(prio))+" on "+name+" (program "+strconv.Itoa(int(id))+")")
		if !r.hadQdisc {
			switch fs, err := ingressFilters(port); {
			case err != nil:
				*errs = append(*errs, fmt.Errorf("list tc filters of %s: %w", name, err))
			case len(fs) > 0:
				r.b.log.Warn("leaving the ingress qdisc the splice added: others' filters hang on it", "port", name, "filters", len(fs))
			default:
				if err := netlink.QdiscDel(ingressQdisc(port.Attrs().Index)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
					*errs = append(*errs, fmt.Errorf("delete the ingress qdisc of %s: %w", name, err))
				} else {
					removed = append(removed, "ingress qdisc of "+name)
				}
			}
		}
	}
	if x := port.Attrs().Xdp; x != nil && x.Attached && x.ProgId != 0 {
		prog, err := steer.ProgramName(ebpf.ProgramID(x.ProgId))
		switch {
		case err != nil:
			*errs = append(*errs, fmt.Errorf("read the XDP program of %s: %w", name, err))
		case prog != steer.PortXDP.EntryName():
			r.b.log.Warn("leaving an XDP program that is not shaperd's", "port", name, "program", x.ProgId, "name", prog)
		default:
			if err := netlink.LinkSetXdpFdWithFlags(port, -1, unix.XDP_FLAGS_SKB_MODE); err != nil {
				*errs = append(*errs, fmt.Errorf("detach the XDP program from %s: %w", name, err))
			} else {
				removed = append(removed, "XDP program "+strconv.Itoa(int(x.ProgId))+" on "+name)
			}
		}
	}
	return removed
}

// ownAlias reports whether alias is that of one of port's splice links
// (the port's name then a space and flags, or nothing).
func ownAlias(alias, port string) bool {
	rest, ok := strings.CutPrefix(alias, aliasPrefix+port)
	return ok && (rest == "" || rest[0] == ' ')
}
