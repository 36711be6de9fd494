package main

import (
	"encoding/xml"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/daemon"
)

func TestCPUBusy(t *testing.T) {
	stat := "cpu  94335 7 77075 595991 526 3 13063 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n"
	got, err := cpuBusy(stat)
	if want := uint64(94335 + 7 + 77075 + 3 + 13063 + 2); err != nil || got != want {
		t.Fatalf("cpuBusy = %d, %v; want %d (user+nice+system+irq+softirq+steal)", got, err, want)
	}
	if _, err := cpuBusy("intr 1\n"); err == nil {
		t.Fatal("cpuBusy without a cpu line: no error")
	}
}

func TestProcTimes(t *testing.T) {
	// comm with a space and a parenthesis; utime 1234, stime 567.
	stat := "4242 (shaperd (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0 100 1000 50 18446744073709551615"
	u, s, err := procTimes(stat)
	if err != nil || u != 1234 || s != 567 {
		t.Fatalf("procTimes = %d, %d, %v; want 1234, 567", u, s, err)
	}
	if _, _, err := procTimes("4242 (x) S 1 2"); err == nil {
		t.Fatal("short stat: no error")
	}
}

func TestNetDevAndSNMP(t *testing.T) {
	dev := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 2736      38    0    0    0     0          0         0 3220032484 5190240    0    0    0     0       0          0
`
	rx, tx, err := netDev(dev, "eth0")
	if err != nil || rx != 38 || tx != 5190240 {
		t.Fatalf("netDev = %d, %d, %v; want 38, 5190240", rx, tx, err)
	}
	if _, _, err := netDev(dev, "eth1"); err == nil {
		t.Fatal("netDev of a missing device: no error")
	}
	s := snmp(`Ip: Forwarding DefaultTTL
Ip: 2 64
Icmp: InMsgs InErrors
Icmp: 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 3 0 0 0 1 120 118 7 0 0 0
Udp: InDatagrams NoPorts
Udp: 5 0
`)
	if tcp := s["Tcp"]; tcp["InSegs"] != 120 || tcp["OutSegs"] != 118 || tcp["RetransSegs"] != 7 {
		t.Fatalf("snmp Tcp = %v", tcp)
	}
	if s["Udp"]["InDatagrams"] != 5 {
		t.Fatalf("snmp Udp = %v", s["Udp"])
	}
}

func TestParseBench(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/shaperd/shaperd/forward
cpu: AMD EPYC
BenchmarkStep/unlimited-2         	  600000	       80.0 ns/op	  12500000 pkts/s	       0 B/op	       0 allocs/op
BenchmarkStep/policed-2           	  500000	       120.0 ns/op	   8333333 pkts/s	       0 B/op	       0 allocs/op
BenchmarkStep/unlimited-2         	  600000	       90.0 ns/op	  11111111 pkts/s	       0 B/op	       0 allocs/op
BenchmarkStep/unlimited-2         	  600000	       85.0 ns/op	  11764705 pkts/s	       0 B/op	       0 allocs/op
PASS
ok  	github.com/shaperd/shaperd/forward	3.1s
pkg: github.com/shaperd/shaperd/classify
BenchmarkClassify/udp4-2  	 1000000	        48.5 ns/op	 1690.00 MB/s	  20618556 pkts/s	      16 B/op	       1 allocs/op
`
	ms, err := parseBench(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("got %d benchmarks, want 3: %+v", len(ms), ms)
	}
	un, po, cl := ms[0], ms[1], ms[2]
	if un.Name != "BenchmarkStep/unlimited" || un.Runs != 3 || un.NsPerFrame != 85 {
		t.Errorf("unlimited: %+v, want the median 85 ns of 3 runs", un)
	}
	if po.Baseline != "BenchmarkStep/unlimited" || po.VsBaseline != round(120.0/85, 2) {
		t.Errorf("policed: %+v, want a ratio against unlimited", po)
	}
	if cl.Pkg != "github.com/shaperd/shaperd/classify" || cl.AllocsFrame != 1 || cl.BytesFrame != 16 || cl.PktsPerSec != 20618556 {
		t.Errorf("classify: %+v", cl)
	}
	if _, err := parseBench("PASS\n"); err == nil {
		t.Error("no results: no error")
	}
}

