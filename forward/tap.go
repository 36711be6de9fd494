package forward

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/songgao/water"
	"golang.org/x/sys/unix"
)

// A tap is read on its input goroutine's own thread, with poll(2) and
// read(2), never through Go's netpoller.
//
// Why: at moderate rates a frame's cost is the wake-up of the thread that
// handles it, not what the forwarder does with it. Through the netpoller
// (water opens taps O_NONBLOCK, and an os.File registers with it), a frame
// that arrives while the reader sleeps wakes the netpoller's thread, which
// must then hand the goroutine to the thread it is locked to (to run at
// --forwarder-nice): measured at 10 kpps, evenly spaced, about 4 context
// switches and 8 system calls per frame, and 55% of the daemon's CPU time
// in the Go scheduler (park, stoplockedm/startlockedm, netpoll). Waiting in
// poll on the reading thread itself costs one wake-up: poll, read, a read
// that finds the queue empty, and the write.
//
// Close must unblock a reader, and a read(2) blocked on a tap cannot be
// interrupted (signals restart it, and closing the fd does not wake it).
// So the fd stays O_NONBLOCK, and the reader polls it together with an
// eventfd that Close signals.

// tap is a Device over one queue of a tap.
type tap struct {
	name string
	fd   int  // the tap's queue, O_NONBLOCK, in no netpoller
	efd  int  // eventfd: Close makes it readable to wake a reader in poll
	vnet bool // frames come and go after a virtio_net_hdr (offloads)
	// mu is held for reading around every system call on fd and efd,
	// and for writing by Close to close them: an fd number is never used
	// after it was closed (and maybe reused).
	mu      sync.RWMutex
	closing atomic.Bool
	// Owned by the reader.
	pfd     [2]unix.PollFd
	drained bool // the last Read emptied the queue: poll before reading
}

// OpenTap attaches to the existing persistent tap named name and returns it
// as a Device: one queue of it (see OpenTapQueues). Closing the Device
// detaches from the tap and leaves it in place (it keeps its persist flag:
// water clears the flag unless asked to keep it).
//
// water attaches (TUNSETIFF, TUNSETPERSIST); the Device then keeps a
// duplicate of water's fd and closes water's os.File, which takes the fd
// out of Go's netpoller (see the comment above tap).
func OpenTap(name string) (Device, error) {
	ds, err := OpenTapQueues(name, 1, false)
	if err != nil {
		return nil, err
	}
	return ds[0], nil
}

// OpenTapQueues attaches n queues to the existing persistent tap named
// name, one Device each. A tap created with IFF_MULTI_QUEUE takes up to n
// queues (the kernel spreads the frames it sends by flow); a tap created
// without it (by an older shaperd) takes one, whatever n: the kernel
// refuses a multi-queue attach to it with EINVAL, and then the tap is
// attached as a single queue. Either way at least one Device is returned.
//
// With offload, the queues are attached with IFF_VNET_HDR: every frame
// comes and goes after a virtio_net_hdr, the tap takes frames whose
// checksum is left to the kernel, and, once the forwarder allows it (see
// gsoAllowed), GSO segments of TCP (TUNSETOFFLOAD). Every tap of a splice
// must be opened with the same offload: a segment read from one is written
// to another as it came. The kernel keeps IFF_VNET_HDR per tap, not per
// queue, so all queues of a tap are attached the same way.
func OpenTapQueues(name string, n int, offload bool) ([]Device, error) {
	var out []Device
	fail := func(err error) ([]Device, error) {
		for _, d := range out {
			d.Close()
		}
		return nil, fmt.Errorf("forward: open tap %s: %w", name, err)
	}
	for i := range max(n, 1) {
		d, err := attach(name, true, offload)
		if i == 0 && errors.Is(err, unix.EINVAL) {
			d, err = attach(name, false, offload)
			if err != nil {
				return fail(err)
			}
			return []Device{d}, nil
		}
		if err != nil {
			return fail(err)
		}
		out = append(out, d)
	}
	return out, nil
}

