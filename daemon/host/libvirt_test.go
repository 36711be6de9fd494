package host

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What virsh prints, byte for byte, without -q: the tables of domiflist
// come from tools/vsh-table.c (a header row, a line of dashes as wide as
// the columns plus three each, then one row per interface, "-" for what is
// unset); domifaddr prints its own header (" %-10s %-20s %-8s     %s" and
// 79 dashes) and rows of " %-10s %-17s    %-12s %s/%d", with "-" for the
// name and MAC of an interface's further addresses, an empty MAC when it
// has none and "N/A" when it has no address (tools/virsh-domain-monitor.c).
// With -q virsh leaves out both headers; the fake below does too.
//
// web1 has two interfaces on the bridge ports vnet0 (a bridge interface)
// and vnet1 (a libvirt network's), and one that is not running (no port);
// "web 2" (libvirt forbids only a newline in a name) has vnet2. DHCP leases
// exist only for libvirt networks, so the leases list vnet1 alone; the ARP
// source reports addresses with a /0 prefix.
const (
	virshList = "web1\nweb 2\n\n"

	virshIfListWeb1 = ` Interface   Type      Source    Model    MAC
-------------------------------------------------------------
 vnet0       bridge    br0       virtio   52:54:00:6b:3c:58
 vnet1       network   default   virtio   52:54:00:0c:11:9a
 -           bridge    br1       e1000    52:54:00:5e:00:07
`
	virshIfListWeb2 = ` Interface   Type     Source   Model   MAC
----------------------------------------------------------
 vnet2       bridge   br0      e1000   52:54:00:aa:bb:cc
`
	virshAddrHeader = ` Name       MAC address          Protocol     Address
-------------------------------------------------------------------------------
`
	virshLeaseWeb1 = virshAddrHeader +
		` vnet1      52:54:00:0c:11:9a    ipv4         198.18.1.20/24
 -          -                    ipv6         2001:2::20/64
`
	virshARPWeb1 = virshAddrHeader +
		` vnet0      52:54:00:6b:3c:58    ipv4         198.18.0.10/0
 vnet1      52:54:00:0c:11:9a    ipv4         198.18.1.21/0
`
	virshLeaseWeb2 = virshAddrHeader
	virshARPWeb2   = virshAddrHeader +
		` vnet2      52:54:00:aa:bb:cc    ipv4         198.18.2.30/0
`
)

// fakeVirshScript answers from the files beside it: "list", "domiflist
// DOM", "domifaddr DOM SRC". A file of that name with ".sh" appended is run
// instead (an error, a hang). Every call's arguments go to "calls", one
// call a line.
const fakeVirshScript = `#!/bin/sh
dir=$(dirname "$0")
printf '%s\n' "$*" >>"$dir/calls"
quiet=
if [ "$1" = -q ]; then quiet=1; shift; fi
case "$1" in
list) f="$dir/list" ;;
domiflist) f="$dir/domiflist $2" ;;
domifaddr) f="$dir/domifaddr $2 $4" ;;
*) echo "error: unknown command: '$1'" >&2; exit 1 ;;
esac
if [ -e "$f.sh" ]; then exec sh "$f.sh" "$dir"; fi
if [ ! -e "$f" ]; then echo "error: failed to get domain '$2'" >&2; exit 1; fi
if [ -n "$quiet" ] && [ "$1" != list ]; then tail -n +3 "$f"; else cat "$f"; fi
`

// fakeVirsh puts a fake virsh first on PATH, answering with files (name →
// content; a name ending in ".sh" is a script run for that call), and
// returns its directory.
func fakeVirsh(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "virsh"), []byte(fakeVirshScript), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return dir
}

// virshHost is the host above: two domains, their interfaces and addresses.
func virshHost() map[string]string {
	return map[string]string{
		"list":                  virshList,
		"domiflist web1":        virshIfListWeb1,
		"domiflist web 2":       virshIfListWeb2,
		"domifaddr web1 lease":  virshLeaseWeb1,
		"domifaddr web1 arp":    virshARPWeb1,
		"domifaddr web 2 lease": virshLeaseWeb2,
		"domifaddr web 2 arp":   virshARPWeb2,
	}
}

