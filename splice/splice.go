// Package splice defines how shaperd puts a VM's port into quarantine: a
// backend moves the port's traffic through a pair of tap devices that a
// userland forwarder reads and writes, and later reverts exactly what it did.
//
// Backends create and revert plumbing only; they know nothing of frames. The
// Linux-bridge backend lives in splice/tcsplice; an Open vSwitch backend
// implements the same interfaces.
package splice

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"time"

	"github.com/shaperd/shaperd/splice/steer"
)

// Backend creates and reverts splices of one kind ("tc" for Linux bridges; "ovs" later).
type Backend interface {
	Name() string
	// Handles reports whether port exists and this backend can splice it (tc: a member of a Linux bridge).
	// A port that does not exist returns ErrNoPort; a port on no bridge returns ErrNotBridged (wrapped, with the port name).
	Handles(port string) (bool, error)
	// Splice creates the tap pair and redirects the port's traffic through it. All-or-nothing: on any error,
	// everything it did is undone before it returns. Validate before side effects.
	Splice(port string, opt Options) (Splice, error)
}

// Options tell a backend which frames from the VM to steer into the
// priority tap, away from the queue a flood fills: frames that may be bypass
// (TCP from the bypass ports, and with BypassOutbound to them) and control
// (ARP, IPv6 router and neighbour discovery). Steering is a kernel match on
// headers only; the forwarder still classifies every steered frame, so a
// flood sent from port 22 is charged like any other.
//
// FailOpen asks the backend to fall back to the direct path, in the
// datapath and with no daemon involved, when the daemon dies or its
// heartbeat goes stale (see Kernel). Backends that cannot do that refuse it
// with ErrFailOpen.
//
// Queues above 1 asks for VM and net taps created with IFF_MULTI_QUEUE, so
// that a forwarder can attach that many queues to each (one reader per
// queue); backends that cannot make them make single-queue taps, which a
// forwarder attaches once. The priority tap always has one queue.
type Options struct {
	BypassPorts    []uint16
	BypassOutbound bool
	FailOpen       bool
	Queues         int
}

// Offloader is a Splice whose taps may carry offloaded frames (TCP
// segments of up to 64 KB, checksums left to the kernel) between the
// forwarder and the switch: the forwarder then opens them with
// IFF_VNET_HDR (forward.OpenTapQueues). A Splice that is not an
// Offloader, or says false, gets plain frames.
type Offloader interface {
	Offloads() bool
}

// TapHolder is a Splice that keeps the files that created its taps, each
// still attached as the tap's first queue, for the forwarder to take
// instead of attaching anew: a tap whose last file closes detaches it,
// which waits for an RCU grace period, and a flood can stretch that to
// hundreds of milliseconds (see package splice/tapdev). The taps have no
// carrier until the forwarder turns it on (forward.TapQueues).
//
// TakeTap returns the file of the tap named name, attached with the
// flags the forwarder opens the splice's taps with (IFF_VNET_HDR when the
// Splice is an Offloader that says true), and gives up its ownership; nil
// if it holds none (taken already, or a tap an earlier daemon made). A
// tap's file not taken is closed when Release deletes the tap. A caller
// that attaches to a single-queue tap without taking its file gets EBUSY.
type TapHolder interface {
	TakeTap(name string) *os.File
}

// ErrFailOpen means the backend cannot fail open; the caller should ask for
// --fail closed on this port.
var ErrFailOpen = errors.New("this splice backend cannot fail open")

// Splice is one spliced port.
type Splice interface {
	Port() string
	Backend() string
	// VMTap is the tap the forwarder reads frames FROM the VM on, and writes frames TO the VM into.
	VMTap() string
	// NetTap is the tap that took the port's place in the bridge: the forwarder writes frames from the VM into it, and reads frames to the VM from it.
	NetTap() string
	// PriorityTap is a third tap the forwarder reads frames from the VM on:
	// the ones steered there by Options. "" if the backend steers nothing.
	PriorityTap() string
	// FailOpen reports whether traffic falls back to the direct path when
	// the forwarder dies.
	FailOpen() bool
	// Warnings lists things the operator should know (e.g. filters keyed on the port's name that cannot follow the frames).
	Warnings() []string
	// Release reverts exactly what Splice did and restores the port's bridge membership and settings.
	// Safe to call twice. If the port has vanished (VM destroyed), it removes what is left (the taps) and returns nil.
	Release() error
}

var (
	// ErrNoPort means the port does not exist. The caller should check the
	// name (or, later, use --pending to splice the port when it appears).
	ErrNoPort = errors.New("no such port")
	// ErrNotBridged means the port is on no bridge (a routed port): there is
	// no switch to splice it out of, and shaperd cannot splice it.
	ErrNotBridged = errors.New("port is on no bridge")
	// ErrSpliced means the port is already spliced: its taps (see TapNames)
	// exist. The caller should release the existing splice first, or adopt it.
	ErrSpliced = errors.New("port is already spliced")
)

