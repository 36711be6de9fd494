package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/api"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/shaperd/shaperd.sock"

// SocketPath returns flag if set, else $SHAPERD_SOCKET, else DefaultSocket.
func SocketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("SHAPERD_SOCKET"); env != "" {
		return env
	}
	return DefaultSocket
}

// Client talks to a daemon's control socket.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{
		path: path,
		hc: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				},
			},
		},
	}
}

// MaxResponseBytes bounds an answer. Status carries every quota tenant's
// samples: a month of 5-minute samples is about 0.8 MB of JSON a tenant.
const MaxResponseBytes = 256 << 20

// ErrNotRunning means no daemon answers on the socket; start one with
// `shaperd run`.
var ErrNotRunning = errors.New("daemon not running")

// NotFoundError is a request for a port that is not quarantined, or a
// tenant that does not exist; nothing changed.
type NotFoundError struct{ Message string }

func (e *NotFoundError) Error() string { return e.Message }

// UsageError is a request the daemon refused as wrong; nothing changed.
type UsageError struct{ Message string }

func (e *UsageError) Error() string { return e.Message }

// Status fetches the status, of one port when port is not empty.
func (c *Client) Status(port string) (api.Status, error) {
	return c.status(port, true)
}

// StatusWithoutSamples is Status with every quota tenant's samples left
// out (an empty list): for views that do not show them.
func (c *Client) StatusWithoutSamples(port string) (api.Status, error) {
	return c.status(port, false)
}

// StatusJSON is Status as the daemon wrote it (indented JSON), checked to
// be JSON and not decoded: `status --json` prints it as it comes, which on
// a host with 100 quarantines (1.7 MB) saves decoding and encoding it
// again. samples false leaves the quota samples out.
func (c *Client) StatusJSON(port string, samples bool) ([]byte, error) {
	var raw json.RawMessage
	err := c.do(http.MethodGet, statusPath(port, samples), nil, &raw)
	return raw, err
}

func (c *Client) status(port string, samples bool) (api.Status, error) {
	var st api.Status
	err := c.do(http.MethodGet, statusPath(port, samples), nil, &st)
	return st, err
}

// statusPath is the status request's path and query.
func statusPath(port string, samples bool) string {
	v := url.Values{}
	if port != "" {
		v.Set("port", port)
	}
	if !samples {
		v.Set("quota_samples", "none")
	}
	q := ""
	if len(v) > 0 {
		q = "?" + v.Encode()
	}
	return "/v1/status" + q
}

// Quarantine asks for a quarantine.
func (c *Client) Quarantine(req api.QuarantineRequest) (api.Quarantine, error) {
	var q api.Quarantine
	err := c.do(http.MethodPost, "/v1/quarantine", req, &q)
	return q, err
}

// Set changes limits in place.
func (c *Client) Set(req api.SetRequest) (api.Quarantine, error) {
	var q api.Quarantine
	err := c.do(http.MethodPost, "/v1/set", req, &q)
	return q, err
}

// Release ends a quarantine, or all of them.
func (c *Client) Release(req api.ReleaseRequest) (api.ReleaseResult, error) {
	var res api.ReleaseResult
	err := c.do(http.MethodPost, "/v1/release", req, &res)
	return res, err
}

// Baseline sets the baseline of one port.
func (c *Client) Baseline(port string, limits api.BaselineLimits) (api.Baseline, error) {
	var b api.Baseline
	err := c.do(http.MethodPost, "/v1/baseline", api.BaselineRequest{Port: port, Limits: limits}, &b)
	return b, err
}

// BaselineRemove removes the command line's baseline of one port.
func (c *Client) BaselineRemove(port string) (api.BaselineRemoved, error) {
	var res api.BaselineRemoved
	err := c.do(http.MethodPost, "/v1/baseline/remove", api.BaselineRequest{Port: port, Remove: true}, &res)
	return res, err
}

// Guard sets the kernel port guard of one port (req.Remove must be false).
func (c *Client) Guard(req api.GuardRequest) (api.Guard, error) {
	var g api.Guard
	err := c.do(http.MethodPost, "/v1/guard", req, &g)
	return g, err
}

// GuardRemove removes the port guard of one port.
func (c *Client) GuardRemove(port string) (api.Removed, error) {
	var res api.Removed
	err := c.do(http.MethodPost, "/v1/guard/remove", api.GuardRequest{Port: port, Remove: true}, &res)
	return res, err
}

// Isolate sets the one-way isolation of one port.
func (c *Client) Isolate(port, allowFrom string) (api.Isolation, error) {
	var i api.Isolation
	err := c.do(http.MethodPost, "/v1/isolate", api.IsolateRequest{Port: port, AllowFrom: allowFrom}, &i)
	return i, err
}

// IsolateRemove removes the one-way isolation of one port.
func (c *Client) IsolateRemove(port string) (api.Removed, error) {
	var res api.Removed
	err := c.do(http.MethodPost, "/v1/isolate/remove", api.IsolateRequest{Port: port, Remove: true}, &res)
	return res, err
}

// QuotaAdd adds a percentile-quota tenant.
func (c *Client) QuotaAdd(req api.QuotaAddRequest) (api.QuotaTenant, error) {
	var t api.QuotaTenant
	err := c.do(http.MethodPost, "/v1/quota/add", req, &t)
	return t, err
}

// QuotaRemove removes a tenant.
func (c *Client) QuotaRemove(tenant string) error {
	return c.do(http.MethodPost, "/v1/quota/remove", api.QuotaRemoveRequest{Tenant: tenant}, nil)
}

// QuotaList lists the tenants.
func (c *Client) QuotaList() (api.QuotaList, error) {
	var l api.QuotaList
	err := c.do(http.MethodGet, "/v1/quota/list", nil, &l)
	return l, err
}

// QuotaReport fetches a tenant's report.
func (c *Client) QuotaReport(tenant string) (api.QuotaReport, error) {
	var r api.QuotaReport
	err := c.do(http.MethodGet, "/v1/quota/report?tenant="+url.QueryEscape(tenant), nil, &r)
	return r, err
}

// Running reports whether a daemon answers on the socket.
func (c *Client) Running() bool {
	_, err := c.Status("")
	return !errors.Is(err, ErrNotRunning)
}

func (c *Client) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://shaperd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.EACCES) {
			return fmt.Errorf("control socket %s: permission denied: run as root or as a member of the daemon's --socket-group", c.path)
		}
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w: nothing answers on %s (start it with `shaperd run`, or point --socket or $SHAPERD_SOCKET at its socket)", ErrNotRunning, c.path)
		}
		return fmt.Errorf("control socket %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			return fmt.Errorf("daemon answered %s", resp.Status)
		}
		if resp.StatusCode == http.StatusForbidden {
			return fmt.Errorf("%s", e.Message)
		}
		switch e.Code {
		case api.CodeUsage:
			return &UsageError{Message: e.Message}
		case api.CodeNotFound:
			return &NotFoundError{Message: e.Message}
		}
		return errors.New(e.Message)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}
