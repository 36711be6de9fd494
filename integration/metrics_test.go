package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netns"

	"github.com/shaperd/shaperd/api"
)

// metricsAddr is where the test daemons serve metrics, on the loopback of
// the lab's hypervisor namespace (not the host's).
const metricsAddr = "127.0.0.1:19750"

// TestMetricsMatchStatus: during a flood the per-class counters of
// /metrics move, the aggregate bucket runs low and the drops carry their
// reason; once traffic stops, every per-class counter equals the one in
// status --json; after release the port's series are gone.
func TestMetricsMatchStatus(t *testing.T) {
	l := newLab(t, "bridge")
	vm1, ext, port := l.get("VM1_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
	d := l.startDaemon("--metrics-addr", metricsAddr)

	m := l.scrape(metricsAddr)
	if got := m.value(t, "shaperd_quarantines", "state", "active"); got != 0 {
		t.Errorf("before any quarantine: shaperd_quarantines{state=active} = %v", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "shaperd_build_info"} {
		if m[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
	d.must("quarantine", port, "--pps", "5000")
	flood := l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "20000", "--duration", "6s", "--json")
	time.Sleep(1500 * time.Millisecond)

	udp := func(m scraped, metric, key, val string) float64 {
		return m.value(t, metric, "port", port, "direction", "from_vm", "class", "udp", key, val)
	}
	a, ta := l.scrapeAt(metricsAddr)
	time.Sleep(2 * time.Second)
	b, tb := l.scrapeAt(metricsAddr)
	for _, c := range []struct{ metric, key, val string }{
		{"shaperd_frames_total", "verdict", "passed"},
		{"shaperd_frames_total", "verdict", "dropped"},
		{"shaperd_bytes_total", "verdict", "passed"},
		{"shaperd_drops_total", "reason", "aggregate_budget"},
	} {
		va, vb := udp(a, c.metric, c.key, c.val), udp(b, c.metric, c.key, c.val)
		t.Logf("during the flood, %v apart: %s{class=udp,%s=%s} %.0f -> %.0f", tb.Sub(ta).Round(time.Millisecond), c.metric, c.key, c.val, va, vb)
		if vb <= va {
			t.Errorf("%s{class=udp,%s=%s} did not move during the flood: %.0f -> %.0f", c.metric, c.key, c.val, va, vb)
		}
	}
	// Passed frames move at the limit.
	if r := (udp(b, "shaperd_frames_total", "verdict", "passed") - udp(a, "shaperd_frames_total", "verdict", "passed")) / tb.Sub(ta).Seconds(); !within(r, 5000, 0.03) {
		t.Errorf("passed udp frames rose at %.0f/s, want 5000 within 3%%", r)
	}
	// The aggregate bucket runs near empty under a flood at 4x its rate;
	// the least of a few samples is robust to a pause in the flood.
	aggFill := func(m scraped) float64 {
		return m.value(t, "shaperd_bucket_fill_ratio", "port", port, "direction", "from_vm", "budget", "aggregate", "dimension", "packets")
	}
	fills := []float64{aggFill(a), aggFill(b)}
	for range 3 {
		fills = append(fills, aggFill(l.scrape(metricsAddr)))
	}
	t.Logf("aggregate packet bucket during the flood: %.3f full", fills)
	if f := slices.Min(fills); f < 0 || f > 0.5 || slices.Max(fills) > 1 {
		t.Errorf("aggregate packet bucket %.3f full during a flood at 4x its rate, want near 0 (and never outside 0..1)", fills)
	}
	if got := b.value(t, "shaperd_limit_packets_per_second", "port", port, "direction", "from_vm", "budget", "aggregate"); got != 5000 {
		t.Errorf("shaperd_limit_packets_per_second = %v, want 5000", got)
	}
	if got := b.value(t, "shaperd_quarantine_info", "port", port, "backend", "tc", "state", "active", "fail", "closed"); got != 1 {
		t.Errorf("shaperd_quarantine_info = %v", got)
	}
	if got := b.value(t, "shaperd_quarantines", "state", "active"); got != 1 {
		t.Errorf("shaperd_quarantines{state=active} = %v, want 1", got)
	}

	if err := flood.wait(t, 20*time.Second); err != nil {
		t.Errorf("flood: %v\n%s", err, flood.err)
	}
	// Quiet now, bar the odd ARP or neighbour solicitation: take status,
	// metrics, status, until both statuses agree; then metrics must too.
	time.Sleep(500 * time.Millisecond)
	var diff string
	for try := 0; ; try++ {
		s1 := countersOf(d.status(port))
		m := l.scrape(metricsAddr)
		s2 := countersOf(d.status(port))
		if !reflect.DeepEqual(s1, s2) {
			if try == 20 {
				t.Fatal("traffic never stopped: status counters keep moving")
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		got := m.countersOf(port)
		if diff = diffCounters(s1, got); diff != "" {
			t.Errorf("after the flood, /metrics differs from status --json:\n%s", diff)
		}
		t.Logf("after the flood: %d per-class counters equal in /metrics and status --json (udp from_vm passed %d, dropped %d)",
			len(s1), s1["from_vm/udp/frames/passed"], s1["from_vm/udp/frames/dropped"])
		if want := 2 * int(classify.NumClasses) * (4 + int(forward.NumReasons)); len(s1) != want {
			t.Errorf("status has %d per-class counters, want %d: 2 directions x %d classes x (4 + %d reasons)",
				len(s1), want, classify.NumClasses, forward.NumReasons)
		}
		break
	}

	d.must("release", port)
	m = l.scrape(metricsAddr)
	if got := m.value(t, "shaperd_quarantines", "state", "active"); got != 0 {
		t.Errorf("after release: shaperd_quarantines{state=active} = %v", got)
	}
	if n := len(m.countersOf(port)); n != 0 {
		t.Errorf("after release: %d series of %s left", n, port)
	}
}

// scraped is one scrape, by metric family name.
type scraped map[string][]sample

type sample struct {
	labels map[string]string
	value  float64
}

// scrape fetches http://addr/metrics from inside the hypervisor namespace.
func (l *lab) scrape(addr string) scraped {
	l.t.Helper()
	m, _ := l.scrapeAt(addr)
	return m
}

// scrapeAt scrapes addr and returns when: the middle of the request,
// retried while it takes longer than 10 ms (as counterAt), so that rates
// between two scrapes are exact to the millisecond.
func (l *lab) scrapeAt(addr string) (scraped, time.Time) {
	l.t.Helper()
	for try := 0; ; try++ {
		before := time.Now()
		m := l.scrapeOnce(addr)
		after := time.Now()
		if after.Sub(before) <= 10*time.Millisecond || try == 20 {
			return m, before.Add(after.Sub(before) / 2)
		}
	}
}

func (l *lab) scrapeOnce(addr string) scraped {
	l.t.Helper()
	c, err := dialIn(l.get("HV_NS"), addr)
	if err != nil {
		l.t.Fatalf("metrics at %s in %s: %v", addr, l.get("HV_NS"), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	req.Close = true
	if err := req.Write(c); err != nil {
		l.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		l.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		l.t.Fatalf("GET /metrics: %s %v\n%s", resp.Status, err, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		l.t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	out := scraped{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, lp := range m.GetLabel() {
				s.labels[lp.GetName()] = lp.GetValue()
			}
			switch {
			case m.Counter != nil:
				s.value = m.GetCounter().GetValue()
			case m.Gauge != nil:
				s.value = m.GetGauge().GetValue()
			case m.Untyped != nil:
				s.value = m.GetUntyped().GetValue()
			default:
				continue
			}
			out[name] = append(out[name], s)
		}
	}
	return out
}

// dialIn connects to addr over TCP from inside the named network
// namespace: a goroutine locked to its thread enters the namespace, makes
// the socket (which stays in that namespace), and returns to the original
// namespace before it unlocks. If it cannot return, the thread stays locked
// and dies with the goroutine. (Leaving a thread behind is not an option:
// if it were the main thread, the process would show up as living in the
// lab, and the lab's teardown would kill it.)
func dialIn(nsName, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(nsName)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// value returns the one sample of name whose labels include the given
// pairs; it fails the test if there is none or more than one.
func (s scraped) value(t *testing.T, name string, kv ...string) float64 {
	t.Helper()
	var found []float64
	for _, smp := range s[name] {
		ok := true
		for i := 0; i < len(kv); i += 2 {
			ok = ok && smp.labels[kv[i]] == kv[i+1]
		}
		if ok {
			found = append(found, smp.value)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d samples, want 1", name, kv, len(found))
	}
	return found[0]
}

// countersOf returns port's per-class counters, keyed as countersOf(status)
// keys them.
func (s scraped) countersOf(port string) map[string]uint64 {
	out := map[string]uint64{}
	for _, fam := range []struct{ name, what, label string }{
		{"shaperd_frames_total", "frames", "verdict"},
		{"shaperd_bytes_total", "bytes", "verdict"},
		{"shaperd_drops_total", "drops", "reason"},
	} {
		for _, smp := range s[fam.name] {
			if smp.labels["port"] != port {
				continue
			}
			out[fmt.Sprintf("%s/%s/%s/%s", smp.labels["direction"], smp.labels["class"], fam.what, smp.labels[fam.label])] = uint64(smp.value)
		}
	}
	return out
}

// countersOf returns a quarantine's per-class counters from status, keyed
// "direction/class/frames|bytes/passed|dropped" and
// "direction/class/drops/reason".
func countersOf(q api.Quarantine) map[string]uint64 {
	out := map[string]uint64{}
	for dir, d := range map[string]api.Direction{"from_vm": q.Directions.FromVM, "to_vm": q.Directions.ToVM} {
		for class, c := range d.Classes {
			k := dir + "/" + class + "/"
			out[k+"frames/passed"] = c.PassedPackets
			out[k+"frames/dropped"] = c.DroppedPackets
			out[k+"bytes/passed"] = c.PassedBytes
			out[k+"bytes/dropped"] = c.DroppedBytes
			for r, v := range c.Drops {
				out[k+"drops/"+r] = v
			}
		}
	}
	return out
}

func diffCounters(want, got map[string]uint64) string {
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		w, wok := want[k]
		g, gok := got[k]
		if w != g || wok != gok {
			fmt.Fprintf(&b, "  %s: status %d (%v), metrics %d (%v)\n", k, w, wok, g, gok)
		}
	}
	return b.String()
}