// virshCalls returns the fake's calls, one string each.
func virshCalls(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "calls"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' })
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	mac, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// fromLibvirt finds the domain holding the port, takes that interface's MAC
// (not another interface's of the same domain) and its addresses: the
// leases first, ARP when the leases have none for that MAC.
func TestFromLibvirt(t *testing.T) {
	for _, tc := range []struct {
		port  string
		mac   string
		ips   []netip.Prefix
		calls []string
	}{
		{"vnet1", "52:54:00:0c:11:9a", prefixes("198.18.1.20/32", "2001:2::20/128"), []string{
			"-q list --name", "-q domiflist web1", "-q domifaddr web1 --source lease"}},
		// The leases name web1's other interface only: ARP, and of
		// ARP's two entries the one with vnet0's MAC.
		{"vnet0", "52:54:00:6b:3c:58", prefixes("198.18.0.10/32"), []string{
			"-q list --name", "-q domiflist web1", "-q domifaddr web1 --source lease", "-q domifaddr web1 --source arp"}},
		// The second domain, whose name has a space.
		{"vnet2", "52:54:00:aa:bb:cc", prefixes("198.18.2.30/32"), []string{
			"-q list --name", "-q domiflist web1", "-q domiflist web 2", "-q domifaddr web 2 --source lease", "-q domifaddr web 2 --source arp"}},
	} {
		t.Run(tc.port, func(t *testing.T) {
			dir := fakeVirsh(t, virshHost())
			cfg, err := fromLibvirt(context.Background(), tc.port)
			if err != nil {
				t.Fatal(err)
			}
			if want := []net.HardwareAddr{mustMAC(t, tc.mac)}; !reflect.DeepEqual(cfg.MACs, want) {
				t.Errorf("MACs %v, want %v", cfg.MACs, want)
			}
			if !reflect.DeepEqual(cfg.IPs, tc.ips) {
				t.Errorf("IPs %v, want %v", cfg.IPs, tc.ips)
			}
			if calls := virshCalls(t, dir); !reflect.DeepEqual(calls, tc.calls) {
				t.Errorf("virsh calls\n%q\nwant\n%q", calls, tc.calls)
			}
		})
	}
	t.Run("no domain has the port", func(t *testing.T) {
		fakeVirsh(t, virshHost())
		cfg, err := fromLibvirt(context.Background(), "vnet9")
		if err == nil || err.Error() != "no domain has an interface vnet9" || cfg.MACs != nil || cfg.IPs != nil {
			t.Fatalf("%+v %v", cfg, err)
		}
	})
}

// virsh failing says which call failed and what virsh said; a domain that
// cannot be read does not hide the others; a MAC found is kept when its
// addresses cannot be listed.
func TestFromLibvirtErrors(t *testing.T) {
	// What virsh says when libvirtd is not running.
	const noDaemon = `echo "error: failed to connect to the hypervisor" >&2
echo "error: Failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file or directory" >&2
exit 1
`
	t.Run("list", func(t *testing.T) {
		files := virshHost()
		files["list.sh"] = noDaemon
		fakeVirsh(t, files)
		cfg, err := fromLibvirt(context.Background(), "vnet1")
		want := "virsh list --name: exit status 1: error: failed to connect to the hypervisor; " +
			"error: Failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file or directory"
		if err == nil || err.Error() != want || cfg.MACs != nil {
			t.Fatalf("%+v\n%v\nwant\n%s", cfg, err, want)
		}
	})
	t.Run("domiflist of another domain", func(t *testing.T) {
		files := virshHost()
		delete(files, "domiflist web1") // the fake says "failed to get domain 'web1'", as virsh does
		fakeVirsh(t, files)
		cfg, err := fromLibvirt(context.Background(), "vnet2")
		if err != nil || len(cfg.MACs) != 1 || cfg.MACs[0].String() != "52:54:00:aa:bb:cc" {
			t.Fatalf("%+v %v", cfg, err)
		}
		_, err = fromLibvirt(context.Background(), "vnet9")
		want := "no domain has an interface vnet9 (virsh domiflist web1: exit status 1: error: failed to get domain 'web1')"
		if err == nil || err.Error() != want {
			t.Fatalf("%v\nwant\n%s", err, want)
		}
	})
	t.Run("domifaddr", func(t *testing.T) {
		files := virshHost()
		files["domifaddr web1 lease.sh"] = noDaemon
		files["domifaddr web1 arp.sh"] = noDaemon
		fakeVirsh(t, files)
		cfg, err := fromLibvirt(context.Background(), "vnet1")
		if err == nil || !strings.HasPrefix(err.Error(), `domain "web1" has vnet1 with MAC 52:54:00:0c:11:9a, but its addresses are unknown: virsh domifaddr web1 --source lease: exit status 1: error: failed to connect`) ||
			!strings.Contains(err.Error(), "; virsh domifaddr web1 --source arp: exit status 1: error: failed to connect") {
			t.Fatalf("%v", err)
		}
		if len(cfg.MACs) != 1 || cfg.MACs[0].String() != "52:54:00:0c:11:9a" || cfg.IPs != nil {
			t.Fatalf("the MAC found is kept: %+v", cfg)
		}
		// learnGuard uses that MAC and says why libvirt gave no address.
		got, from := learnGuard("vnet1", false)
		if len(got.MACs) != 1 || got.MACs[0].String() != "52:54:00:0c:11:9a" || got.IPs != nil ||
			len(from) != 2 || from[0] != "libvirt ("+err.Error()+")" {
			t.Fatalf("learnGuard: %+v %q", got, from)
		}
	})
}

// A virsh that does not answer (a hung libvirtd) is killed at the deadline,
// with whatever it started: the lookup returns about then, with an error
// that says so, and keeps a MAC it already found.
func TestFromLibvirtTimeout(t *testing.T) {
	// A shell that waits on a child: the child holds virsh's output
	// pipe, so killing the shell alone would leave the read waiting for
	// the child's 30 s.
	const hang = `sleep 30 & echo $! >"$1/sleep.pid"; wait
`
	const timeout = time.Second
	for _, tc := range []struct {
		name, file, call string
		mac              string
	}{
		{"list", "list.sh", "virsh list --name", ""},
		{"domifaddr", "domifaddr web1 lease.sh", "virsh domifaddr web1 --source lease", "52:54:00:0c:11:9a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := virshHost()
			files[tc.file] = hang
			dir := fakeVirsh(t, files)
			start := time.Now() // before the deadline is set: took >= timeout
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			cfg, err := fromLibvirt(ctx, "vnet1")
			took := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), tc.call+": no answer in time") {
				t.Fatalf("error %v, want %q: no answer in time, wrapping context.DeadlineExceeded", err, tc.call)
			}
			if took < timeout || took > timeout+time.Second {
				t.Fatalf("returned after %v; the deadline was %v", took, timeout)
			}
			var macs []string
			for _, mac := range cfg.MACs {
				macs = append(macs, mac.String())
			}
			if strings.Join(macs, ",") != tc.mac || cfg.IPs != nil {
				t.Fatalf("found %+v, want MAC %q and no address", cfg, tc.mac)
			}
			// The hung child was killed too.
			b, err := os.ReadFile(filepath.Join(dir, "sleep.pid"))
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(2 * time.Second); alive(pid); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("virsh's child %d still runs", pid)
				}
			}
		})
	}
}

