package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	daemonpkg "github.com/shaperd/shaperd/daemon"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/internal/netnstest"
)

// The monitoring chain's programs, as Debian's prometheus,
// prometheus-alertmanager and prometheus-node-exporter install them
// (scripts/deps.sh).
const (
	promBin      = "prometheus"
	promtoolBin  = "promtool"
	amBin        = "prometheus-alertmanager"
	amtoolBin    = "amtool"
	nodeExporter = "prometheus-node-exporter"
)

var (
	rulesFile = filepath.Join("deploy", "prometheus", "shaperd-rules.yml")
	rulesTest = filepath.Join("deploy", "prometheus", "shaperd-rules.test.yml")
	amFile    = filepath.Join("deploy", "alertmanager", "shaperd.yml")
)

// TestMonitoringConfigs: the shipped rule file passes promtool check rules
// and its unit tests (promtool test rules), and the shipped Alertmanager
// example passes amtool check-config.
func TestMonitoringConfigs(t *testing.T) {
	netnstest.Require(t, promtoolBin, amtoolBin)
	for _, argv := range [][]string{
		{promtoolBin, "check", "rules", rulesFile},
		{promtoolBin, "test", "rules", rulesTest},
		{amtoolBin, "check-config", amFile},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = repoRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
}

// TestMonitoringChain: the monitoring chain an operator installs, end to
// end, with no watch configured on the daemon. node_exporter runs in the
// hypervisor namespace; Prometheus (1 s scrape and evaluation intervals)
// scrapes it and shaperd and loads the shipped rule file as it is;
// Alertmanager runs the shipped example, with only the webhook's address and
// the token file's path substituted (the example's are an operator's). A
// max-rate flood from VM 1 must get its port quarantined through that chain
// within 3 s of the flood's start, and once the flood stops and the alert
// resolves, the port's probation must start. At the end, the health event
// rules fire for exactly the events shaperd counted.
func TestMonitoringChain(t *testing.T) {
	netnstest.Require(t, promBin, promtoolBin, amBin, amtoolBin, nodeExporter)
	l := newLab(t, "bridge")
	hv, vm1, ext, port1 := l.get("HV_NS"), l.get("VM1_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
	dir := t.TempDir()

	// The hypervisor's management address: Prometheus scrapes node_exporter
	// there, so the alerts' instance label is "198.18.1.1:9100", which
	// shaperd knows as one of its host's interface addresses.
	const mgmt = "198.18.1.1"
	l.sh(hv, "ip addr add "+mgmt+"/32 dev lo")
	const (
		nodeAddr    = mgmt + ":9100"
		promAddr    = "127.0.0.1:9090"
		amAddr      = "127.0.0.1:9093"
		metricsAddr = "127.0.0.1:9750"
		alertsAddr  = "127.0.0.1:9751"
	)
	tokenFile := filepath.Join(dir, "shaperd.token")
	if err := os.WriteFile(tokenFile, []byte("mon-chain-"+randName(16)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The lab's config without its watch, and with a clear_after long
	// enough that only the resolved alert can start the probation within
	// the test.
	cfg := readRepoFile(t, labConfig())
	cfg = replaceOnce(t, cfg, "watch: [\"vm-*\"]\n", "")
	cfg = replaceOnce(t, cfg, "clear_after: 4s", "clear_after: 120s")
	cfg = replaceOnce(t, cfg, `metrics_addr: ""`, fmt.Sprintf("metrics_addr: %q\nalerts_addr: %q\nalerts_token_file: %q", metricsAddr, alertsAddr, tokenFile))
	cfgPath := filepath.Join(dir, "shaperd.yaml")
	writeFile(t, cfgPath, cfg)
	d := l.startDaemon("--config", cfgPath)
	if st := d.fullStatus(); len(st.Quarantines) != 0 {
		t.Fatalf("quarantines at start: %+v", st.Quarantines)
	}

	l.service(hv, "node_exporter", nodeExporter, "--web.listen-address="+nodeAddr)

	amCfg := readRepoFile(t, filepath.Join(repoRoot(), amFile))
	amCfg = replaceOnce(t, amCfg, "http://hv1.example.net:9751/", "http://"+alertsAddr+"/")
	amCfg = replaceOnce(t, amCfg, "/etc/alertmanager/shaperd.token", tokenFile)
	amPath := filepath.Join(dir, "alertmanager.yml")
	writeFile(t, amPath, amCfg)
	// No cluster: a lone Alertmanager (an HA peer waits its position
	// times peer_timeout before it notifies; see docs/monitoring.md).
	amLog := l.service(hv, "alertmanager", amBin, "--config.file="+amPath, "--storage.path="+filepath.Join(dir, "am"),
		"--web.listen-address="+amAddr, "--cluster.listen-address=")

	promCfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
alerting:
  alertmanagers:
    - static_configs: [{targets: [%q]}]
scrape_configs:
  - job_name: node
    static_configs: [{targets: [%q]}]
  - job_name: shaperd
    static_configs: [{targets: [%q]}]
`, filepath.Join(repoRoot(), rulesFile), amAddr, nodeAddr, metricsAddr)
	promPath := filepath.Join(dir, "prometheus.yml")
	writeFile(t, promPath, promCfg)
	l.service(hv, "prometheus", promBin, "--config.file="+promPath, "--storage.tsdb.path="+filepath.Join(dir, "prom"),
		"--web.listen-address="+promAddr)

	prom := &promClient{l: l, ns: hv, addr: promAddr}
	// Ready: both targets scraped, the rules loaded, VM 1's port in
	// node_exporter's metrics under its own name with a rate, and
	// shaperd's health counters there at 0.
	waitUntil(t, 30*time.Second, "Prometheus scraping node_exporter and shaperd", func() (bool, string) {
		up, err := prom.tryQuery(`up == 1`)
		if err != nil {
			return false, err.Error()
		}
		rate := prom.query(fmt.Sprintf(`irate(node_network_receive_packets_total{device=%q}[1m])`, port1))
		health := prom.query(`shaperd_health_events_total == 0`)
		return len(up) == 2 && len(rate) == 1 && len(health) == len(daemonpkg.HealthEvents), fmt.Sprintf("up %v, %s rate %v, health %v", up, port1, rate, health)
	})
	// Every rule of the shipped file is loaded: the flood rule and one per
	// health event, the stage-3 and the tap-queue rules.
	if n, want := prom.ruleCount(), 1+len(daemonpkg.HealthEvents)+2; n != want {
		t.Fatalf("Prometheus loaded %d rules from %s; want %d", n, rulesFile, want)
	}
	if a := prom.query(`ALERTS`); len(a) != 0 {
		t.Fatalf("alerts before the flood: %v", a)
	}

	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
	time.Sleep(time.Second)
	// When the flood's first frames reach the port, to tell the flood's
	// own start-up from the chain's reaction in the log.
	base := l.counter(hv, port1, "rx_packets")
	firstFrames := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if n, at := l.counterAtQuiet(hv, port1); n > base+1000 {
				firstFrames <- at
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		close(firstFrames)
	}()
	start := time.Now()
	flood := l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--size", "250", "--pps", "0", "--duration", "0")
	st, _, ok := d.waitFor(10*time.Second, func(st api.Status) bool {
		q := quarantineOf(st, port1)
		return q != nil && q.State == "active"
	})
	took := time.Since(start)
	if !ok {
		t.Fatalf("flood not quarantined within 10 s through node_exporter, Prometheus and Alertmanager: %+v\nalerts: %v\nrate: %v\n%s rx_packets: %d since the flood's start\nflood: %s%s\nAlertmanager log:\n%s",
			st, prom.query(`ALERTS`), prom.query(`irate(node_network_receive_packets_total[1m])`), port1, l.counter(hv, port1, "rx_packets")-base, flood.out, flood.err, amLog)
	}
	t.Logf("flood from %s quarantined through the monitoring chain %v after it started", port1, took.Round(time.Millisecond))
	if at, ok := <-firstFrames; ok {
		t.Logf("the flood's first 1000 frames reached %s %v after its start", port1, at.Sub(start).Round(time.Millisecond))
	}
	prom.logAlert(start, "VMPortFlood")
	t.Logf("node_exporter's scrape takes %v s", prom.query(`scrape_duration_seconds{job="node"}`)[0].Value[1])
	if took > 3*time.Second {
		t.Errorf("quarantined %v after the flood started; want at most 3 s", took)
	}
	q := quarantineOf(st, port1)
	if q.Origin != "alert" || q.Profile != "quarantine" || q.Stage != "stage1" {
		t.Errorf("origin/profile/stage = %s/%s/%s; want alert/quarantine/stage1", q.Origin, q.Profile, q.Stage)
	}
	// While the flood lasts, the alert keeps firing: node_exporter reads the
	// port's RX counters, which count frames before the splice takes them.
	time.Sleep(2 * time.Second)
	firing := prom.query(`ALERTS{alertname="VMPortFlood",alertstate="firing"}`)
	if len(firing) != 1 || firing[0].Metric["device"] != port1 || firing[0].Metric["instance"] != nodeAddr {
		t.Errorf("firing flood alerts during the flood: %v; want one, device %s, instance %s", firing, port1, nodeAddr)
	}

	stop := time.Now()
	flood.cmd.Process.Signal(interrupt)
	flood.wait(t, 5*time.Second)
	st, _, ok = d.waitFor(15*time.Second, func(st api.Status) bool {
		q := quarantineOf(st, port1)
		return q != nil && q.Stage == "probation"
	})
	if !ok {
		t.Fatalf("no probation within 15 s of the flood's end: %+v\nalerts: %v\nAlertmanager log:\n%s", quarantineOf(st, port1), prom.query(`ALERTS`), amLog)
	}
	t.Logf("probation started %v after the flood stopped", time.Since(stop).Round(time.Millisecond))
	// The resolved alert started it (clear_after is 120 s, so the ladder
	// could not have yet).
	m := l.scrape(metricsAddr)
	if v := m.value(t, "shaperd_alerts_total", "outcome", "probation"); v != 1 {
		t.Errorf(`shaperd_alerts_total{outcome="probation"} = %v; want 1 (the resolved alert)`, v)
	}
	if v := m.value(t, "shaperd_alerts_total", "outcome", "quarantined"); v != 1 {
		t.Errorf(`shaperd_alerts_total{outcome="quarantined"} = %v; want 1`, v)
	}
	if a := prom.query(`ALERTS{alertname="VMPortFlood"}`); len(a) != 0 {
		t.Errorf("flood alert still there after the probation started: %v", a)
	}
	// The event rules fire for exactly the health events shaperd counted.
	// (guard_off is expected: the quarantine profile asks for the
	// anti-spoofing guard, and nothing has told the lab's daemon VM 1's
	// addresses, so the alert's quarantine went ahead without it.)
	counted := l.scrape(metricsAddr)
	rules := map[string]string{
		"watchdog_missed": "ShaperdWatchdogMissed", "link_watch_lost": "ShaperdLinkWatchLost", "guard_off": "ShaperdGuardOff",
		"limits_unrecovered": "ShaperdLimitsUnrecovered", "forwarder_panic": "ShaperdForwarderPanic",
	}
	waitUntil(t, 5*time.Second, "health alerts firing for the events counted", func() (bool, string) {
		firing := map[string]bool{}
		for _, a := range prom.query(`ALERTS{alertname=~"Shaperd.*",alertstate="firing"}`) {
			firing[a.Metric["alertname"]+"/"+a.Metric["event"]] = true
		}
		want := map[string]bool{}
		for ev, alert := range rules {
			if counted.value(t, "shaperd_health_events_total", "event", ev) > 0 {
				want[alert+"/"+ev] = true
			}
		}
		return fmt.Sprint(firing) == fmt.Sprint(want), fmt.Sprintf("firing %v, want %v", firing, want)
	})
	t.Logf("health alerts firing: %v", prom.query(`ALERTS{alertname=~"Shaperd.*",alertstate="firing"}`))
	t.Logf("pending: %v", prom.query(`ALERTS{alertstate="pending"}`))
}

// readRepoFile returns a file's contents.
func readRepoFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replaceOnce replaces old, which must occur in s exactly once, by new.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("%q occurs %d times, want once", old, n)
	}
	return strings.Replace(s, old, new, 1)
}

// waitUntil polls cond every 200 ms until it holds, failing the test after
// limit with cond's last description.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, limit, desc)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// service starts a program from PATH in ns, stopped with SIGTERM at
// cleanup. It returns the program's output, which is also logged at
// cleanup if the test failed.
func (l *lab) service(ns, name, prog string, args ...string) *syncBuffer {
	l.t.Helper()
	path, err := exec.LookPath(prog)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := inNS(ns, append([]string{path}, args...)...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	l.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			l.t.Errorf("%s did not stop within 10 s of SIGTERM", name)
		}
		if l.t.Failed() {
			l.t.Logf("%s log:\n%s", name, out.String())
		}
	})
	return out
}

// promClient queries a Prometheus server in a lab namespace.
type promClient struct {
	l    *lab
	ns   string
	addr string
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// get fetches path from the server's API and decodes its JSON into v.
func (p *promClient) get(path string, v any) error {
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(context.Context, string, string) (net.Conn, error) {
			return dialIn(p.ns, p.addr)
		}},
	}
	resp, err := c.Get("http://" + p.addr + path)
	if err != nil {
		return fmt.Errorf("Prometheus %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("Prometheus %s: %s\n%s", path, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("Prometheus %s: %w\n%s", path, err, body)
	}
	return nil
}

// tryQuery evaluates an instant query and returns its vector.
func (p *promClient) tryQuery(q string) ([]promSample, error) {
	var r struct {
		Data struct {
			Result []promSample `json:"result"`
		} `json:"data"`
	}
	err := p.get("/api/v1/query?query="+url.QueryEscape(q), &r)
	return r.Data.Result, err
}

// query is tryQuery, failing the test on an error.
func (p *promClient) query(q string) []promSample {
	p.l.t.Helper()
	r, err := p.tryQuery(q)
	if err != nil {
		p.l.t.Fatal(err)
	}
	return r
}

// ruleCount is the number of rules the server has loaded.
func (p *promClient) ruleCount() int {
	p.l.t.Helper()
	var r struct {
		Data struct {
			Groups []struct {
				Rules []json.RawMessage `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/rules", &r); err != nil {
		p.l.t.Fatal(err)
	}
	n := 0
	for _, g := range r.Data.Groups {
		n += len(g.Rules)
	}
	return n
}

// logAlert logs when Prometheus first saw alert (its activeAt: the
// evaluation that made it pending, or firing with no for:) relative to
// start, its state and its value.
func (p *promClient) logAlert(start time.Time, alert string) {
	p.l.t.Helper()
	var r struct {
		Data struct {
			Alerts []struct {
				Labels   map[string]string `json:"labels"`
				State    string            `json:"state"`
				ActiveAt time.Time         `json:"activeAt"`
				Value    string            `json:"value"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/alerts", &r); err != nil {
		p.l.t.Fatal(err)
	}
	for _, a := range r.Data.Alerts {
		if a.Labels["alertname"] == alert {
			p.l.t.Logf("Prometheus: %s{device=%q} %s, active %v after the flood started, value %s", alert, a.Labels["device"], a.State, a.ActiveAt.Sub(start).Round(time.Millisecond), a.Value)
		}
	}
}

// counterAtQuiet reads dev's rx_packets in ns over netlink and the time it
// was read, from any goroutine: 0 on an error.
func (l *lab) counterAtQuiet(ns, dev string) (uint64, time.Time) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return 0, time.Now()
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return 0, time.Now()
	}
	defer nh.Close()
	link, err := nh.LinkByName(dev)
	at := time.Now()
	if err != nil || link.Attrs().Statistics == nil {
		return 0, at
	}
	return link.Attrs().Statistics.RxPackets, at
}