// TapQueues returns n queues of the tap named name as Devices, like
// OpenTapQueues, the first of them first: a file already attached to the
// tap, the one that created it (splice/tapdev), which it takes ownership of
// (it is closed, on error too). Taking that file rather than attaching a
// new one spares the tap a detach, which waits for an RCU grace period:
// tens to hundreds of milliseconds under a flood (see package tapdev).
//
// first must have been attached with the flags this forwarder would use:
// IFF_TAP|IFF_NO_PI, IFF_VNET_HDR if and only if offload (the kernel takes
// it from a tap's first queue only), and IFF_MULTI_QUEUE for more than one
// queue (without it, one Device is returned, whatever n). The other n-1
// queues are attached as OpenTapQueues does. The tap's carrier, which the
// creator left off, is turned on once every queue is attached.
func TapQueues(first *os.File, name string, n int, offload bool) ([]Device, error) {
	fail := func(ds []Device, err error) ([]Device, error) {
		for _, d := range ds {
			d.Close()
		}
		return nil, fmt.Errorf("forward: take tap %s: %w", name, err)
	}
	got, flags, err := tunGetIff(first)
	if err != nil {
		first.Close()
		return fail(nil, fmt.Errorf("TUNGETIFF: %w", err))
	}
	want := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if offload {
		want |= unix.IFF_VNET_HDR
	}
	if got != name || flags&(unix.IFF_TUN|unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR) != want {
		first.Close()
		return fail(nil, fmt.Errorf("the file is attached to %s with flags %#x, want %s with %#x", got, flags, name, want))
	}
	fd, err := dupFile(first)
	if err != nil {
		return fail(nil, err)
	}
	d, err := newTap(name, fd)
	if err != nil {
		return fail(nil, err)
	}
	if offload {
		if err := setOffloads(fd); err != nil {
			return fail([]Device{d}, err)
		}
		d.vnet = true
	}
	out := []Device{d}
	if flags&unix.IFF_MULTI_QUEUE != 0 {
		for range max(n, 1) - 1 {
			q, err := attach(name, true, offload)
			if err != nil {
				return fail(out, err)
			}
			out = append(out, q)
		}
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETCARRIER, 1); err != nil {
		return fail(out, fmt.Errorf("TUNSETCARRIER: %w", err))
	}
	return out, nil
}

// tunGetIff returns the name and flags of the tap f is attached to.
func tunGetIff(f *os.File) (string, uint16, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", 0, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return "", 0, err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr) }); err != nil {
		return "", 0, err
	}
	return ifr.Name(), ifr.Uint16(), ierr
}

// attach attaches one queue, with IFF_MULTI_QUEUE or without. Without
// offload water attaches it; with offload, TUNSETIFF goes through
// x/sys/unix, because the pinned water has no IFF_VNET_HDR option.
func attach(name string, multi, offload bool) (Device, error) {
	if offload {
		return attachVnet(name, multi)
	}
	ifce, err := water.New(water.Config{
		DeviceType: water.TAP,
		PlatformSpecificParams: water.PlatformSpecificParams{
			Name:       name,
			Persist:    true,
			MultiQueue: multi,
		},
	})
	if err != nil {
		return nil, err
	}
	fd, err := detach(ifce)
	if err != nil {
		return nil, err
	}
	return newTap(name, fd)
}

// detach returns a close-on-exec duplicate of the fd of water's
// interface, and closes the interface's own os.File (which removes it from
// the netpoller; the duplicate keeps the tap attached).
func detach(ifce *water.Interface) (int, error) {
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return -1, fmt.Errorf("water returned a %T, not an *os.File", ifce.ReadWriteCloser)
	}
	return dupFile(f)
}

