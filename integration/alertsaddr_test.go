package integration

import (
	"fmt"
	"strings"
	"testing"
)

// TestWebhookOwnListener: with --alerts-addr the webhook is served on a
// listener of its own, which serves nothing else, and the metrics listener
// no longer serves it; an alert naming its port by node_exporter's device
// label quarantines that port.
func TestWebhookOwnListener(t *testing.T) {
	l := newLab(t, "bridge")
	hv, port1 := l.get("HV_NS"), l.get("VM1_PORT")
	const maddr, aaddr, token = "127.0.0.1:19752", "127.0.0.1:19753", "lab-token-6c1f-0a9d"
	d := l.startDaemon("--config", labConfig(), "--metrics-addr", maddr, "--alerts-addr", aaddr, "--alerts-token", token, "--instance-name", "hv-lab")
	path := "/v1/alerts/alertmanager"
	device := fmt.Sprintf(`{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"NodeNetworkFlood","instance":"hv-lab:9100","device":%q}}]}`, port1)
	if code, body := l.postIn(hv, maddr, path, token, device); code != 404 {
		t.Errorf("the webhook on the metrics listener: %d %s, want 404", code, body)
	}
	if code, body := l.requestIn(hv, "GET", aaddr, "/metrics", "", ""); code != 404 {
		t.Errorf("/metrics on the alerts listener: %d %.80s, want 404", code, body)
	}
	if m := l.scrape(maddr); m.value(t, "shaperd_quarantines", "state", "active") != 0 {
		t.Errorf("a quarantine before any alert")
	}
	if code, body := l.postIn(hv, aaddr, path, "wrong", device); code != 401 {
		t.Errorf("wrong token on the alerts listener: %d %s, want 401", code, body)
	}
	code, body := l.postIn(hv, aaddr, path, token, device)
	if code != 200 || !strings.Contains(body, "quarantined") {
		t.Fatalf("firing alert with a device label: %d %s", code, body)
	}
	if q := quarantineOf(d.fullStatus(), port1); q == nil || q.Origin != "alert" {
		t.Fatalf("after the alert: %+v", q)
	}
}
