package tapdev

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/internal/netnstest"
)

// inNewNetns runs f on a thread moved into a new, empty network namespace
// named name (so a child process can join it), removed afterwards.
func inNewNetns(t *testing.T, name string, f func()) {
	t.Helper()
	netnstest.Require(t, "ip")
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the runtime drops the thread
		ns, err := netns.NewNamed(name)
		if err != nil {
			t.Errorf("new netns %s: %v", name, err)
			return
		}
		defer ns.Close()
		defer netns.DeleteNamed(name)
		f()
	}()
	<-done
}

func nsName(t *testing.T) string { return fmt.Sprintf("shqtd-%d-%s", os.Getpid(), t.Name()[4:]) }

// TestCreate: the tap is made as asked, outlives its creator's file, and a
// failure part way leaves no tap.
func TestCreate(t *testing.T) {
	inNewNetns(t, nsName(t), func() {
		mac := net.HardwareAddr{0x02, 0, 0x5e, 0x10, 0, 1}
		l, f, err := Create(Spec{Name: "shqtd0", Alias: "shaperd:vm-x", MAC: mac, MTU: 1400, TxQLen: 777})
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		got, err := netlink.LinkByName("shqtd0")
		if err != nil {
			t.Fatalf("the tap did not outlive Create: %v", err)
		}
		a := got.Attrs()
		if got.Type() != "tuntap" || a.Alias != "shaperd:vm-x" || a.HardwareAddr.String() != mac.String() ||
			a.MTU != 1400 || a.TxQLen != 777 || a.Flags&net.FlagUp == 0 || l.Attrs().Index != a.Index {
			t.Errorf("tap %s: type %s alias %q mac %s mtu %d txqlen %d flags %v", a.Name, got.Type(), a.Alias, a.HardwareAddr, a.MTU, a.TxQLen, a.Flags)
		}
		if tt, ok := got.(*netlink.Tuntap); !ok || tt.NonPersist {
			t.Errorf("tap not persistent: %#v", got)
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/shqtd0/disable_ipv6"); err == nil && strings.TrimSpace(string(b)) != "1" {
			t.Errorf("ipv6 on the tap: disable_ipv6 = %q", b)
		}

		// The name is taken: refused (IFF_TUN_EXCL), the first tap untouched.
		if _, _, err := Create(Spec{Name: "shqtd0", Alias: "shaperd:vm-y"}); err == nil {
			t.Error("a second tap of the same name was made")
		}
		if got, err := netlink.LinkByName("shqtd0"); err != nil || got.Attrs().Alias != "shaperd:vm-x" {
			t.Errorf("the first tap after a refused second: %v, %v", got, err)
		}

		// A failure after the tap exists (an MTU no tap takes): no tap left.
		if _, _, err := Create(Spec{Name: "shqtd1", Alias: "shaperd:vm-z", MTU: 1 << 20}); err == nil {
			t.Error("a tap with MTU 1 MiB was made")
		}
		var nf netlink.LinkNotFoundError
		if _, err := netlink.LinkByName("shqtd1"); !errors.As(err, &nf) {
			t.Errorf("a failed Create left its tap: %v", err)
		}
		if _, _, err := Create(Spec{Name: "shqtd2"}); err == nil {
			t.Error("a tap with no alias was made")
		}
	})
}

// TestKilledBeforePersist: a process killed (SIGKILL) with its tap made and
// configured but not yet persistent leaves no tap; the next Create of the
// name succeeds.
func TestKilledBeforePersist(t *testing.T) {
	if os.Getenv("TAPDEV_CHILD") == "1" {
		beforePersist = func() {
			fmt.Println("configured")
			time.Sleep(time.Minute)
		}
		if _, _, err := Create(Spec{Name: "shqtd3", Alias: "shaperd:vm-k", MTU: 1500}); err != nil {
			fmt.Println("error:", err)
		}
		return
	}
	name := nsName(t)
	inNewNetns(t, name, func() {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", name, self, "-test.run=^TestKilledBeforePersist$", "-test.count=1")
		cmd.Env = append(os.Environ(), "TAPDEV_CHILD=1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if strings.TrimSpace(line) != "configured" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child said %q", line)
		}
		l, err := netlink.LinkByName("shqtd3")
		if err != nil || l.Attrs().Alias != "shaperd:vm-k" {
			t.Errorf("before the kill: tap %v, %v", l, err)
		}
		// ip netns exec runs the test binary in its own process (exec).
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		var nf netlink.LinkNotFoundError
		if _, err := netlink.LinkByName("shqtd3"); !errors.As(err, &nf) {
			t.Errorf("after the kill the tap is still there: %v", err)
		}
		if _, f, err := Create(Spec{Name: "shqtd3", Alias: "shaperd:vm-k"}); err != nil {
			t.Errorf("Create after the kill: %v", err)
		} else {
			f.Close()
		}
	})
}