// dupFile returns a nonblocking, close-on-exec duplicate of f's fd and
// closes f (which removes it from the netpoller; the duplicate keeps the
// tap attached).
func dupFile(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return -1, err
	}
	fd := -1
	cerr := rc.Control(func(old uintptr) {
		fd, err = unix.FcntlInt(old, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		err = cerr
	}
	f.Close()
	if err != nil {
		return -1, fmt.Errorf("dup: %w", err)
	}
	// The duplicate shares water's O_NONBLOCK; say it anyway.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Offload flags of TUNSETOFFLOAD (include/uapi/linux/if_tun.h).
const (
	tunFCsum = 0x01 // TUN_F_CSUM: frames may leave their checksum to the kernel
	tunFTSO4 = 0x02 // TUN_F_TSO4
	tunFTSO6 = 0x04 // TUN_F_TSO6
)

// attachVnet attaches one queue with IFF_VNET_HDR, a 10-byte header, and
// checksum offload (GSO off until SetGSO).
func attachVnet(name string, multi bool) (Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if multi {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := setOffloads(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	t, err := newTap(name, fd)
	if err != nil {
		return nil, err
	}
	t.vnet = true
	return t, nil
}

// setOffloads sets a queue attached with IFF_VNET_HDR to this forwarder's
// header length and checksum offload (GSO off until SetGSO).
func setOffloads(fd int) error {
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VnetHdrLen); err != nil {
		return fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunFCsum); err != nil {
		return fmt.Errorf("TUNSETOFFLOAD: %w", err)
	}
	return nil
}

// SetGSO lets the kernel hand this tap's reader GSO segments of TCP (up to
// 64 KB each) or not; checksum offload stays on. It applies to the whole
// tap, every queue. Only a tap opened with offload can; others return nil
// and change nothing.
func (t *tap) SetGSO(on bool) error {
	if !t.vnet {
		return nil
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closing.Load() {
		return os.ErrClosed
	}
	flags := tunFCsum
	if on {
		flags |= tunFTSO4 | tunFTSO6
	}
	return unix.IoctlSetInt(t.fd, unix.TUNSETOFFLOAD, flags)
}

// newTap wraps fd, a nonblocking tap queue, and takes ownership of it.
func newTap(name string, fd int) (*tap, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	t := &tap{name: name, fd: fd, efd: efd, drained: true}
	t.pfd = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
	return t, nil
}

// Read reads a batch (see Device). Errors other than a closed device are
// the system call's errno.
func (t *tap) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return t.read(bufs, sizes, offset, -1)
}

// ReadIdle is Read, except that it returns ErrIdle if no frame came
// within idle (see IdleReader).
func (t *tap) ReadIdle(bufs [][]byte, sizes []int, offset int, idle time.Duration) (int, error) {
	return t.read(bufs, sizes, offset, max(int(idle/time.Millisecond), 1))
}

// read reads a batch, waiting up to timeout milliseconds for its first
// frame (-1: for ever).
func (t *tap) read(bufs [][]byte, sizes []int, offset, timeout int) (int, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := 0
	for n < len(bufs) {
		if t.closing.Load() {
			break
		}
		if t.drained {
			if err := t.wait(timeout); err != nil {
				return n, err
			}
			t.drained = false
		}
		var k int
		var err error
		if t.vnet {
			k, err = unix.Read(t.fd, bufs[n][offset-VnetHdrLen:])
			k -= VnetHdrLen
		} else {
			clear(bufs[n][offset-VnetHdrLen : offset])
			k, err = unix.Read(t.fd, bufs[n][offset:])
		}
		switch err {
		case nil:
			if k < 0 {
				continue // shorter than its header: nothing to forward
			}
			sizes[n] = k
			n++
		case unix.EINTR:
		case unix.EAGAIN:
			t.drained = true
			if n > 0 {
				return n, nil
			}
		default:
			t.drained = true // a tap whose device went away: wait for it
			if n > 0 {
				return n, nil
			}
			return 0, err
		}
	}
	if n == 0 {
		return 0, os.ErrClosed
	}
	return n, nil
}

// wait blocks in poll until the tap has a frame or Close was called, for
// at most timeout milliseconds (-1: no limit), after which it returns
// ErrIdle. An interrupted poll starts its timeout again: it is a bound on
// idleness, not a deadline.
func (t *tap) wait(timeout int) error {
	for {
		t.pfd[0].Revents, t.pfd[1].Revents = 0, 0
		k, err := unix.Poll(t.pfd[:], timeout)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case t.pfd[1].Revents != 0 || t.closing.Load():
			return os.ErrClosed
		case k == 0:
			return ErrIdle
		}
		// POLLERR (the tap's device is gone) is left to read to report.
		return nil
	}
}

// Write writes each frame with one write(2) (see Device), after its
// offload header if the tap has offloads.
func (t *tap) Write(bufs [][]byte, offset int) (int, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closing.Load() {
		return 0, os.ErrClosed
	}
	for i := 0; i < len(bufs); {
		b := bufs[i][offset:]
		if t.vnet {
			b = bufs[i][offset-VnetHdrLen:]
		}
		_, err := unix.Write(t.fd, b)
		switch err {
		case nil:
			i++
		case unix.EINTR:
		default:
			return i, err
		}
	}
	return len(bufs), nil
}

// Close wakes a reader blocked in Read, waits for every Read and Write
// under way to return, and closes the fds, which detaches from the tap.
// Later calls return nil.
func (t *tap) Close() error {
	if !t.closing.CompareAndSwap(false, true) {
		return nil
	}
	one := [8]byte{1}
	_, werr := unix.Write(t.efd, one[:])
	t.mu.Lock()
	defer t.mu.Unlock()
	err := unix.Close(t.fd)
	unix.Close(t.efd)
	if werr != nil {
		err = errors.Join(fmt.Errorf("forward: tap %s: waking the reader: %w", t.name, werr), err)
	}
	return err
}

// isClosed reports whether err says the device was closed under a reader or
// writer, which is how Close stops the loops.
func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, fs.ErrClosed)
}
