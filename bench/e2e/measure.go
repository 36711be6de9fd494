package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// result is one system at one frame size and offered load.
type result struct {
	System     string `json:"system"`
	Lab        string `json:"lab"`
	FrameBytes int    `json:"frame_bytes"`
	Load       int64  `json:"load_pps"` // offered target; 0 = the generator's maximum
	Status     string `json:"status"`   // ok, unavailable or failed
	Reason     string `json:"reason,omitempty"`
	Config     string `json:"config,omitempty"`

	Seconds      float64 `json:"seconds,omitempty"`       // measured window
	OfferedPPS   float64 `json:"offered_pps,omitempty"`   // VM 1's eth0 transmit, flood frames only
	DeliveredPPS float64 `json:"delivered_pps,omitempty"` // the external host's eth0 receive, flood frames only
	LimitPPS     int64   `json:"limit_pps,omitempty"`     // configured (byte systems: limit × frame bytes per second)
	ExpectedPPS  float64 `json:"expected_pps,omitempty"`  // min(limit, offered), or offered with no policy
	ErrorPct     float64 `json:"error_pct"`               // delivered vs expected, in %

	MachineNsPerFrame float64 `json:"machine_cpu_ns_per_frame,omitempty"` // /proc/stat busy time per offered frame
	BaselineRatio     float64 `json:"machine_cpu_vs_no_policy,omitempty"` // ÷ the same lab's no-policy row, same cell
	ProcUserNsFrame   float64 `json:"proc_user_ns_per_frame,omitempty"`   // shaperd's own process
	ProcSysNsFrame    float64 `json:"proc_sys_ns_per_frame,omitempty"`

	ProbeSent      int     `json:"probe_sent"`
	ProbeCompleted int     `json:"probe_completed"`
	ProbeFailed    int     `json:"probe_failed"`
	ProbeP50ms     float64 `json:"probe_p50_ms,omitempty"`
	ProbeP99ms     float64 `json:"probe_p99_ms,omitempty"`
	ProbeError     string  `json:"probe_error,omitempty"`
	Retransmits    uint64  `json:"tcp_retransmits"` // VM 1 + external host, during the probe

	Ping pingResult `json:"ping"` // ICMP from VM 1 through the system during the window (latency.go)

	FloodPPS    float64 `json:"flood_reported_pps,omitempty"`
	FloodErrors int64   `json:"flood_send_errors,omitempty"`
	FloodBehind int64   `json:"flood_behind,omitempty"`
}

func (r *result) ok() bool { return r.Status == "ok" }

// sample is every counter a cell reads at the start and end of its window.
type sample struct {
	at        time.Time
	vm, ext   nsCounters
	busy      uint64 // machine, ticks
	user, sys uint64 // the system's own process, ticks
}

func (h *harness) sample(l *lab, pid int) (sample, error) {
	s := sample{at: time.Now()}
	var err error
	if s.vm, err = readNS(h.probeServer[l.mode].pid()); err != nil {
		return s, fmt.Errorf("VM 1 counters: %w", err)
	}
	if s.ext, err = readNS(h.sink[l.mode].pid()); err != nil {
		return s, fmt.Errorf("external host counters: %w", err)
	}
	st, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	if s.busy, err = cpuBusy(string(st)); err != nil {
		return s, err
	}
	if pid != 0 {
		ps, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return s, fmt.Errorf("process %d: %w", pid, err)
		}
		if s.user, s.sys, err = procTimes(string(ps)); err != nil {
			return s, err
		}
	}
	return s, nil
}

