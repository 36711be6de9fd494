package alerts_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/alerts"
	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/internal/fuzzcorpus"
	"github.com/shaperd/shaperd/profile"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

const fuzzToken = "0123456789abcdef-fuzz"

// The host the fuzz target's Manager sees: every port's link kind, and
// whether a bridge holds it. vm-3 is quarantined by hand before each
// notification.
var fuzzPorts = map[string]struct {
	kind    string
	bridged bool
}{
	"vm-1": {"veth", true}, "vm-2": {"veth", true}, "vm-3": {"veth", true},
	"vm-x1":   {"veth", true}, // excluded
	"tap0":    {"tuntap", true},
	"eth0":    {"device", true}, // an uplink
	"bond0":   {"bond", true},
	"vm-lone": {"veth", false}, // on no bridge
}

// Bits of the fuzz target's mode argument: the safety settings, and
// whether the request carries the right token.
const (
	modeWatch    = 1 << iota // watch: [vm-*]
	modeDryRun               // dry_run: true
	modeNoInst               // alerts_allow_no_instance: true
	modeBadToken             // a wrong bearer token
	modeMaxAuto0             // max_auto bits: 0..3
	modeMaxAuto1
)

// FuzzWebhook posts arbitrary notifications to the webhook, whose target
// is a real daemon.Manager on a fake host and backend, under safety
// settings the mode argument picks (watch, dry_run, max_auto, an alert
// without instance allowed or not) with exclude [vm-x*]. Beyond not
// panicking:
//   - the webhook accepts (200) exactly the bodies Parse accepts, with
//     the right token, and answers one outcome per alert, as many
//     "quarantined" as there are new quarantines;
//   - nothing is quarantined by a refused request (401, 400, 413);
//   - every port quarantined was named, by its interface, port or device
//     label, in a firing alert whose instance label names this host (or
//     that has none, when allowed), and passed the safety settings: not
//     excluded, matching watch if set, else a veth or tap on a bridge;
//     none with dry_run; at most max_auto of them.
//
// The seed corpus is in testdata/fuzz/FuzzWebhook (see TestFuzzCorpus):
// Alertmanager's documented notification and the README's cases.
func FuzzWebhook(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte, mode int64) {
		back := fakesplice.New()
		for p, d := range fuzzPorts {
			back.Ports[p] = d.bridged
		}
		host := &hosttest.Host{
			Exists: func(p string) bool { _, ok := fuzzPorts[p]; return ok },
			Kind: func(p string) (string, error) {
				if d, ok := fuzzPorts[p]; ok {
					return d.kind, nil
				}
				return "", fmt.Errorf("%s: no such link", p)
			},
		}
		m := daemon.NewWithOptions(nil, daemon.Options{Host: host}, back)
		defer m.Close()
		w := daemon.WatchConfig{Exclude: []string{"vm-x*"}, MaxAuto: int(mode>>4) & 3, DryRun: mode&modeDryRun != 0}
		if mode&modeWatch != 0 {
			w.Watch = []string{"vm-*"}
		}
		if err := m.Configure(profile.Set{profile.Quarantine: profile.Default()}, w); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Quarantine("vm-3", api.LimitRequest{}, false); err != nil {
			t.Fatal(err)
		}
		h := &alerts.Handler{Token: fuzzToken, Instance: "hv1", Aliases: []string{"hv1.example.net", "192.0.2.1"},
			AllowNoInstance: mode&modeNoInst != 0, Target: m}

		r := httptest.NewRequest(http.MethodPost, alerts.Path, strings.NewReader(string(body)))
		tok := fuzzToken
		if mode&modeBadToken != 0 {
			tok += " "
		}
		r.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)

		st, err := m.Status("")
		if err != nil {
			t.Fatal(err)
		}
		var quarantined []string
		for _, q := range st.Quarantines {
			if q.Port != "vm-3" {
				quarantined = append(quarantined, q.Port)
			}
			if q.Port == "vm-3" && q.Origin != api.OriginManual {
				t.Fatalf("vm-3 changed origin: %+v", q)
			}
		}
		msg, perr := alerts.Parse(body)
		switch {
		case mode&modeBadToken != 0:
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("a wrong token: %d, want 401", rec.Code)
			}
		case perr != nil:
			if rec.Code != http.StatusBadRequest && rec.Code != http.StatusRequestEntityTooLarge {
				t.Fatalf("Parse refused the body (%v), the webhook answered %d", perr, rec.Code)
			}
		default:
			if rec.Code != http.StatusOK {
				t.Fatalf("Parse accepted the body, the webhook answered %d: %s", rec.Code, rec.Body)
			}
			var res alerts.Result
			if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || len(res.Alerts) != len(msg.Alerts) {
				t.Fatalf("%d alerts, answer %s (%v)", len(msg.Alerts), rec.Body, err)
			}
			n := 0
			for _, o := range res.Alerts {
				if o.Outcome == "quarantined" {
					n++
				}
			}
			if n != len(quarantined) {
				t.Fatalf("the answer says %d quarantined, the status %v: %s", n, quarantined, rec.Body)
			}
		}
		if rec.Code != http.StatusOK && len(quarantined) > 0 {
			t.Fatalf("refused (%d), yet %v quarantined", rec.Code, quarantined)
		}
		if len(quarantined) == 0 {
			return
		}
		if w.DryRun {
			t.Fatalf("dry run, yet %v quarantined", quarantined)
		}
		if len(quarantined) > w.MaxAuto {
			t.Fatalf("max_auto %d, yet %v quarantined", w.MaxAuto, quarantined)
		}
		for _, p := range quarantined {
			d := fuzzPorts[p]
			switch {
			case strings.HasPrefix(p, "vm-x"):
				t.Fatalf("%s is excluded, yet quarantined", p)
			case w.Watch != nil && !strings.HasPrefix(p, "vm-"):
				t.Fatalf("%s is not watched, yet quarantined", p)
			case w.Watch == nil && (d.kind != "veth" && d.kind != "tuntap" || !d.bridged):
				t.Fatalf("%s (%+v) is no VM port, yet quarantined", p, d)
			}
			if !slices.ContainsFunc(msg.Alerts, func(a alerts.Alert) bool { return firesFor(a, p, h) }) {
				t.Fatalf("%s quarantined, named by no firing alert for this host", p)
			}
			if q, _ := m.Status(p); len(q.Quarantines) != 1 || q.Quarantines[0].Origin != api.OriginAlert {
				t.Fatalf("%s: %+v, want origin alert", p, q.Quarantines)
			}
		}
	})
}

