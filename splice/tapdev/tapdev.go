// Package tapdev creates the splice's persistent taps so that a daemon
// killed at any instant leaves either no tap or a tap that says whose it
// is.
//
// A persistent tap made in one step (TUNSETIFF, TUNSETPERSIST) and then
// configured has a window in which it exists with no alias: a daemon
// killed there leaves a tap a restarted daemon cannot tell from someone
// else's, so it can neither adopt nor remove it. Create closes that window:
// the tap is made non-persistent, held by this process's file, configured
// (alias included), and only then made persistent (and brought up). Until
// that last ioctl the kernel deletes the tap when the file closes, which a
// kill does.
//
// Create hands the creating file back, still attached: it is the tap's
// first queue, for the forwarder to take (forward.TapQueues) rather than
// attach anew. Detaching a queue from a tap, which closing its last file
// does, waits for an RCU grace period (synchronize_net in the kernel's
// __tun_detach), and so does the link watcher when a tap that lost its
// carrier is up (dev_deactivate). Each takes well under a millisecond on
// a quiet machine, but tens to hundreds of milliseconds while a flood
// keeps the cores in softirq and other work competes for them: a
// creation that closed its file before bringing the tap up took at worst
// 30 to 250 ms of 100 under a lab flood and two busy loops, and 490 ms
// once in CI. A tap handed over costs neither: at worst 4 to 13 ms of 100
// under the same load. So that nothing reaches a tap before its
// forwarder runs, Create turns the carrier off (TUNSETCARRIER) while the
// tap is still down; the forwarder turns it on. A caller that closes the
// file instead pays one grace period, in the close.
package tapdev

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Spec is one tap: always IFF_TAP|IFF_NO_PI|IFF_TUN_EXCL, the flags a
// forwarder re-attaches with (songgao/water with Persist: true), plus
// IFF_VNET_HDR when the forwarder opens it with offloads. The kernel keeps
// IFF_VNET_HDR per tap, and takes it from a multi-queue tap's first queue
// only, so the creating file must carry the flag the forwarder wants.
type Spec struct {
	Name       string
	Alias      string           // required: how a restarted daemon knows the tap
	MAC        net.HardwareAddr // nil: the kernel's random, locally administered one
	MTU        int              // 0: the kernel's default
	TxQLen     int              // 0: the kernel's default
	MultiQueue bool             // IFF_MULTI_QUEUE
	VnetHdr    bool             // IFF_VNET_HDR: frames come and go after a virtio_net_hdr
}

// Create makes the tap of s, configured and with its alias, then
// persistent, then up, and returns it with the file that created it: the
// tap's first queue, attached, nonblocking and close-on-exec. The caller
// owns the file: it hands it to the forwarder, or closes it (which
// detaches, and costs an RCU grace period; see the package comment). The
// tap has no carrier until the holder of a file turns it on
// (TUNSETCARRIER), as a tap with no file attached has none.
//
// On error no tap is left and no file is returned: before the tap is
// persistent, closing the creating file deletes it; after, Create does.
// IPv6 is disabled on it before it goes up: no link-local address, DAD or
// MLD of the host's own, which a forwarder would take for the VM's frames.
func Create(s Spec) (netlink.Link, *os.File, error) {
	if s.Alias == "" {
		return nil, nil, fmt.Errorf("create tap %s: no alias", s.Name)
	}
	flags := netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL
	if s.MultiQueue {
		flags |= netlink.TUNTAP_MULTI_QUEUE
	}
	if s.VnetHdr {
		flags |= netlink.TUNTAP_VNET_HDR
	}
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: s.Name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      flags,
		Queues:     1, // netlink hands back the file instead of closing it
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, nil, fmt.Errorf("create tap %s: %w", s.Name, err)
	}
	if len(tap.Fds) != 1 {
		closeAll(tap.Fds)
		return nil, nil, fmt.Errorf("create tap %s: %d files from the kernel, want 1", s.Name, len(tap.Fds))
	}
	f := tap.Fds[0]
	link, err := create(s, f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return link, f, nil
}

// create does the rest of Create with f, the creating file, attached;
// the caller closes f on error.
func create(s Spec, f *os.File) (netlink.Link, error) {
	// Carrier off while the tap is down: the link watcher's event for it
	// is handled by configure's look-up, when a down tap needs nothing.
	// (Handled once the tap is up, it would wait for a grace period.)
	if err := ioctlInt(f, unix.TUNSETCARRIER, 0); err != nil {
		return nil, fmt.Errorf("turn off the carrier of tap %s: %w", s.Name, err)
	}
	link, err := configure(s)
	if err != nil {
		return nil, err
	}
	beforePersist()
	if err := persist(f); err != nil {
		return nil, fmt.Errorf("make tap %s persistent: %w", s.Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		if derr := netlink.LinkDel(link); derr != nil {
			return nil, fmt.Errorf("set %s up: %w (and deleting it: %v)", s.Name, err, derr)
		}
		return nil, fmt.Errorf("set %s up: %w", s.Name, err)
	}
	// Read back what a restarted daemon will see.
	got, err := netlink.LinkByName(s.Name)
	if err != nil {
		if derr := netlink.LinkDel(link); derr != nil {
			return nil, fmt.Errorf("look up tap %s: %w (and deleting it: %v)", s.Name, err, derr)
		}
		return nil, fmt.Errorf("look up tap %s: %w", s.Name, err)
	}
	return got, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// beforePersist runs between configuring a tap and making it persistent;
// a test stops the process there.
var beforePersist = func() {}

func configure(s Spec) (netlink.Link, error) {
	link, err := netlink.LinkByName(s.Name)
	if err != nil {
		return nil, fmt.Errorf("look up new tap %s: %w", s.Name, err)
	}
	err = os.WriteFile("/proc/sys/net/ipv6/conf/"+s.Name+"/disable_ipv6", []byte("1"), 0)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("disable ipv6 on %s: %w", s.Name, err)
	}
	if s.MAC != nil {
		if err := netlink.LinkSetHardwareAddr(link, s.MAC); err != nil {
			return nil, fmt.Errorf("set mac of %s: %w", s.Name, err)
		}
	}
	if s.MTU > 0 {
		if err := netlink.LinkSetMTU(link, s.MTU); err != nil {
			return nil, fmt.Errorf("set mtu of %s: %w", s.Name, err)
		}
	}
	if s.TxQLen > 0 {
		if err := netlink.LinkSetTxQLen(link, s.TxQLen); err != nil {
			return nil, fmt.Errorf("set txqueuelen of %s: %w", s.Name, err)
		}
	}
	if err := netlink.LinkSetAlias(link, s.Alias); err != nil {
		return nil, fmt.Errorf("set alias of %s: %w", s.Name, err)
	}
	return link, nil
}

func persist(f *os.File) error {
	c, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := c.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 1) }); err != nil {
		return err
	}
	return ierr
}

// ioctlInt runs an ioctl that reads an int through a pointer (TUNSETCARRIER).
func ioctlInt(f *os.File, req uint, v int) error {
	c, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := c.Control(func(fd uintptr) { ierr = unix.IoctlSetPointerInt(int(fd), req, v) }); err != nil {
		return err
	}
	return ierr
}