// fill computes the window's figures from two samples.
func (r *result) fill(a, b sample, pid int) {
	dt := b.at.Sub(a.at).Seconds()
	r.Seconds = round(dt, 3)
	// The probe's TCP segments cross the same interfaces: subtract them so
	// the rates count flood frames only.
	offered := float64(int64(b.vm.tx-a.vm.tx) - int64(b.vm.tcpOut-a.vm.tcpOut) - int64(b.vm.tcpRetrans-a.vm.tcpRetrans))
	delivered := float64(int64(b.ext.rx-a.ext.rx) - int64(b.ext.tcpIn-a.ext.tcpIn))
	offered, delivered = max(offered, 0), max(delivered, 0)
	r.OfferedPPS = round(offered/dt, 0)
	r.DeliveredPPS = round(delivered/dt, 0)
	r.ExpectedPPS = r.OfferedPPS
	if r.LimitPPS > 0 {
		r.ExpectedPPS = math.Min(float64(r.LimitPPS), r.OfferedPPS)
	}
	if r.ExpectedPPS > 0 {
		r.ErrorPct = round(100*(r.DeliveredPPS/r.ExpectedPPS-1), 2)
	}
	if offered > 0 {
		r.MachineNsPerFrame = round(float64(b.busy-a.busy)*tickNs/offered, 0)
		if pid != 0 {
			r.ProcUserNsFrame = round(float64(b.user-a.user)*tickNs/offered, 0)
			r.ProcSysNsFrame = round(float64(b.sys-a.sys)*tickNs/offered, 0)
		}
	}
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// runCell measures one system at one frame size and load: setup, flood,
// warm-up, window (with the bypass probe running), teardown, and a check that
// the teardown left the hypervisor namespace as it found it.
func (h *harness) runCell(ctx context.Context, sys system, l *lab, size int, load int64) (r result) {
	r = result{System: sys.key, Lab: sys.lab, FrameBytes: size, Load: load, Status: "ok"}
	fail := func(err error) result {
		r.Status, r.Reason = "failed", err.Error()
		if isUnavailable(err) {
			r.Status = "unavailable"
		}
		return r
	}
	if sys.policed {
		r.LimitPPS = h.opt.limit
	}
	before, err := snapshot(l)
	if err != nil {
		return fail(fmt.Errorf("snapshot before setup: %w", err))
	}
	inst, err := sys.setup(ctx, cellEnv{h: h, l: l, size: size, load: load, limit: h.opt.limit})
	if err != nil {
		if after, serr := snapshot(l); serr == nil && after != before {
			err = fmt.Errorf("%w; and the failed setup left the hypervisor namespace changed:\n%s", err, diffLines(before, after))
		}
		return fail(err)
	}
	r.Config = inst.config
	defer func() {
		var errs []error
		if inst.teardown != nil {
			if err := inst.teardown(); err != nil {
				errs = append(errs, fmt.Errorf("teardown: %w", err))
			}
		}
		if after, err := snapshot(l); err != nil {
			errs = append(errs, fmt.Errorf("snapshot after teardown: %w", err))
		} else if after != before {
			errs = append(errs, fmt.Errorf("teardown left the hypervisor namespace changed:\n%s", diffLines(before, after)))
		}
		if len(errs) > 0 {
			if r.ok() {
				r.Status, r.Reason = "failed", ""
			}
			r.Reason = strings.TrimPrefix(r.Reason+"; "+errors.Join(errs...).Error(), "; ")
		}
	}()

	floodArgs := []string{"--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", strconv.Itoa(size),
		"--pps", strconv.FormatInt(load, 10), "--duration", "0", "--json"}
	flood, err := l.start(l.get("VM1_NS"), nil, "flood", floodArgs...)
	if err != nil {
		return fail(err)
	}
	defer flood.stop(syscall.SIGINT, 5*time.Second)
	if err := sleepCtx(ctx, h.opt.warmup); err != nil {
		return fail(err)
	}
	if flood.exited() {
		return fail(fmt.Errorf("flood exited during the warm-up: %v: %s", flood.waitErr, lastLines(flood.err.String(), 3)))
	}

	a, err := h.sample(l, inst.pid)
	if err != nil {
		return fail(err)
	}
	count := max(int(h.opt.window/h.opt.probeInterval), 1)
	probe, err := l.start(l.get("EXT_NS"), nil, "probe", "client", "--connect", l.get("VM1_IP")+":22",
		"--count", strconv.Itoa(count), "--interval", h.opt.probeInterval.String(),
		"--timeout", h.opt.probeTimeout.String(), "--connect-timeout", h.opt.probeTimeout.String(), "--json")
	if err != nil {
		return fail(err)
	}
	defer probe.stop(syscall.SIGKILL, time.Second)
	// The window starts once the probe can be interrupted with a result:
	// on a loaded machine its start can take seconds, and an interrupt
	// before it handles one kills it with nothing printed.
	if err := waitReady(ctx, map[*proc]string{probe: "probe: client running"}, 10*time.Second); err != nil {
		return fail(err)
	}
	ping, err := h.startPing(l)
	if err != nil {
		return fail(err)
	}
	defer ping.stop(syscall.SIGKILL, time.Second)
	if err := sleepCtx(ctx, h.opt.window); err != nil {
		return fail(err)
	}
	b, err := h.sample(l, inst.pid)
	if err != nil {
		return fail(err)
	}
	if inst.alive != nil {
		if err := inst.alive(); err != nil {
			return fail(err)
		}
	}
	r.fill(a, b, inst.pid)

	// The probe is on its last message by now, unless timeouts put it
	// behind schedule: then its unsent messages count as lost. The flood
	// keeps running until the probe is done, so no message escapes it.
	if !probe.wait(ctx, h.opt.probeTimeout) {
		probe.stop(syscall.SIGINT, h.opt.probeTimeout+2*time.Second)
	}
	if c, err := h.sample(l, 0); err == nil {
		r.Retransmits = (c.vm.tcpRetrans - a.vm.tcpRetrans) + (c.ext.tcpRetrans - a.ext.tcpRetrans)
	}
	r.Ping = h.finishPing(ctx, ping)
	flood.stop(syscall.SIGINT, 5*time.Second)
	var pr struct {
		Sent, Completed, Failed int
		P50                     float64 `json:"p50_ms"`
		P99                     float64 `json:"p99_ms"`
		Error                   string  `json:"error"`
	}
	if err := json.Unmarshal(lastJSON(probe.out.String()), &pr); err != nil {
		return fail(fmt.Errorf("probe client printed no result (%v; it exited: %v, %d bytes on stdout): %s", err, probe.waitErr, len(probe.out.String()), lastLines(probe.err.String(), 3)))
	}
	// A message never sent (connect failed, interrupted) is lost too.
	r.ProbeSent, r.ProbeCompleted, r.ProbeFailed = count, pr.Completed, count-pr.Completed
	r.ProbeP50ms, r.ProbeP99ms, r.ProbeError = pr.P50, pr.P99, pr.Error

	var fl struct {
		PPS    float64 `json:"pps"`
		Errors int64   `json:"errors"`
		Behind int64   `json:"behind"`
	}
	if err := json.Unmarshal(lastJSON(flood.out.String()), &fl); err == nil {
		r.FloodPPS, r.FloodErrors, r.FloodBehind = round(fl.PPS, 0), fl.Errors, fl.Behind
	}
	switch {
	case r.OfferedPPS == 0:
		return fail(fmt.Errorf("nothing offered: the flood sent no frames (%s)", lastLines(flood.err.String(), 3)))
	case r.DeliveredPPS == 0:
		return fail(errors.New("nothing delivered to the external host"))
	}
	return r
}

func lastJSON(s string) []byte {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); strings.HasPrefix(l, "{") {
			return []byte(l)
		}
	}
	return nil
}

// diffLines shows the lines only in a (-) and only in b (+).
func diffLines(a, b string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := count(a), count(b)
	var out strings.Builder
	for _, l := range strings.Split(a, "\n") {
		if ma[l] > mb[l] {
			out.WriteString("- " + l + "\n")
			ma[l]--
		}
	}
	ma = count(a)
	for _, l := range strings.Split(b, "\n") {
		if mb[l] > ma[l] {
			out.WriteString("+ " + l + "\n")
			mb[l]--
		}
	}
	return out.String()
}