// firesFor says whether a is a firing alert for port p on h's host: its
// first port label names p, and its instance label names the host, or it
// has none and that is allowed.
func firesFor(a alerts.Alert, p string, h *alerts.Handler) bool {
	if a.Status != "firing" {
		return false
	}
	port := ""
	for _, l := range []string{"interface", "port", "device"} {
		if port = a.Labels[l]; port != "" {
			break
		}
	}
	if port != p {
		return false
	}
	inst, ok := a.Labels["instance"]
	if !ok {
		return h.AllowNoInstance
	}
	return slices.ContainsFunc(append([]string{h.Instance}, h.Aliases...), func(n string) bool { return alerts.SameHost(inst, n) })
}

// fuzzAlert is one alert of a seed notification.
func fuzzAlert(status string, labels ...string) string {
	var l []string
	for i := 0; i+1 < len(labels); i += 2 {
		l = append(l, fmt.Sprintf("%q: %q", labels[i], labels[i+1]))
	}
	return `{"status": "` + status + `", "labels": {"alertname": "VMFlood", ` + strings.Join(l, ", ") + `}, "annotations": {}, ` +
		`"startsAt": "2026-11-23T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": "a1"}`
}

func fuzzNotification(alerts ...string) string {
	return `{"version": "4", "groupKey": "{}:{alertname=\"VMFlood\"}", "truncatedAlerts": 0, "status": "firing", "receiver": "shaperd",
 "groupLabels": {"alertname": "VMFlood"}, "commonLabels": {"alertname": "VMFlood"}, "commonAnnotations": {},
 "externalURL": "http://alertmanager:9093", "alerts": [` + strings.Join(alerts, ",\n") + `]}`
}

