package forward

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/shaperd/shaperd/internal/netnstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tap tests run on real taps, each in a network namespace of its own
// that exists only as long as the test's locked thread (nothing is created
// in any other namespace). They need root: set SHAPERD_NETNS=1.

// tapLab is a persistent tap, as a splice creates it, in a new namespace,
// opened with OpenTap, and an AF_PACKET socket on it: what the socket sends
// the forwarder reads from the tap, and what the forwarder writes the
// socket receives.
type tapLab struct {
	dev  *tap
	sock int
}

// inTapLab runs f with a tapLab, on a thread in a new network namespace.
// The thread stays locked, so the runtime discards it (and the namespace
// and tap go with it) when f returns.
func inTapLab(t *testing.T, f func(l *tapLab)) { inTapLabWith(t, false, f) }

// inTapLabWith is inTapLab, the tap opened with offload or not.
func inTapLabWith(t *testing.T, offload bool, f func(l *tapLab)) {
	t.Helper()
	netnstest.Require(t, "ip")
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: see above
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		const name = "shqtest0"
		if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL}); err != nil {
			t.Error(err)
			return
		}
		// No IPv6 on the tap, so the namespace sends nothing of its own
		// into it.
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
			return
		}
		link, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetUp(link)
		}
		if err != nil {
			t.Error(err)
			return
		}
		ds, err := OpenTapQueues(name, 1, offload)
		if err != nil {
			t.Error(err)
			return
		}
		d := ds[0]
		defer d.Close()
		sock, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(sock)
		if err := unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: link.Attrs().Index}); err != nil {
			t.Error(err)
			return
		}
		tv := unix.Timeval{Sec: 2}
		unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		f(&tapLab{dev: d.(*tap), sock: sock})
	}()
	<-done
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// headroom returns f after VnetHdrLen zero bytes, for Write at offset
// VnetHdrLen.
func headroom(f []byte) []byte { return append(make([]byte, VnetHdrLen), f...) }