// TestCreateHandsOverItsQueue: Create returns the file that made the tap,
// still attached as its queue, so that the forwarder takes it rather than
// detach and attach again (each detach waits for an RCU grace period). The
// tap has no carrier until that file's holder turns it on; closing the
// file detaches and leaves the persistent tap.
func TestCreateHandsOverItsQueue(t *testing.T) {
	inNewNetns(t, nsName(t), func() {
		for _, tc := range []struct {
			name       string
			multi, hdr bool
		}{
			{"shqtd4", false, false},
			{"shqtd5", false, true},
			{"shqtd6", true, true},
		} {
			l, f, err := Create(Spec{Name: tc.name, Alias: "shaperd:vm-h", MultiQueue: tc.multi, VnetHdr: tc.hdr})
			if err != nil {
				t.Fatal(err)
			}
			// The file is the tap's queue, with the flags asked for.
			name, flags, err := tunGetIff(f)
			want := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
			if tc.multi {
				want |= unix.IFF_MULTI_QUEUE
			}
			if tc.hdr {
				want |= unix.IFF_VNET_HDR
			}
			if err != nil || name != tc.name || flags&(want|unix.IFF_VNET_HDR|unix.IFF_MULTI_QUEUE) != want {
				t.Errorf("%s: the returned file: TUNGETIFF %q %#x, %v; want %q %#x", tc.name, name, flags, err, tc.name, want)
			}
			// It holds the tap: a single-queue tap takes no other file.
			if err := attachFresh(tc.name, want); !tc.multi && !errors.Is(err, unix.EBUSY) {
				t.Errorf("%s: a second file attached while Create's is held: %v; want EBUSY", tc.name, err)
			}
			// Up, with no carrier until the holder says so.
			if lowerUp(t, tc.name) || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s: after Create: up %v, carrier %v; want up, no carrier", tc.name, l.Attrs().Flags&net.FlagUp != 0, lowerUp(t, tc.name))
			}
			c, _ := f.SyscallConn()
			var ierr error
			c.Control(func(fd uintptr) { ierr = unix.IoctlSetPointerInt(int(fd), unix.TUNSETCARRIER, 1) })
			if ierr != nil || !lowerUp(t, tc.name) {
				t.Errorf("%s: carrier on through the returned file: %v, carrier %v", tc.name, ierr, lowerUp(t, tc.name))
			}
			// Closing it detaches; the tap stays, and takes a new file.
			f.Close()
			if lowerUp(t, tc.name) {
				t.Errorf("%s: carrier after the file closed", tc.name)
			}
			if err := attachFresh(tc.name, want); err != nil {
				t.Errorf("%s: attach after the file closed: %v", tc.name, err)
			}
		}
	})
}

// tunGetIff returns the name and flags of the tap f is attached to.
func tunGetIff(f *os.File) (string, uint16, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", 0, err
	}
	c, err := f.SyscallConn()
	if err != nil {
		return "", 0, err
	}
	var ierr error
	c.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr) })
	return ifr.Name(), ifr.Uint16(), ierr
}

// attachFresh attaches a new file to the tap name with flags, and closes it.
func attachFresh(name string, flags uint16) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(flags)
	return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
}

// lowerUp reports whether the link name has a carrier (IFF_LOWER_UP).
func lowerUp(t *testing.T, name string) bool {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
}
