package ovssplice

// The kernel half of the splice: the shared BPF program (package steer),
// attached as generic XDP on the VM's port, hands every frame to the taps
// before anything else sees it.
//
// Why XDP and not OpenFlow or tc: the userspace datapath reads the port
// through a packet socket, which a flood overflows. Steered by OpenFlow, 94%
// of a max-rate flood's frames were lost in that socket, and the bypass
// replies with them (95 of 100 probe round trips, p99 3.7 s). A tc redirect
// runs after packet sockets have taken their copy, so ovs-vswitchd still
// spent half a core reading and dropping a copy of the flood, and starved,
// lost frames the forwarder had passed (4447-4906 pps delivered of 5000).
// Generic XDP runs before both: OVS never sees the VM's frames while the
// program steers them.
//
// The program is attached through netlink, not a BPF link: it must outlive
// the daemon, as the tc backend's filters do, so that a restarted daemon
// takes it over with its maps (a BPF link lives only as long as a file
// descriptor or a pin in a bpffs, and the daemon may run where no bpffs
// outlives it, e.g. under `ip netns exec`, which mounts a new /sys). When
// the daemon dies the program's liveness slot empties (see package steer)
// and it passes every frame to OVS (fail open), whose fast-failover groups
// send them the direct way as the forwarder's taps have lost carrier, or
// drops them (fail closed).

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// kernelHalf is what a splice keeps of its kernel half; *steer.Half, or a
// fake in unit tests.
type kernelHalf interface {
	Beat(now uint64, stale time.Duration) error
	SetBackstop(d steer.Dir, b steer.Backstop) error
	Stats() (steer.Stats, error)
	Close() error
}

// xdpProg is the XDP program attached to a link.
type xdpProg struct {
	id   uint32
	name string // the kernel's 15 bytes of it
	// unknown: this process may not open the program to read its name
	// (no CAP_SYS_ADMIN, see steer.NotPermitted).
	unknown bool
}

// ours reports whether the program is shaperd's entry program.
func (p xdpProg) ours() bool { return p.name == steer.PortXDP.EntryName() }

func (netlinkLinks) attachSteer(port, netTap int, cfg steer.Config) (kernelHalf, uint32, error) {
	link, err := netlink.LinkByIndex(port)
	if err != nil {
		return nil, 0, fmt.Errorf("look up ifindex %d: %w", port, err)
	}
	h, err := steer.New(cfg)
	if err != nil {
		return nil, 0, err
	}
	if err := attachNetSteer(h, netTap); err != nil {
		h.Close()
		return nil, 0, err
	}
	entry, err := h.Entry(steer.PortXDP)
	if err != nil {
		h.Close()
		return nil, 0, err
	}
	info, err := entry.Info()
	if err != nil {
		h.Close()
		return nil, 0, fmt.Errorf("read the XDP program: %w", err)
	}
	id, _ := info.ID()
	err = netlink.LinkSetXdpFdWithFlags(link, entry.FD(), unix.XDP_FLAGS_SKB_MODE|unix.XDP_FLAGS_UPDATE_IF_NOEXIST)
	if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
		h.Close()
		return nil, 0, fmt.Errorf("attach the XDP program to %s: the port already has an XDP program (%w)", link.Attrs().Name, err)
	}
	if err != nil {
		h.Close()
		return nil, 0, fmt.Errorf("attach the XDP program to %s: %w", link.Attrs().Name, err)
	}
	return h, uint32(id), nil
}

func (netlinkLinks) adoptSteer(port int, id uint32, netTap int, cfg steer.Config) (kernelHalf, error) {
	entries := map[steer.Hook]ebpf.ProgramID{steer.PortXDP: ebpf.ProgramID(id)}
	netID, onNet, err := steer.NetTapProg(netTap)
	if err != nil {
		return nil, err
	}
	if onNet {
		entries[steer.NetTC] = ebpf.ProgramID(netID)
	}
	h, err := steer.Adopt(cfg, entries)
	if err != nil {
		return nil, err
	}
	if !onNet {
		if err := attachNetSteer(h, netTap); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

// attachNetSteer attaches h's to-VM program to the egress of the net tap.
func attachNetSteer(h *steer.Half, netTap int) error {
	entry, err := h.Entry(steer.NetTC)
	if err != nil {
		return err
	}
	if err := steer.AttachNetTap(netTap, entry.FD(), steer.NetTC.EntryName()); err != nil {
		return fmt.Errorf("the net tap's egress: %w", err)
	}
	return nil
}

func (netlinkLinks) xdpProgram(ifindex int) (xdpProg, bool, error) {
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return xdpProg{}, false, fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	x := link.Attrs().Xdp
	if x == nil || !x.Attached || x.ProgId == 0 {
		return xdpProg{}, false, nil
	}
	name, err := steer.ProgramName(ebpf.ProgramID(x.ProgId))
	if steer.NotPermitted(err) {
		return xdpProg{id: x.ProgId, unknown: true}, true, nil
	}
	if err != nil {
		return xdpProg{}, false, err
	}
	return xdpProg{id: x.ProgId, name: name}, true, nil
}

func (netlinkLinks) steerHeld(id uint32) (bool, error) { return steer.Held(ebpf.ProgramID(id)) }

// detachXDP detaches the XDP program of link ifindex if it is still id.
func (netlinkLinks) detachXDP(ifindex int, id uint32) error {
	link, err := netlink.LinkByIndex(ifindex)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	if x := link.Attrs().Xdp; x == nil || !x.Attached || x.ProgId != id {
		return nil
	}
	if err := netlink.LinkSetXdpFdWithFlags(link, -1, unix.XDP_FLAGS_SKB_MODE); err != nil {
		return fmt.Errorf("detach the XDP program from %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// steerConfig is what the splice tells its kernel half.
func (s *spliced) steerConfig() steer.Config {
	return steer.Config{
		VMTap:          s.vmIndex,
		PrioTap:        s.prioIndex,
		Port:           s.portIndex,
		BypassPorts:    s.opt.BypassPorts,
		BypassOutbound: s.opt.BypassOutbound,
		FailOpen:       s.plan.failOpen,
	}
}

// attachSteer attaches a new kernel half to the port.
func (s *spliced) attachSteer() error {
	h, id, err := s.b.links.attachSteer(s.portIndex, s.netIndex, s.steerConfig())
	if err != nil {
		return err
	}
	s.Hold(h)
	s.xdpID = id
	return nil
}

// dropXDP detaches the splice's XDP program from the port (if it is still
// the one the splice attached or adopted) and closes its kernel half: the
// program goes before its maps' last handles, so no frame meets the fail
// path on the way.
func (s *spliced) dropXDP() error {
	if s.xdpID != 0 && s.portIndex != 0 {
		if err := s.b.links.detachXDP(s.portIndex, s.xdpID); err != nil {
			return err
		}
	}
	s.xdpID = 0
	if h, ok := s.Take(); ok {
		if err := h.Close(); err != nil {
			s.b.log.Warn("closing the kernel half", "port", s.port, "err", err)
		}
	}
	return nil
}

var _ splice.Kernel = (*spliced)(nil)
