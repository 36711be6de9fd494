// Package alerts receives Prometheus Alertmanager's webhook notifications
// (version 4 of its JSON) and turns them into quarantines: a firing alert
// with an "interface", "port" or "device" label (node_exporter's name for
// an interface) quarantines that port, a resolved one starts its
// probation.
//
// Alertmanager retries a notification that fails, so only a request that
// can never succeed is refused: a missing or wrong bearer token (401), a
// body that is not the documented JSON (400). An alert for a port this host
// does not have, or for another instance, is answered 200 and logged.
package alerts

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
)

// Path is where the webhook is served.
const Path = "/v1/alerts/alertmanager"

// MaxBody bounds a notification's size; Alertmanager's are a few KiB per
// alert.
const MaxBody = 1 << 20

// LoggedAlerts is how many alerts of one notification are logged one by
// one; the rest are summed up in one line.
const LoggedAlerts = 10

// Target acts on alerts: the daemon's Manager.
type Target interface {
	// Alert quarantines port (firing) or starts its probation (resolved),
	// and says what it did.
	Alert(port string, firing bool) (string, error)
}

// Handler serves the webhook.
type Handler struct {
	// Token is the bearer token a request must carry; empty refuses every
	// request (the daemon does not mount the handler without one).
	Token string
	// current replaces Token once SetToken was called.
	current atomic.Pointer[string]
	// Instance is this host's name, compared with an alert's instance label
	// without its :port; Aliases are its other names (its FQDN or short
	// name, its addresses, configured aliases), compared the same way.
	Instance string
	Aliases  []string
	// AllowNoInstance lets an alert without an instance label act on
	// this host; by default it is ignored, since it would act on every
	// host that receives it.
	AllowNoInstance bool
	Target          Target
	Log             *slog.Logger
}

// Message is the webhook's body (Alertmanager's version 4).
type Message struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []Alert           `json:"alerts"`
}

// Alert is one alert of a Message.
type Alert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     string            `json:"startsAt"`
	EndsAt       string            `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// Result is the answer's body: what happened to each alert.
type Result struct {
	Alerts []Outcome `json:"alerts"`
}

// Outcome is what one alert did.
type Outcome struct {
	Port    string `json:"port,omitempty"`
	Status  string `json:"status"`
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := h.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if !h.authorized(r) {
		log.Warn("alerts: refused a request without the right bearer token", "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="shaperd"`)
		http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > MaxBody {
		http.Error(w, fmt.Sprintf("body over %d bytes", MaxBody), http.StatusRequestEntityTooLarge)
		return
	}
	msg, err := Parse(body)
	if err != nil {
		log.Warn("alerts: malformed notification", "remote", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// One line per alert for the first LoggedAlerts of a notification,
	// then one line for the rest: a large notification cannot flood the
	// log.
	var res Result
	quiet := slog.New(slog.DiscardHandler)
	outcomes := map[string]int{}
	for i, a := range msg.Alerts {
		l := log
		if i >= LoggedAlerts {
			l = quiet
		}
		o := h.handle(l, a)
		outcomes[o.Outcome]++
		res.Alerts = append(res.Alerts, o)
	}
	if n := len(msg.Alerts); n > LoggedAlerts {
		log.Warn("alerts: a notification with many alerts; only the first were logged one by one", "alerts", n, "logged", LoggedAlerts, "outcomes", outcomes)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

// SetToken replaces the token the webhook asks for (a SIGHUP after the
// token file was rotated); "" refuses every request. Safe while serving.
func (h *Handler) SetToken(token string) { h.current.Store(&token) }

func (h *Handler) token() string {
	if t := h.current.Load(); t != nil {
		return *t
	}
	return h.Token
}

func (h *Handler) authorized(r *http.Request) bool {
	token := h.token()
	if token == "" {
		return false
	}
	// The token as sent, byte for byte: no trimming.
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// Parse decodes and checks a notification.
func Parse(body []byte) (Message, error) {
	var m Message
	dec := json.NewDecoder(strings.NewReader(string(body)))
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("not Alertmanager webhook JSON: %v", err)
	}
	if dec.More() {
		return m, errors.New("not Alertmanager webhook JSON: data after the object")
	}
	if m.Version != "4" {
		return m, fmt.Errorf("webhook version %q: want \"4\"", m.Version)
	}
	if m.Alerts == nil {
		return m, errors.New("no alerts array")
	}
	for i, a := range m.Alerts {
		if a.Status != "firing" && a.Status != "resolved" {
			return m, fmt.Errorf("alerts[%d].status %q: want firing or resolved", i, a.Status)
		}
	}
	return m, nil
}

// portLabels are the labels that name an alert's port, first found wins:
// "device" is node_exporter's (node_network_*), so its alerts need no
// relabelling.
var portLabels = []string{"interface", "port", "device"}

func (h *Handler) handle(log *slog.Logger, a Alert) Outcome {
	out := Outcome{Status: a.Status}
	var port string
	for _, l := range portLabels {
		if port = a.Labels[l]; port != "" {
			break
		}
	}
	out.Port = port
	name := a.Labels["alertname"]
	inst, ok := a.Labels["instance"]
	if !ok && !h.AllowNoInstance {
		out.Outcome = "no_instance_label"
		log.Info("alerts: ignored an alert without an instance label (it would act on every host; alerts_allow_no_instance allows it)", "alertname", name, "port", port)
		return out
	}
	if ok && !h.thisHost(inst) {
		out.Outcome = "other_instance"
		log.Info("alerts: ignored an alert for another instance", "alertname", name, "instance", inst, "port", port)
		return out
	}
	if port == "" {
		out.Outcome = "no_port_label"
		log.Info("alerts: ignored an alert without an interface, port or device label", "alertname", name, "labels", a.Labels)
		return out
	}
	what, err := h.Target.Alert(port, a.Status == "firing")
	out.Outcome = what
	if err != nil {
		out.Error = err.Error()
		log.Warn("alerts: alert not acted on", "alertname", name, "port", port, "status", a.Status, "err", err)
		return out
	}
	log.Info("alerts: alert handled", "alertname", name, "port", port, "status", a.Status, "outcome", what)
	return out
}

// thisHost reports whether an instance label names this host: its
// Instance or one of its Aliases (see SameHost).
func (h *Handler) thisHost(inst string) bool {
	if SameHost(inst, h.Instance) {
		return true
	}
	for _, a := range h.Aliases {
		if a != "" && SameHost(inst, a) {
			return true
		}
	}
	return false
}

// SameHost compares an instance label with this host's name, without any
// :port on the label and ignoring case.
func SameHost(instance, host string) bool {
	h := instance
	if hh, _, err := net.SplitHostPort(instance); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	return strings.EqualFold(h, host)
}