func TestParseEnvAndLabErrors(t *testing.T) {
	env := parseEnv("LAB=bb1234\nLAB_MODE=bridge\nHV_NS=bb1234-hv\nexport OVS_RUNDIR='/tmp/x y'\nlab.sh: noise\n")
	if env["HV_NS"] != "bb1234-hv" || env["OVS_RUNDIR"] != "/tmp/x y" || len(env) != 4 {
		t.Fatalf("parseEnv = %v", env)
	}
	// lab.sh's own refusal of a mode it does not have (it refuses before
	// it checks anything else, so this runs anywhere and changes nothing).
	b, err := exec.Command("../../scripts/netns/lab.sh", "up", "nosuchmode").CombinedOutput()
	if err == nil {
		t.Fatal("lab.sh up nosuchmode succeeded")
	}
	out := "lab.sh: ping not installed\n" + string(b)
	if got := lastLabError(out); got != "unknown mode 'nosuchmode'; use bridge or ovs" {
		t.Fatalf("lastLabError(%q) = %q", out, got)
	}
	if !notImplemented.MatchString(out) {
		t.Fatal("lab.sh's refusal of a mode is not recognised as 'not available'")
	}
	if notImplemented.MatchString("lab.sh: vm1 cannot ping ext (198.18.0.100)") {
		t.Fatal("a broken lab is taken for a mode lab.sh does not have")
	}
}