// corpusSeeds are the seed files: the documented notification (the unit
// test's), each case the README names, under the safety settings that
// decide it, and malformed bodies.
func corpusSeeds() map[string][]any {
	const watch, dry, noInst, bad, max1, max3 = modeWatch, modeDryRun, modeNoInst, modeBadToken, 1 << 4, 3 << 4
	fire := func(labels ...string) string { return fuzzNotification(fuzzAlert("firing", labels...)) }
	fleet := fuzzNotification(
		fuzzAlert("firing", "instance", "hv1:9100", "interface", "vm-1"),
		fuzzAlert("resolved", "instance", "HV1", "port", "vm-3"),
		fuzzAlert("firing", "instance", "hv2:9100", "interface", "vm-2"),
		fuzzAlert("firing", "instance", "hv1", "interface", "vm-gone"),
		fuzzAlert("firing", "interface", "tap0"),
		fuzzAlert("firing", "instance", "hv1.example.net:9100", "device", "vm-2"),
		fuzzAlert("firing", "instance", "[192.0.2.1]:9100", "interface", "tap0"),
		fuzzAlert("firing", "instance", "hv1"))
	seeds := map[string][]any{
		"fleet":                  {[]byte(fleet), int64(max3)},
		"fleet-watch":            {[]byte(fleet), int64(max3 | watch | noInst)},
		"fleet-max1":             {[]byte(fleet), int64(max1 | noInst)},
		"fleet-max0":             {[]byte(fleet), int64(0)},
		"fleet-dry-run":          {[]byte(fleet), int64(max3 | dry | noInst)},
		"fleet-bad-token":        {[]byte(fleet), int64(max3 | bad)},
		"excluded":               {[]byte(fire("instance", "hv1", "interface", "vm-x1")), int64(max3)},
		"uplink":                 {[]byte(fire("instance", "hv1", "interface", "eth0")), int64(max3)},
		"bond":                   {[]byte(fire("instance", "hv1", "port", "bond0")), int64(max3)},
		"not-bridged":            {[]byte(fire("instance", "hv1", "interface", "vm-lone")), int64(max3)},
		"tap-watched":            {[]byte(fire("instance", "hv1", "interface", "tap0")), int64(max3 | watch)},
		"no-instance":            {[]byte(fire("interface", "vm-1")), int64(max3)},
		"no-instance-allowed":    {[]byte(fire("interface", "vm-1")), int64(max3 | noInst)},
		"empty-instance":         {[]byte(fire("instance", "", "interface", "vm-1")), int64(max3)},
		"label-order":            {[]byte(fire("instance", "hv1", "device", "eth0", "port", "vm-2")), int64(max3)},
		"empty-interface-label":  {[]byte(fire("instance", "hv1", "interface", "", "device", "vm-1")), int64(max3)},
		"bad-port-name":          {[]byte(fire("instance", "hv1", "interface", "--help")), int64(max3)},
		"dotdot":                 {[]byte(fire("instance", "hv1", "interface", "..")), int64(max3)},
		"resolved-quarantined":   {[]byte(fuzzNotification(fuzzAlert("resolved", "instance", "hv1", "interface", "vm-3"))), int64(max3)},
		"firing-quarantined":     {[]byte(fire("instance", "hv1", "interface", "vm-3")), int64(max3)},
		"same-port-twice":        {[]byte(fuzzNotification(fuzzAlert("firing", "instance", "hv1", "interface", "vm-1"), fuzzAlert("firing", "instance", "hv1", "interface", "vm-1"))), int64(max1)},
		"fire-then-resolve":      {[]byte(fuzzNotification(fuzzAlert("firing", "instance", "hv1", "interface", "vm-2"), fuzzAlert("resolved", "instance", "hv1", "interface", "vm-2"))), int64(max3)},
		"instance-trailing-dot":  {[]byte(fire("instance", "hv1.", "interface", "vm-1")), int64(max3)},
		"instance-ipv6":          {[]byte(fire("instance", "[::1]:9100", "interface", "vm-1")), int64(max3)},
		"version-3":              {[]byte(strings.Replace(fire("instance", "hv1", "interface", "vm-1"), `"version": "4"`, `"version": "3"`, 1)), int64(max3)},
		"status-bad":             {[]byte(fuzzNotification(fuzzAlert("pending", "instance", "hv1", "interface", "vm-1"))), int64(max3)},
		"no-alerts":              {[]byte(`{"version":"4","status":"firing"}`), int64(max3)},
		"alerts-null":            {[]byte(`{"version":"4","alerts":null}`), int64(max3)},
		"alerts-empty":           {[]byte(`{"version":"4","alerts":[]}`), int64(max3)},
		"trailing":               {[]byte(`{"version":"4","alerts":[]} {}`), int64(max3)},
		"not-json":               {[]byte("version=4"), int64(max3)},
		"empty":                  {[]byte{}, int64(max3)},
		"labels-wrong-type":      {[]byte(`{"version":"4","alerts":[{"status":"firing","labels":{"interface":1}}]}`), int64(max3)},
		"unknown-fields":         {[]byte(`{"version":"4","extra":true,"alerts":[{"status":"firing","labels":{"instance":"hv1","interface":"vm-1"},"x":[1]}]}`), int64(max3)},
		"duplicate-label":        {[]byte(`{"version":"4","alerts":[{"status":"firing","labels":{"instance":"hv2","instance":"hv1","interface":"eth0","interface":"vm-1"}}]}`), int64(max3)},
		"case-instance":          {[]byte(fire("instance", "HV1.EXAMPLE.NET:9100", "interface", "vm-2")), int64(max3)},
		"instance-port-only":     {[]byte(fire("instance", ":9100", "interface", "vm-1")), int64(max3)},
		"unicode-port":           {[]byte(fire("instance", "hv1", "interface", "vm-\u00e9")), int64(max3)},
		"escaped-nul":            {[]byte(fire("instance", "hv1", "interface", "vm-1\x00")), int64(max3)},
		"truncated-alerts-field": {[]byte(`{"version":"4","truncatedAlerts":99999999999999999999,"alerts":[]}`), int64(max3)},
	}
	return seeds
}

// TestFuzzCorpus checks that the checked-in corpus is exactly corpusSeeds.
// With SHAPERD_WRITE_CORPUS=1 it (re)writes the files first.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzWebhook")
	entries := corpusSeeds()
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(dir, entries); err != nil {
			t.Fatal(err)
		}
	}
	fuzzcorpus.Check(t, dir, entries, []byte(nil), int64(0))
}