// testFrame is an Ethernet frame of n bytes (n >= 60) numbered i, of an
// EtherType nothing in the namespace answers.
func testFrame(i, n int) []byte {
	f := make([]byte, n)
	copy(f, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
	f[14] = byte(i)
	return f
}

// Close unblocks a reader waiting for a frame, and Read, Write and Close
// afterwards say the device is closed.
func TestTapCloseUnblocksReader(t *testing.T) {
	inTapLab(t, func(l *tapLab) {
		got := make(chan error, 1)
		go func() {
			bufs, sizes := [][]byte{make([]byte, VnetHdrLen+MaxFrameBuffer)}, make([]int, 1)
			_, err := l.dev.Read(bufs, sizes, VnetHdrLen)
			got <- err
		}()
		select {
		case err := <-got:
			t.Fatalf("Read returned %v with no frame", err)
		case <-time.After(200 * time.Millisecond):
		}
		closed := make(chan error, 1)
		go func() { closed <- l.dev.Close() }()
		for _, c := range []chan error{got, closed} {
			select {
			case err := <-c:
				if c == got && !isClosed(err) {
					t.Errorf("the blocked Read returned %v, want os.ErrClosed", err)
				}
				if c == closed && err != nil {
					t.Errorf("Close: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock the reader within 5 s")
			}
		}
		if _, err := l.dev.Read([][]byte{make([]byte, 100)}, make([]int, 1), VnetHdrLen); !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v", err)
		}
		if _, err := l.dev.Write([][]byte{headroom(testFrame(0, 60))}, VnetHdrLen); !errors.Is(err, os.ErrClosed) {
			t.Errorf("Write after Close: %v", err)
		}
		if err := l.dev.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// Frames queued on the tap come out of one Read, in order, up to the batch;
// a batch written goes out in order.
func TestTapBatches(t *testing.T) {
	inTapLab(t, func(l *tapLab) {
		for i := range 5 {
			if _, err := unix.Write(l.sock, testFrame(i, 60+i)); err != nil {
				t.Fatal(err)
			}
		}
		bufs := make([][]byte, 4)
		for i := range bufs {
			bufs[i] = make([]byte, VnetHdrLen+MaxFrameBuffer)
		}
		sizes := make([]int, 4)
		var got [][]byte
		for len(got) < 5 {
			n, err := l.dev.Read(bufs, sizes, VnetHdrLen)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 && n != 4 {
				t.Errorf("first Read returned %d frames with 5 queued and 4 buffers, want 4", n)
			}
			for i := range n {
				got = append(got, bytes.Clone(bufs[i][VnetHdrLen:VnetHdrLen+sizes[i]]))
			}
		}
		for i, f := range got {
			if !bytes.Equal(f, testFrame(i, 60+i)) {
				t.Errorf("frame %d read as % x", i, f[:16])
			}
		}
		var out [][]byte
		for i := range 3 {
			out = append(out, headroom(testFrame(10+i, 100)))
		}
		if n, err := l.dev.Write(out, VnetHdrLen); n != 3 || err != nil {
			t.Fatalf("Write of 3 frames: %d, %v", n, err)
		}
		buf := make([]byte, 2048)
		for i := range 3 {
			n, err := unix.Read(l.sock, buf)
			if err != nil {
				t.Fatalf("frame %d written, not seen on the tap: %v", i, err)
			}
			if !bytes.Equal(buf[:n], out[i][VnetHdrLen:]) {
				t.Errorf("frame %d seen as % x", i, buf[:16])
			}
		}
	})
}

// Reading and writing a frame through a real tap allocates nothing.
func TestTapZeroAllocs(t *testing.T) {
	inTapLab(t, func(l *tapLab) {
		in := testFrame(1, 250)
		bufs, sizes := [][]byte{make([]byte, VnetHdrLen+MaxFrameBuffer)}, make([]int, 1)
		out := make([][]byte, 1)
		a := testing.AllocsPerRun(200, func() {
			if _, err := unix.Write(l.sock, in); err != nil {
				t.Fatal(err)
			}
			if n, err := l.dev.Read(bufs, sizes, VnetHdrLen); n != 1 || err != nil {
				t.Fatalf("Read: %d, %v", n, err)
			}
			out[0] = bufs[0][:VnetHdrLen+sizes[0]]
			if _, err := l.dev.Write(out, VnetHdrLen); err != nil {
				t.Fatal(err)
			}
		})
		if a != 0 {
			t.Errorf("%v allocations per frame read and written, want 0", a)
		}
	})
}

// A tap opened with offload hands each frame after its virtio_net_hdr (all
// zero for a plain frame) and takes frames after one; its GSO offload can
// be switched on and off.
func TestTapOffloadHeader(t *testing.T) {
	inTapLabWith(t, true, func(l *tapLab) {
		if !l.dev.vnet {
			t.Fatal("opened with offload, the tap has no vnet header")
		}
		in := testFrame(3, 200)
		if _, err := unix.Write(l.sock, in); err != nil {
			t.Fatal(err)
		}
		bufs, sizes := [][]byte{make([]byte, VnetHdrLen+MaxFrameBuffer)}, make([]int, 1)
		for i := range bufs[0][:VnetHdrLen] {
			bufs[0][i] = 0xff
		}
		if n, err := l.dev.Read(bufs, sizes, VnetHdrLen); n != 1 || err != nil {
			t.Fatalf("Read: %d, %v", n, err)
		}
		if got := bufs[0][VnetHdrLen : VnetHdrLen+sizes[0]]; !bytes.Equal(got, in) {
			t.Fatalf("frame read as % x", got[:16])
		}
		if hdr := bufs[0][:VnetHdrLen]; !bytes.Equal(hdr, make([]byte, VnetHdrLen)) {
			t.Errorf("header of a plain frame % x, want zeros", hdr)
		}
		if n, err := l.dev.Write([][]byte{headroom(testFrame(4, 120))}, VnetHdrLen); n != 1 || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
		buf := make([]byte, 2048)
		n, err := unix.Read(l.sock, buf)
		if err != nil || !bytes.Equal(buf[:n], testFrame(4, 120)) {
			t.Fatalf("written frame seen as % x (%v)", buf[:min(n, 16)], err)
		}
		for _, on := range []bool{true, false} {
			if err := l.dev.SetGSO(on); err != nil {
				t.Errorf("SetGSO(%v): %v", on, err)
			}
		}
	})
}

// A reader that a flood made add buffers lets go of them when its tap has
// been quiet for shrinkAfter, while it waits, not at its next frame, which
// may never come; a pause shorter than that keeps them.
func TestReaderLetsGoWhenQuiet(t *testing.T) {
	inTapLab(t, func(l *tapLab) {
		r := newReader(l.dev, 0, false)
		send := func(n int) {
			for i := range n {
				if _, err := unix.Write(l.sock, testFrame(i, 60)); err != nil {
					t.Fatal(err)
				}
			}
		}
		// readAll reads n frames, which may come in several batches.
		readAll := func(n int) {
			for got := 0; got < n; {
				k, _, err := r.read()
				if err != nil {
					t.Fatal(err)
				}
				got += k
			}
		}
		// A flood: whole batches queued before each read.
		for len(r.bufs) < MaxReadBatch {
			send(len(r.bufs))
			readAll(len(r.bufs))
		}
		// A pause of a third of shrinkAfter: the batch stays.
		go func() { time.Sleep(shrinkAfter / 3); send(1) }()
		readAll(1)
		if len(r.bufs) != MaxReadBatch || r.idles.Load() != 0 {
			t.Fatalf("after a pause of %v: %d buffers, %d idles; want %d, 0", shrinkAfter/3, len(r.bufs), r.idles.Load(), MaxReadBatch)
		}
		// Quiet for longer than shrinkAfter: let go while waiting.
		released := make(chan int32, 1)
		go func() {
			time.Sleep(shrinkAfter * 3 / 2)
			released <- r.idles.Load() // read while the reader waits in poll
			send(1)
		}()
		readAll(1)
		if n := <-released; n != 1 || len(r.bufs) != 1 || len(r.spare) != 0 {
			t.Fatalf("quiet for %v: %d idles before the next frame, %d buffers and %d spares after it; want 1, 1, 0", shrinkAfter*3/2, n, len(r.bufs), len(r.spare))
		}
	})
}

// TapQueues takes the file that created a tap as the tap's first queue,
// attaching nothing anew for it (a single-queue tap held by that file
// would refuse another), turns the carrier on, reads and writes through
// it, and owns it: closing the Devices, or a refusal, closes it. The taps
// here are not persistent, so a tap that is gone proves that no file of
// it was left open.
func TestTapQueuesTakesTheCreatingFile(t *testing.T) {
	netnstest.Require(t, "ip")
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: see inTapLabWith
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		if err := takeTheCreatingFile(t); err != nil {
			t.Error(err)
		}
	}()
	<-done
}

// takeTheCreatingFile is TestTapQueuesTakesTheCreatingFile's body, on a
// thread in a namespace of its own; it returns what stops it.
func takeTheCreatingFile(t *testing.T) error {
	// create makes a non-persistent tap as splice/tapdev does, carrier
	// off, up, and returns the file that holds it.
	create := func(name string, flags netlink.TuntapFlag) (netlink.Link, *os.File, error) {
		tt := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL | flags, Queues: 1, NonPersist: true}
		if err := netlink.LinkAdd(tt); err != nil {
			return nil, nil, err
		}
		f := tt.Fds[0]
		rc, _ := f.SyscallConn()
		var ierr error
		rc.Control(func(fd uintptr) { ierr = unix.IoctlSetPointerInt(int(fd), unix.TUNSETCARRIER, 0) })
		os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0)
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err == nil {
			err = ierr
		}
		return l, f, err
	}
	lowerUp := func(name string) bool {
		l, err := netlink.LinkByName(name)
		return err == nil && l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
	}
	gone := func(name string) bool {
		_, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		return errors.As(err, &nf)
	}

	// One queue, with offload.
	l, f, err := create("shqtake0", netlink.TUNTAP_VNET_HDR)
	if err != nil {
		return err
	}
	if lowerUp("shqtake0") {
		t.Error("carrier before TapQueues")
	}
	ds, err := TapQueues(f, "shqtake0", 4, true)
	if err != nil {
		return err
	}
	if len(ds) != 1 || !ds[0].(*tap).vnet || !lowerUp("shqtake0") {
		t.Errorf("TapQueues of a single-queue tap: %d devices, carrier %v; want 1 with offload, carrier on", len(ds), lowerUp("shqtake0"))
	}
	sock, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return err
	}
	defer unix.Close(sock)
	if err := unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index}); err != nil {
		return err
	}
	tv := unix.Timeval{Sec: 2}
	unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	in := testFrame(7, 90)
	if _, err := unix.Write(sock, in); err != nil {
		return err
	}
	bufs, sizes := [][]byte{make([]byte, VnetHdrLen+MaxFrameBuffer)}, make([]int, 1)
	if n, err := ds[0].Read(bufs, sizes, VnetHdrLen); n != 1 || err != nil || !bytes.Equal(bufs[0][VnetHdrLen:VnetHdrLen+sizes[0]], in) {
		t.Errorf("Read through the taken file: %d, %v", n, err)
	}
	if n, err := ds[0].Write([][]byte{headroom(testFrame(8, 80))}, VnetHdrLen); n != 1 || err != nil {
		t.Errorf("Write through the taken file: %d, %v", n, err)
	}
	buf := make([]byte, 2048)
	if n, err := unix.Read(sock, buf); err != nil || !bytes.Equal(buf[:n], testFrame(8, 80)) {
		t.Errorf("written frame seen as % x (%v)", buf[:max(n, 0)], err)
	}
	ds[0].Close()
	if !gone("shqtake0") {
		t.Error("after Close the tap is still held by a file")
	}

	// Several queues of a multi-queue tap: the rest are attached.
	if _, f, err = create("shqtake1", netlink.TUNTAP_VNET_HDR|netlink.TUNTAP_MULTI_QUEUE); err != nil {
		return err
	}
	ds, err = TapQueues(f, "shqtake1", 3, true)
	if err != nil || len(ds) != 3 || !lowerUp("shqtake1") {
		t.Errorf("TapQueues of a multi-queue tap: %d devices, %v, carrier %v; want 3, carrier on", len(ds), err, lowerUp("shqtake1"))
	}
	for _, d := range ds {
		d.Close()
	}
	if !gone("shqtake1") {
		t.Error("after closing every queue the tap is still held by a file")
	}

	// Refused: offload asked of a file without IFF_VNET_HDR, or a
	// file of another tap. The file is closed either way.
	if _, f, err = create("shqtake2", 0); err != nil {
		return err
	}
	if _, err := TapQueues(f, "shqtake2", 1, true); err == nil {
		t.Error("TapQueues with offload took a file without IFF_VNET_HDR")
	}
	if !gone("shqtake2") {
		t.Error("a refused file was not closed")
	}
	if _, f, err = create("shqtake3", 0); err != nil {
		return err
	}
	if _, err := TapQueues(f, "shqtake4", 1, false); err == nil {
		t.Error("TapQueues took a file of another tap")
	}
	if !gone("shqtake3") {
		t.Error("a refused file was not closed")
	}
	return nil
}