func TestParseSmokePreset(t *testing.T) {
	o, err := parse([]string{"-smoke", "-window", "3s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.sizes) != 1 || o.sizes[0] != 250 || len(o.loads) != 1 || o.loads[0] != 0 || o.window != 3*time.Second || o.warmup != time.Second {
		t.Fatalf("smoke preset: %+v (an explicit -window must win)", o)
	}
	for _, bad := range [][]string{{"-sizes", "10"}, {"-loads", "fast"}, {"-systems", "nope"}, {"-limit", "0"}} {
		if _, err := parse(bad); err == nil {
			t.Errorf("parse(%v): no error", bad)
		}
	}
}

func TestFill(t *testing.T) {
	t0 := time.Unix(0, 0)
	a := sample{at: t0, busy: 1000, user: 10, sys: 20,
		vm:  nsCounters{tx: 1000, tcpOut: 5, tcpRetrans: 1},
		ext: nsCounters{rx: 500, tcpIn: 3}}
	b := sample{at: t0.Add(2 * time.Second), busy: 1400, user: 110, sys: 220,
		vm:  nsCounters{tx: 1000 + 20000 + 40 + 2, tcpOut: 45, tcpRetrans: 3},
		ext: nsCounters{rx: 500 + 10100 + 40, tcpIn: 43}}
	r := result{LimitPPS: 5000}
	r.fill(a, b, 1)
	if r.OfferedPPS != 10000 || r.DeliveredPPS != 5050 || r.ExpectedPPS != 5000 || r.ErrorPct != 1 {
		t.Fatalf("fill: %+v", r)
	}
	// 400 ticks = 4 s of CPU over 20000 frames = 200 µs per frame.
	if r.MachineNsPerFrame != 200000 || r.ProcUserNsFrame != 50000 || r.ProcSysNsFrame != 100000 {
		t.Fatalf("fill CPU: %+v", r)
	}
}

// A run where some systems could not run renders every row, with the
// reason in place of the figures, and a well-formed chart.
func TestReport(t *testing.T) {
	o, err := parse([]string{"-smoke"})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{opt: o, machine: machine{Date: time.Unix(1700000000, 0).UTC(), CPU: "Test CPU", Cores: 2, Kernel: "6.18"}}
	ok := func(key string, limit int64, delivered, ns float64) result {
		r := result{System: key, FrameBytes: 250, Status: "ok", LimitPPS: limit, OfferedPPS: 300000, DeliveredPPS: delivered,
			MachineNsPerFrame: ns, ProbeSent: 40, ProbeCompleted: 40, ProbeP50ms: 0.2, ProbeP99ms: 1.5}
		r.ExpectedPPS = 300000
		if limit > 0 {
			r.ExpectedPPS = float64(limit)
		}
		r.ErrorPct = round(100*(delivered/r.ExpectedPPS-1), 2)
		return r
	}
	sh := ok("shaperd-police", 5000, 4990, 3000)
	sh.ProcUserNsFrame, sh.ProcSysNsFrame = 800, 1000
	h.results = []result{
		ok("bridge", 0, 299000, 4000),
		{System: "ovs", FrameBytes: 250, Status: "unavailable", Reason: "lab ovs mode not available: mode 'ovs' is not implemented yet"},
		ok("nft-limit", 5000, 5000, 800),
		{System: "tc-tbf", FrameBytes: 250, Status: "failed", Reason: "tc qdisc add: RTNETLINK answers: File exists | really"},
		sh,
		{System: "shaperd-shape", FrameBytes: 250, Status: "unavailable", Reason: "shape mode does not exist yet"},
	}
	h.micros = []micro{{Pkg: "github.com/shaperd/shaperd/forward", Name: "BenchmarkStep/policed", NsPerFrame: 100, Runs: 1}}
	h.computeRatios()
	md := h.markdown("latest.svg")
	for _, want := range []string{
		"Test CPU, 2 logical CPUs, Linux 6.18",
		"| no policy, OVS userspace | not run: lab ovs mode not available",
		"| tc ifb + tbf (bytes) | **FAILED**: tc qdisc add: RTNETLINK answers: File exists \\| really",
		"| shaperd shape, 200 ms delay | not run: shape mode does not exist yet",
		"| shaperd police, Linux bridge | 300000 | 4990 | 5000 | -0.2% | 3000 | 0.75 | 800 + 1000 |",
		"3.75× the cheapest peer nft-limit",
		"**Behind the best peer:** CPU (shaperd-police at 250 B, max): 3.75× nft-limit",
		"| forward Step/policed | 100.0 | 0 | 0 |  | 5.6% |",
		"## Failures",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	// -render draws the same report from the saved JSON.
	h.opt.out = t.TempDir()
	paths, err := h.write()
	if err != nil {
		t.Fatal(err)
	}
	again := &harness{opt: options{out: t.TempDir(), render: paths[2]}}
	if err := again.load(paths[2]); err != nil {
		t.Fatal(err)
	}
	if md2 := again.markdown("latest.svg"); md2 != md {
		t.Errorf("-render drew a different report:\n%s", diffLines(md, md2))
	}
	d := xml.NewDecoder(strings.NewReader(string(h.chart())))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
	}
}

func TestDiffLines(t *testing.T) {
	got := diffLines("a\nb\nc", "a\nc\nd")
	if got != "- b\n+ d\n" {
		t.Fatalf("diffLines = %q", got)
	}
}

// The bridge's own carrier is not compared; its ports' carrier is.
func TestBridgeCarrier(t *testing.T) {
	before := "2: br0: <NO-CARRIER,BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue\n" +
		"3: vm-1-00c9@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master br0\n"
	after := "2: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue\n" +
		"3: vm-1-00c9@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 master br0\n"
	b, a := stripBridgeCarrier(before, "br0"), stripBridgeCarrier(after, "br0")
	if got := strings.SplitN(b, "\n", 2)[0]; got != "2: br0: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue" {
		t.Errorf("bridge line before = %q", got)
	}
	if strings.SplitN(b, "\n", 2)[0] != strings.SplitN(a, "\n", 2)[0] {
		t.Errorf("the bridge's carrier still differs:\n%s\n%s", b, a)
	}
	if b == a {
		t.Error("a port that lost its carrier went unnoticed")
	}
}

// The smoke run holds shaperd's bridge rows to the limit within 3% and a
// lossless bypass probe; OVS rows are reported, not gated.
func TestSmokeGate(t *testing.T) {
	ok := result{System: "shaperd-police", Lab: "bridge", Status: "ok", LimitPPS: 5000, OfferedPPS: 300000, ExpectedPPS: 5000, DeliveredPPS: 4900, ErrorPct: -2, ProbeSent: 40, ProbeCompleted: 40}
	for _, c := range []struct {
		name string
		r    func(r result) result
		want string
	}{
		{"within 3%", func(r result) result { return r }, ""},
		{"3.5% short", func(r result) result { r.ErrorPct = -3.5; return r }, "want within 3%"},
		{"3.5% over", func(r result) result { r.ErrorPct = 3.5; return r }, "want within 3%"},
		{"probe lost one", func(r result) result { r.ProbeCompleted, r.ProbeFailed = 39, 1; return r }, "lost 1 of 40"},
		{"ovs, 5% short", func(r result) result { r.Lab, r.ErrorPct = "ovs", -5; return r }, ""},
		{"limit above the load, 60% short of it", func(r result) result {
			r.System, r.LimitPPS, r.ExpectedPPS, r.DeliveredPPS, r.ErrorPct = "shaperd-loose", loosePPS, 300000, 120000, -60
			return r
		}, ""},
		{"limit above the load, probe lost one", func(r result) result {
			r.System, r.LimitPPS, r.ExpectedPPS, r.DeliveredPPS, r.ErrorPct = "shaperd-loose", loosePPS, 300000, 120000, -60
			r.ProbeCompleted, r.ProbeFailed = 39, 1
			return r
		}, "lost 1 of 40"},
	} {
		err := smokeGate(c.r(ok))
		if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: smokeGate = %v, want %q", c.name, err, c.want)
		}
	}
}

// TestLoosePPSAccepted: the loose rows' limit is one the daemon accepts (a
// limit over daemon.MaxPPS is refused, and the row would measure nothing).
func TestLoosePPSAccepted(t *testing.T) {
	if loosePPS != daemon.MaxPPS {
		t.Errorf("loosePPS = %d, daemon.MaxPPS = %d: the loose rows must ask for the highest limit the daemon takes", loosePPS, daemon.MaxPPS)
	}
}
