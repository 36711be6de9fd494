package alerts

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type call struct {
	port   string
	firing bool
}

type fakeTarget struct{ calls []call }

func (f *fakeTarget) Alert(port string, firing bool) (string, error) {
	f.calls = append(f.calls, call{port, firing})
	if port == "vm-gone" {
		return "unknown_port", errors.New("no such port on this host")
	}
	return "ok", nil
}

// notification is Alertmanager's documented webhook body (version 4).
const notification = `{
  "version": "4",
  "groupKey": "{}:{alertname=\"VMFlood\"}",
  "truncatedAlerts": 0,
  "status": "firing",
  "receiver": "shaperd",
  "groupLabels": {"alertname": "VMFlood"},
  "commonLabels": {"alertname": "VMFlood"},
  "commonAnnotations": {},
  "externalURL": "http://alertmanager:9093",
  "alerts": [
    {"status": "firing", "labels": {"alertname": "VMFlood", "instance": "hv1:9100", "interface": "vm-1"},
     "annotations": {}, "startsAt": "2026-11-23T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
     "generatorURL": "http://prometheus/graph", "fingerprint": "a1"},
    {"status": "resolved", "labels": {"alertname": "VMFlood", "instance": "HV1", "port": "vm-2"},
     "annotations": {}, "startsAt": "2026-11-23T11:00:00Z", "endsAt": "2026-11-23T11:30:00Z",
     "generatorURL": "", "fingerprint": "a2"},
    {"status": "firing", "labels": {"alertname": "VMFlood", "instance": "hv2:9100", "interface": "vm-3"},
     "annotations": {}, "startsAt": "2026-11-23T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
     "generatorURL": "", "fingerprint": "a3"},
    {"status": "firing", "labels": {"alertname": "VMFlood", "instance": "hv1", "interface": "vm-gone"},
     "annotations": {}, "startsAt": "2026-11-23T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
     "generatorURL": "", "fingerprint": "a4"},
    {"status": "firing", "labels": {"alertname": "VMFlood", "interface": "vm-4"},
     "annotations": {}, "startsAt": "2026-11-23T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
     "generatorURL": "", "fingerprint": "a6"},
    {"status": "firing", "labels": {"alertname": "DiskFull", "instance": "hv1"},
     "annotations": {}, "startsAt": "2026-11-23T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
     "generatorURL": "", "fingerprint": "a5"}
  ]
}`

func post(t *testing.T, h http.Handler, auth, body string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, Path, strings.NewReader(body))
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b)
}

func TestWebhook(t *testing.T) {
	tg := &fakeTarget{}
	h := &Handler{Token: "s3cret", Instance: "hv1", Target: tg}
	for _, auth := range []string{"", "Bearer wrong", "Basic s3cret", "Bearer s3cret2", "bearer"} {
		if code, _ := post(t, h, auth, notification); code != http.StatusUnauthorized {
			t.Errorf("auth %q: %d, want 401", auth, code)
		}
	}
	if len(tg.calls) != 0 {
		t.Fatalf("unauthorised requests acted: %v", tg.calls)
	}
	code, body := post(t, h, "Bearer s3cret", notification)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	want := []call{{"vm-1", true}, {"vm-2", false}, {"vm-gone", true}}
	if len(tg.calls) != len(want) {
		t.Fatalf("calls %v, want %v", tg.calls, want)
	}
	for i := range want {
		if tg.calls[i] != want[i] {
			t.Fatalf("calls %v, want %v", tg.calls, want)
		}
	}
	for _, s := range []string{`"other_instance"`, `"no_port_label"`, `"unknown_port"`, `"no_instance_label"`} {
		if !strings.Contains(body, s) {
			t.Errorf("answer lacks %s: %s", s, body)
		}
	}

	// Allowed, an alert without an instance label acts on this host.
	tg = &fakeTarget{}
	h = &Handler{Token: "s3cret", Instance: "hv1", Target: tg, AllowNoInstance: true}
	if code, body := post(t, h, "Bearer s3cret", notification); code != http.StatusOK || len(tg.calls) != 4 || tg.calls[3] != (call{"vm-4", true}) {
		t.Fatalf("with AllowNoInstance: %d %s, calls %v", code, body, tg.calls)
	}
}