// alive says whether process pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) STATE ...; comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// The parsers read virsh's tables with or without the header (-q), find
// the port by its name, and take an address only for its MAC.
func TestVirshParsers(t *testing.T) {
	quiet := func(s string) string { return strings.SplitN(s, "\n", 3)[2] }
	for _, out := range []string{virshIfListWeb1, quiet(virshIfListWeb1)} {
		if mac := macOfInterface(out, "vnet1"); mac.String() != "52:54:00:0c:11:9a" {
			t.Errorf("vnet1: %v", mac)
		}
		if mac := macOfInterface(out, "vnet0"); mac.String() != "52:54:00:6b:3c:58" {
			t.Errorf("vnet0: %v", mac)
		}
		for _, port := range []string{"vnet2", "Interface", "br0", "network"} {
			if mac := macOfInterface(out, port); mac != nil {
				t.Errorf("%s: %v", port, mac)
			}
		}
	}
	for _, out := range []string{virshLeaseWeb1, quiet(virshLeaseWeb1)} {
		if got, want := addrsOf(out, mustMAC(t, "52:54:00:0c:11:9a")), prefixes("198.18.1.20/32", "2001:2::20/128"); !reflect.DeepEqual(got, want) {
			t.Errorf("vnet1's leases: %v, want %v", got, want)
		}
		if got := addrsOf(out, mustMAC(t, "52:54:00:6b:3c:58")); got != nil {
			t.Errorf("vnet0 has no lease: %v", got)
		}
	}
	// An interface without a MAC (its MAC column empty): neither its
	// address nor its further ones ("-") belong to the interface above
	// it; one without an address prints N/A.
	noMAC := virshAddrHeader +
		` vnet4      52:54:00:00:00:04    ipv4         198.18.4.40/24
 vnet5                           ipv4         198.18.5.50/24
 -          -                    ipv4         198.18.5.51/24
 vnet6      52:54:00:00:00:06    N/A          N/A
`
	if got, want := addrsOf(noMAC, mustMAC(t, "52:54:00:00:00:04")), prefixes("198.18.4.40/32"); !reflect.DeepEqual(got, want) {
		t.Errorf("vnet4: %v, want %v", got, want)
	}
	if got := addrsOf(noMAC, mustMAC(t, "52:54:00:00:00:06")); got != nil {
		t.Errorf("vnet6 has no address: %v", got)
	}
}