// TapPrefix starts the name of every tap a splice creates.
const TapPrefix = "shq"

// TapNames returns the deterministic tap names for port: TapPrefix, then the
// 8 hex digits of FNV-32a(port), then "v" (the VM side) or "n" (the bridge
// side); 12 characters each, within the kernel's 15. A restarted daemon finds
// a port's taps again by recomputing them.
func TapNames(port string) (vm, net string) {
	base := tapBase(port)
	return base + "v", base + "n"
}

// PriorityTapName is the name of port's priority tap: as TapNames, ending in "p".
func PriorityTapName(port string) string { return tapBase(port) + "p" }

// FallbackNames are the names of the veth pair a Linux-bridge splice with
// fail open keeps for the direct path: as TapNames, ending in "f" (the end
// in the bridge) and "g" (its peer, where the kernel half hands frames
// over).
func FallbackNames(port string) (bridgeSide, peer string) {
	base := tapBase(port)
	return base + "f", base + "g"
}

// FailDefaulter is a Backend that says which fail mode a splice gets when
// the operator names none (--fail): FailOpenByDefault. A Backend that is
// not one fails open by default where it can (ErrFailOpen otherwise).
type FailDefaulter interface {
	FailOpenByDefault() bool
}

func tapBase(port string) string {
	h := fnv.New32a()
	h.Write([]byte(port))
	return fmt.Sprintf("%s%08x", TapPrefix, h.Sum32())
}

// Adopter is a Backend that can find the splices an earlier daemon left on
// the host and rebuild them from the plumbing alone, so a restarted daemon
// (after kill -9 or a reboot of the daemon, not of the host) takes them over
// without touching traffic.
type Adopter interface {
	// Found lists the ports this backend finds spliced, with the intent
	// recorded on each (see IntentRecorder); "" if none was recorded.
	Found() ([]Found, error)
	// Adopt rebuilds the Splice of port from the plumbing. Its Release then
	// reverts exactly what the original Splice did. ErrNotSpliced if port
	// has no (complete enough) splice.
	Adopt(port string) (Splice, error)
}

// OrphanRemover is an Adopter that can also remove the pieces it created
// that no splice it found names (flows by cookie, groups, taps left by a
// splice that was cut short). The daemon calls it once, after it adopted
// every splice at its start.
type OrphanRemover interface {
	// RemoveOrphans removes them and says what it removed.
	RemoveOrphans() ([]string, error)
}

// Remnant is a Splice an Adopter rebuilt only to be released: what is left
// of a splice whose switch is gone (its bridge deleted while no daemon
// ran). No forwarder can run on it; its Release removes the taps and the
// port's programs, and logs what it removed.
type Remnant interface {
	// Remnant says why the splice can only be released.
	Remnant() string
}

// Claimer is a Backend that can tell whether a link belongs to its switch
// (an interface of an Open vSwitch bridge), so that another backend
// leaves a splice whose taps it recognises, but whose net tap is on none of
// its bridges, to it (see Deferrer).
type Claimer interface {
	// Claims reports whether link is known to the backend's switch:
	// false when that switch is not running.
	Claims(link string) (bool, error)
}

// Deferrer is a Backend that leaves links that a Claimer claims alone;
// package backends gives each the backends before it.
type Deferrer interface {
	DeferTo(c ...Claimer)
}

// Found is a splice found on the host.
type Found struct {
	Port   string
	Intent string
}

// IntentRecorder is a Splice that can keep a short text (the operator's
// intent: limits and options) on the plumbing itself, for a daemon that lost
// its state file. MaxIntent bounds it.
type IntentRecorder interface {
	SetIntent(intent string) error
}

// MaxIntent is the longest intent a backend must keep, in bytes.
const MaxIntent = 200

// ErrNotSpliced means there is no splice of the port to adopt.
var ErrNotSpliced = errors.New("port is not spliced")

// Kernel is a Splice with a kernel half (package steer): a BPF program on
// the port that steers, pre-polices (the backstop) and counts, and fails
// open or closed by itself when the daemon is gone or its heartbeat stale.
type Kernel interface {
	// SetBackstop sets direction d's ceilings.
	SetBackstop(d steer.Dir, b steer.Backstop) error
	// Beat writes the heartbeat, now on CLOCK_MONOTONIC (steer.Now), and
	// arms it: the kernel half fails (open or closed) once the heartbeat
	// is older than stale.
	Beat(now uint64, stale time.Duration) error
	// KernelStats reads the kernel half's counters.
	KernelStats() (steer.Stats, error)
}

// ErrNoKernel means the splice holds no kernel half (it failed to adopt
// one, or is released).
var ErrNoKernel = steer.ErrNoKernel