func TestWebhookMalformed(t *testing.T) {
	tg := &fakeTarget{}
	h := &Handler{Token: "t", Instance: "hv1", Target: tg}
	for _, body := range []string{
		``, `{`, `[]`, `{"version":"3","alerts":[]}`, `{"version":"4"}`,
		`{"version":"4","alerts":[{"status":"exploding","labels":{"interface":"vm-1"}}]}`,
		`{"version":"4","alerts":[]} {}`,
		`{"version":4,"alerts":[]}`,
	} {
		if code, _ := post(t, h, "Bearer t", body); code != http.StatusBadRequest {
			t.Errorf("body %q: %d, want 400", body, code)
		}
	}
	if len(tg.calls) != 0 {
		t.Fatalf("malformed requests acted: %v", tg.calls)
	}
	r := httptest.NewRequest(http.MethodGet, Path, nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", w.Code)
	}
	if code, _ := post(t, &Handler{Instance: "hv1", Target: tg}, "Bearer ", notification); code != http.StatusUnauthorized {
		t.Fatalf("empty token configured: %d, want 401", code)
	}
}

func TestSameHost(t *testing.T) {
	for _, c := range []struct {
		inst, host string
		want       bool
	}{
		{"hv1:9100", "hv1", true}, {"hv1", "hv1", true}, {"HV1.example.net:9100", "hv1.example.net", true},
		{"hv10:9100", "hv1", false}, {"[2001:db8::1]:9100", "2001:db8::1", true}, {"hv2", "hv1", false},
	} {
		if got := SameHost(c.inst, c.host); got != c.want {
			t.Errorf("SameHost(%q, %q) = %v", c.inst, c.host, got)
		}
	}
}

// A notification of thousands of alerts logs a few lines, not one each; a
// token with a character more (a trailing space) is refused.
func TestWebhookLogVolumeAndExactToken(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	h := &Handler{Token: "s3cret", Instance: "hv1", Target: &fakeTarget{}, Log: log}
	var alerts []string
	for i := range 5000 {
		alerts = append(alerts, fmt.Sprintf(`{"status":"firing","labels":{"alertname":"VMFlood","instance":"hv1","interface":"nope-%d"}}`, i))
	}
	body := `{"version":"4","status":"firing","alerts":[` + strings.Join(alerts, ",") + `]}`
	if code, b := post(t, h, "Bearer s3cret", body); code != http.StatusOK {
		t.Fatalf("%d %.200s", code, b)
	}
	if n := strings.Count(buf.String(), "\n"); n > LoggedAlerts+1 {
		t.Errorf("%d log lines for one notification, want at most %d", n, LoggedAlerts+1)
	}
	r := httptest.NewRequest(http.MethodPost, Path, strings.NewReader(notification))
	r.Header["Authorization"] = []string{"Bearer s3cret "}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("a token with a trailing space: %d, want 401", w.Code)
	}
}

// SetToken rotates the token while the webhook serves.
func TestSetToken(t *testing.T) {
	h := &Handler{Token: "0123456789abcdef-old", Instance: "hv1", Target: &fakeTarget{}}
	if code, _ := post(t, h, "Bearer 0123456789abcdef-old", notification); code != http.StatusOK {
		t.Fatalf("old token before the rotation: %d", code)
	}
	h.SetToken("0123456789abcdef-new")
	if code, _ := post(t, h, "Bearer 0123456789abcdef-old", notification); code != http.StatusUnauthorized {
		t.Errorf("old token after the rotation: %d, want 401", code)
	}
	if code, _ := post(t, h, "Bearer 0123456789abcdef-new", notification); code != http.StatusOK {
		t.Errorf("new token: %d", code)
	}
}

// An alert names this host by its Instance or any of its Aliases (its FQDN,
// an address), with or without a port; another host's alert is ignored.
func TestInstanceAliases(t *testing.T) {
	const body = `{"version":"4","alerts":[
		{"status":"firing","labels":{"alertname":"F","device":"vm-1","instance":"hv1.example.net:9100"}},
		{"status":"firing","labels":{"alertname":"F","device":"vm-2","instance":"198.18.0.7:9100"}},
		{"status":"firing","labels":{"alertname":"F","device":"vm-3","instance":"[2001:db8::7]:9100"}},
		{"status":"firing","labels":{"alertname":"F","device":"vm-4","instance":"hv2.example.net:9100"}}]}`
	tg := &fakeTarget{}
	h := &Handler{Token: "s3cret", Instance: "hv1", Aliases: []string{"hv1.example.net", "198.18.0.7", "2001:db8::7"}, Target: tg}
	code, out := post(t, h, "Bearer s3cret", body)
	want := []call{{"vm-1", true}, {"vm-2", true}, {"vm-3", true}}
	if code != http.StatusOK || len(tg.calls) != len(want) {
		t.Fatalf("%d %s: calls %v, want %v", code, out, tg.calls, want)
	}
	for i := range want {
		if tg.calls[i] != want[i] {
			t.Fatalf("calls %v, want %v", tg.calls, want)
		}
	}
	if !strings.Contains(out, `"other_instance"`) {
		t.Errorf("hv2's alert not answered other_instance: %s", out)
	}
}
