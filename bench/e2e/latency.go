package main

// Latency through each system, and the coalescing curve.
//
// Every cell pings the external host from VM 1 during its window (ICMP
// through the system, both ways, queued with the flood). The coalescing
// rows run shaperd with a limit above the load and each --coalesce value
// of coalesceSteps, at the fixed loads; the curve compares their own CPU
// per frame and their ping p99 with the same cell's shaperd without
// coalescing and the bare pair's. After the cells, the no-load rows ping
// through the bridge, the bare pair and shaperd with no flood at all.

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// pingInterval spaces the pings of a cell's window: 50 a second, a
// negligible share of any load the bench offers.
const pingInterval = 20 * time.Millisecond

// pingResult is what probe ping reported.
type pingResult struct {
	Sent      int     `json:"sent,omitempty"`
	Completed int     `json:"completed,omitempty"`
	P50ms     float64 `json:"p50_ms,omitempty"`
	P99ms     float64 `json:"p99_ms,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// startPing pings the external host from VM 1 for the window.
func (h *harness) startPing(l *lab) (*proc, error) {
	return h.ping(l, max(int(h.opt.window/pingInterval), 1), pingInterval)
}

func (h *harness) ping(l *lab, count int, every time.Duration) (*proc, error) {
	return l.start(l.get("VM1_NS"), nil, "probe", "ping", "--dst", l.get("EXT_IP"), "--count", strconv.Itoa(count),
		"--interval", every.String(), "--timeout", "1s", "--json")
}

// finishPing waits (briefly) for the ping to end and reads its summary.
func (h *harness) finishPing(ctx context.Context, p *proc) pingResult {
	if !p.wait(ctx, 2*time.Second) {
		p.stop(syscall.SIGINT, 2*time.Second)
	}
	var r pingResult
	if err := json.Unmarshal(lastJSON(p.out.String()), &r); err != nil {
		return pingResult{Error: fmt.Sprintf("probe ping printed no result (%v): %s", err, lastLines(p.err.String(), 2))}
	}
	return r
}

// coalesceSteps are the --coalesce values of the curve; "0" is off.
var coalesceSteps = []string{"0", "100us", "200us", "500us", "1ms"}

func coalesceSystems() []system {
	var out []system
	for _, v := range coalesceSteps {
		out = append(out, system{key: "shaperd-coalesce-" + v, title: "shaperd, limit above the load, --coalesce " + v, lab: "bridge",
			setup: shaperdCoalesce(v), check: needShaperd})
	}
	return out
}

// shaperdCoalesce is shaperdLoose with run --coalesce v, at the fixed loads
// and 250-byte frames only (the curve's cells).
func shaperdCoalesce(v string) func(context.Context, cellEnv) (*installed, error) {
	return func(ctx context.Context, c cellEnv) (*installed, error) {
		if c.load == 0 || c.size != 250 {
			return nil, unavailable("the coalescing curve is drawn with 250-byte frames at fixed loads")
		}
		c.limit = loosePPS
		c.runArgs = []string{"--coalesce", v}
		return shaperdQuarantine(ctx, c)
	}
}

// coalesceCurve is one line per curve cell: CPU per frame and ping p99
// added, against coalescing off and against the bare pair.
func (h *harness) coalesceCurve() []string {
	var lines []string
	for _, size := range h.opt.sizes {
		for _, load := range h.opt.loads {
			off := h.find("shaperd-coalesce-0", size, load)
			if off == nil || !off.ok() {
				continue
			}
			bare := h.find("bare-pair", size, load)
			for _, v := range coalesceSteps {
				r := h.find("shaperd-coalesce-"+v, size, load)
				if r == nil || !r.ok() {
					continue
				}
				own := r.ProcUserNsFrame + r.ProcSysNsFrame
				line := fmt.Sprintf("%d B, %s pps, --coalesce %s: own CPU %.0f ns/frame (%.2f× off", size, loadName(load), v, own,
					own/(off.ProcUserNsFrame+off.ProcSysNsFrame))
				if bare != nil && bare.ok() && bare.ProcUserNsFrame+bare.ProcSysNsFrame > 0 {
					line += fmt.Sprintf(", %.2f× the bare pair", own/(bare.ProcUserNsFrame+bare.ProcSysNsFrame))
				}
				line += fmt.Sprintf("); ping p50/p99 %.2f/%.2f ms, p99 %+.2f ms against off", r.Ping.P50ms, r.Ping.P99ms, r.Ping.P99ms-off.Ping.P99ms)
				if bare != nil && bare.ok() && bare.Ping.Completed > 0 {
					line += fmt.Sprintf(", %+.2f ms against the bare pair", r.Ping.P99ms-bare.Ping.P99ms)
				}
				lines = append(lines, line)
			}
		}
	}
	return lines
}

// noLoadResult is the ping through one system with no flood.
type noLoadResult struct {
	System string     `json:"system"`
	Ping   pingResult `json:"ping"`
	Reason string     `json:"reason,omitempty"`
}

// noLoadSystems are pinged with no flood, in this order; the first is the
// reference.
var noLoadSystems = []string{"bridge", "bare-pair", "shaperd-loose"}

// measureNoLoad pings through each selected no-load system with no flood:
// the latency the splice adds at rest.
func (h *harness) measureNoLoad(ctx context.Context) {
	l := h.labs["bridge"]
	if l == nil {
		return
	}
	sys := map[string]system{}
	for _, s := range h.selected() {
		sys[s.key] = s
	}
	for _, key := range noLoadSystems {
		s, ok := sys[key]
		if !ok || ctx.Err() != nil {
			continue
		}
		r := noLoadResult{System: key}
		inst, err := s.setup(ctx, cellEnv{h: h, l: l, size: 250, load: 1, limit: h.opt.limit})
		if err != nil {
			r.Reason = err.Error()
		} else {
			_ = sleepCtx(ctx, 500*time.Millisecond)
			if p, err := h.ping(l, 500, 10*time.Millisecond); err != nil {
				r.Reason = err.Error()
			} else {
				_ = p.wait(ctx, 10*time.Second)
				r.Ping = h.finishPing(ctx, p)
			}
			if inst.teardown != nil {
				if err := inst.teardown(); err != nil {
					r.Reason = "teardown: " + err.Error()
				}
			}
		}
		logf("no load: %-19s ping %d/%d p50 %.3f ms p99 %.3f ms %s", key, r.Ping.Completed, r.Ping.Sent, r.Ping.P50ms, r.Ping.P99ms, r.Reason)
		h.noLoad = append(h.noLoad, r)
	}
}

// noLoadLines compares each no-load row with the bridge's.
func (h *harness) noLoadLines() []string {
	var ref *noLoadResult
	var lines []string
	for i := range h.noLoad {
		r := &h.noLoad[i]
		if r.Reason != "" || r.Ping.Completed == 0 {
			lines = append(lines, fmt.Sprintf("%s: not measured: %s", r.System, firstLine(r.Reason+r.Ping.Error, "no reply")))
			continue
		}
		line := fmt.Sprintf("%s: %d/%d answered, p50 %.3f ms, p99 %.3f ms", r.System, r.Ping.Completed, r.Ping.Sent, r.Ping.P50ms, r.Ping.P99ms)
		if ref == nil {
			ref = r
		} else {
			line += fmt.Sprintf(" (%+.0f µs p50, %+.0f µs p99 against %s)", 1000*(r.Ping.P50ms-ref.Ping.P50ms), 1000*(r.Ping.P99ms-ref.Ping.P99ms), ref.System)
		}
		lines = append(lines, line)
	}
	return lines
}

// tcpResult is one iperf3 run from VM 1 to the external host with no
// flood: one TCP stream for tcpSeconds.
type tcpResult struct {
	System        string  `json:"system"`
	BitsPerSecond float64 `json:"bits_per_second,omitempty"`
	Retransmits   int     `json:"retransmits"`
	Reordered     int     `json:"reordered"` // the sender's TCPSACKReorder + TCPTSReorder + TCPRenoReorder
	Reason        string  `json:"reason,omitempty"`
}

const tcpSeconds = 10

// tcpSystems are measured with iperf3, in this order; the first is the
// reference.
var tcpSystems = []string{"bridge", "bare-pair", "shaperd-loose"}

// measureTCP runs iperf3 (one stream, tcpSeconds, VM 1 to the external
// host, no flood, the VMs' offloads on) through each selected TCP system:
// bulk TCP through a loose quarantine against the same lab's bridge.
func (h *harness) measureTCP(ctx context.Context) {
	l := h.labs["bridge"]
	if l == nil {
		return
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		logf("TCP: iperf3 is not installed: skipped")
		return
	}
	sys := map[string]system{}
	for _, s := range h.selected() {
		sys[s.key] = s
	}
	// A VM's virtio interface has checksum offload and TSO; lab.sh turns
	// them off (OVS's userspace datapath needs that, a Linux bridge does
	// not). On for this measurement, off again after.
	devs := [][2]string{{l.get("VM1_NS"), "eth0"}, {l.get("EXT_NS"), "eth0"}, {l.get("HV_NS"), l.get("VM1_PORT")}, {l.get("HV_NS"), l.get("EXT_PORT")}}
	for _, d := range devs {
		if _, err := l.sh(d[0], "ethtool -K "+d[1]+" tx on sg on tso on gso on"); err != nil {
			logf("TCP: %v", err)
		}
	}
	defer func() {
		for _, d := range devs {
			l.sh(d[0], "ethtool -K "+d[1]+" tx off")
		}
	}()
	for _, key := range tcpSystems {
		s, ok := sys[key]
		if !ok || ctx.Err() != nil {
			continue
		}
		r := tcpResult{System: key}
		inst, err := s.setup(ctx, cellEnv{h: h, l: l, size: 1500, load: 1, limit: h.opt.limit})
		if err != nil {
			r.Reason = err.Error()
		} else {
			r = h.iperf(ctx, l, key)
			if inst.teardown != nil {
				if err := inst.teardown(); err != nil {
					r.Reason = "teardown: " + err.Error()
				}
			}
		}
		logf("TCP: %-19s %.2f Gbit/s, %d retransmitted, %d reordered %s", key, r.BitsPerSecond/1e9, r.Retransmits, r.Reordered, r.Reason)
		h.tcp = append(h.tcp, r)
	}
}

// iperf runs one iperf3 client against a one-off server.
func (h *harness) iperf(ctx context.Context, l *lab, key string) tcpResult {
	r := tcpResult{System: key}
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", l.get("EXT_NS"), "iperf3", "--server", "--one-off", "--bind", l.get("EXT_IP"))
	if err := srv.Start(); err != nil {
		r.Reason = err.Error()
		return r
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	_ = sleepCtx(ctx, 300*time.Millisecond)
	reorder := func() int {
		out, err := l.sh(l.get("VM1_NS"), "cat /proc/net/netstat")
		if err != nil {
			return 0
		}
		m := snmp(out)["TcpExt"]
		return int(m["TCPSACKReorder"] + m["TCPTSReorder"] + m["TCPRenoReorder"])
	}
	before := reorder()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", l.get("VM1_NS"), "iperf3", "--client", l.get("EXT_IP"),
		"--time", strconv.Itoa(tcpSeconds), "--json").Output()
	if err != nil {
		r.Reason = fmt.Sprintf("iperf3: %v: %s", err, lastLines(string(out), 2))
		return r
	}
	r.Reordered = reorder() - before
	var res struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		r.Reason = "iperf3 output: " + err.Error()
		return r
	}
	r.BitsPerSecond, r.Retransmits = res.End.SumReceived.BitsPerSecond, res.End.SumSent.Retransmits
	return r
}

// tcpLines compares each TCP row with the bridge's.
func (h *harness) tcpLines() []string {
	var lines []string
	var ref *tcpResult
	for i := range h.tcp {
		r := &h.tcp[i]
		if r.Reason != "" || r.BitsPerSecond == 0 {
			lines = append(lines, fmt.Sprintf("%s: not measured: %s", r.System, firstLine(r.Reason, "no result")))
			continue
		}
		line := fmt.Sprintf("%s: %.2f Gbit/s, %d retransmitted, %d reordered", r.System, r.BitsPerSecond/1e9, r.Retransmits, r.Reordered)
		if ref == nil {
			ref = r
		} else {
			line += fmt.Sprintf(" (%.2f× %s)", r.BitsPerSecond/ref.BitsPerSecond, ref.System)
		}
		lines = append(lines, line)
	}
	return lines
}
