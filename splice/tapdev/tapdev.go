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
// forwarder re-attaches with (songgao/water with Persist: true).
type Spec struct {
	Name       string
	Alias      string           // required: how a restarted daemon knows the tap
	MAC        net.HardwareAddr // nil: the kernel's random, locally administered one
	MTU        int              // 0: the kernel's default
	TxQLen     int              // 0: the kernel's default
	MultiQueue bool             // IFF_MULTI_QUEUE
}

// Create makes the tap of s, configured and with its alias, then
// persistent, then up. On error no tap is left: before it is persistent,
// closing the creating file deletes it; after, Create does. IPv6 is
// disabled on it before it goes up: no link-local address, DAD or MLD of the
// host's own, which a forwarder would take for the VM's frames.
func Create(s Spec) (netlink.Link, error) {
	if s.Alias == "" {
		return nil, fmt.Errorf("create tap %s: no alias", s.Name)
	}
	flags := netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL
	if s.MultiQueue {
		flags |= netlink.TUNTAP_MULTI_QUEUE
	}
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: s.Name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      flags,
		Queues:     1, // netlink hands back the file instead of closing it
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("create tap %s: %w", s.Name, err)
	}
	defer closeAll(tap.Fds) // a second Close is harmless
	if len(tap.Fds) != 1 {
		return nil, fmt.Errorf("create tap %s: %d files from the kernel, want 1", s.Name, len(tap.Fds))
	}
	link, err := configure(s)
	if err != nil {
		return nil, err
	}
	beforePersist()
	if err := persist(tap.Fds[0]); err != nil {
		return nil, fmt.Errorf("make tap %s persistent: %w", s.Name, err)
	}
	// Up only once no file holds it: brought up while attached, the tap
	// would show a carrier that its detaching takes away again, and the
	// link's operational state would settle a moment later (linkwatch).
	closeAll(tap.Fds)
	if err := netlink.LinkSetUp(link); err != nil {
		if derr := netlink.LinkDel(link); derr != nil {
			return nil, fmt.Errorf("set %s up: %w (and deleting it: %v)", s.Name, err, derr)
		}
		return nil, fmt.Errorf("set %s up: %w", s.Name, err)
	}
	// Read back what a restarted daemon will see.
	if link, err = netlink.LinkByName(s.Name); err != nil {
		return nil, fmt.Errorf("look up tap %s: %w", s.Name, err)
	}
	return link, nil
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
