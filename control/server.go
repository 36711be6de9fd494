// Package control is shaperd's control socket: an HTTP/JSON API on a unix
// socket, served by the daemon and used by every command but run.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon"
)

// MaxRequestBytes bounds a request body.
const MaxRequestBytes = 64 << 10

// Bounds on the socket's clients, so that none can hold the daemon's
// connections: a request (headers and body) must arrive within
// RequestTimeout of its first byte, an idle connection is closed after
// IdleTimeout, an answer must be written within WriteTimeout (a
// quarantine's splice included), and at most MaxConns connections are
// open at once (the others wait in the kernel's backlog).
const (
	RequestTimeout = 30 * time.Second
	IdleTimeout    = 30 * time.Second
	WriteTimeout   = 2 * time.Minute
	MaxConns       = 64
)

// Server serves the control API for a Manager.
type Server struct {
	gid  int // the socket group's gid, or -1
	m    *daemon.Manager
	log  *slog.Logger
	ln   net.Listener
	srv  *http.Server
	path string
}

// Listen creates the socket at path (its directory too) with mode 0660 and
// returns a Server ready to Serve. A stale socket left by a dead daemon is
// replaced; a live one is an error.
func Listen(path string, m *daemon.Manager, log *slog.Logger) (*Server, error) {
	return ListenOptions(path, m, log, Options{})
}

// Options harden the control socket.
type Options struct {
	// Group, if set, owns the socket (mode 0660) and its members may use
	// it; otherwise only root may.
	Group string
	// RequestTimeout, IdleTimeout, WriteTimeout and MaxConns replace the
	// defaults of the same names when set (tests).
	RequestTimeout, IdleTimeout, WriteTimeout time.Duration
	MaxConns                                  int
}

// ListenOptions is Listen with options. Who may talk to the daemon is
// checked twice: by the socket file's owner, group and mode, and for every
// connection by the peer's credentials (SO_PEERCRED): root, or a member of
// the group (primary or supplementary).
func ListenOptions(path string, m *daemon.Manager, log *slog.Logger, opt Options) (*Server, error) {
	gid := -1
	if opt.Group != "" {
		g, err := user.LookupGroup(opt.Group)
		if err != nil {
			return nil, fmt.Errorf("control: --socket-group %s: %w", opt.Group, err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("control: --socket-group %s: gid %q", opt.Group, g.Gid)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control: chown %s: %w", path, err)
		}
	}
	or := func(d, def time.Duration) time.Duration {
		if d > 0 {
			return d
		}
		return def
	}
	conns := MaxConns
	if opt.MaxConns > 0 {
		conns = opt.MaxConns
	}
	s := &Server{m: m, log: log, ln: limitListener(ln, conns), path: path, gid: gid}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/quarantine", s.quarantine)
	mux.HandleFunc("POST /v1/set", s.set)
	mux.HandleFunc("POST /v1/release", s.release)
	s.portHandlers(mux)
	mux.HandleFunc("POST /v1/quota/add", s.quotaAdd)
	mux.HandleFunc("POST /v1/quota/remove", s.quotaRemove)
	mux.HandleFunc("GET /v1/quota/list", s.quotaList)
	mux.HandleFunc("GET /v1/quota/report", s.quotaReport)
	s.srv = &http.Server{
		Handler:           s.authorize(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       or(opt.RequestTimeout, RequestTimeout),
		WriteTimeout:      or(opt.WriteTimeout, WriteTimeout),
		IdleTimeout:       or(opt.IdleTimeout, IdleTimeout),
		MaxHeaderBytes:    16 << 10,
		ConnContext:       peerContext,
	}
	return s, nil
}

// removeStale makes way for the socket at path: nothing there, or a socket
// no daemon answers on (a dead daemon's), which it removes. Anything else
// (a live daemon's socket, a file, a directory, a link) is left alone and
// refused.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("control: %s exists and is not a socket (%v): refusing to replace it; choose another --socket or remove it yourself", path, fi.Mode().Type())
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("control: another shaperd is already listening on %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("control: remove the stale socket %s: %w", path, err)
	}
	return nil
}

// limitListener accepts at most n connections at once; Accept waits for
// one to close.
func limitListener(ln net.Listener, n int) net.Listener {
	return &limited{Listener: ln, sem: make(chan struct{}, n)}
}

type limited struct {
	net.Listener
	sem chan struct{}
}

func (l *limited) Accept() (net.Conn, error) {
	l.sem <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Serve answers requests until Shutdown.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops serving, lets requests in flight finish, and removes the socket.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	os.Remove(s.path)
	return err
}

// status answers GET /v1/status[?port=P][&quota_samples=none]. With
// quota_samples=none each tenant's samples are left out (an empty list):
// a month of 5-minute samples is about half a megabyte of JSON per tenant,
// which a screen refreshed every second (shaperd top) does not need.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	samples := q.Get("quota_samples")
	if samples != "" && samples != "all" && samples != "none" {
		writeErr(w, fmt.Errorf("%w: quota_samples=%q: want all or none", daemon.ErrUsage, samples))
		return
	}
	st, err := s.m.Status(q.Get("port"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if samples == "none" {
		for i := range st.Quotas {
			st.Quotas[i].Samples = []api.QuotaSample{}
		}
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) quarantine(w http.ResponseWriter, r *http.Request) {
	var req api.QuarantineRequest
	if !decode(w, r, &req) {
		return
	}
	lim, err := api.ParseRequest(req.Limits)
	var q api.Quarantine
	if err == nil {
		q, err = s.m.Quarantine(req.Port, lim, req.Pending)
	}
	s.audit(r, "quarantine", req.Port, req.Limits, err)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, q)
}

func (s *Server) set(w http.ResponseWriter, r *http.Request) {
	var req api.SetRequest
	if !decode(w, r, &req) {
		return
	}
	lim, err := api.ParseRequest(req.Limits)
	var q api.Quarantine
	if err == nil {
		q, err = s.m.Set(req.Port, lim)
	}
	s.audit(r, "set", req.Port, req.Limits, err)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, q)
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	var req api.ReleaseRequest
	if !decode(w, r, &req) {
		return
	}
	var res api.ReleaseResult
	var err error
	switch {
	case req.All && req.Port != "":
		err = fmt.Errorf("%w: give a port or --all, not both", daemon.ErrUsage)
	case req.All:
		res.Released, err = s.m.ReleaseAll()
	default:
		if err = s.m.Release(req.Port); err == nil {
			res.Released = []string{req.Port}
		}
	}
	what := req.Port
	if req.All {
		what = "--all"
	}
	s.audit(r, "release", what, nil, err)
	if errors.Is(err, daemon.ErrNotSaved) {
		// Released: say so, and why a restart may not keep it.
		res.Warnings, err = []string{err.Error()}, nil
		if !req.All {
			res.Released = []string{req.Port}
		}
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	if res.Released == nil {
		res.Released = []string{}
	}
	if req.All {
		if kept := s.m.TenantSplices(); len(kept) > 0 {
			res.Kept = kept
		}
	}
	writeJSON(w, http.StatusOK, res)
}

// portChange is the handler of a POST that changes one port's kernel
// setting (baseline, guard, isolate, and their removals): it decodes the
// request, refuses a removal sent to a setting's endpoint (removal names
// that endpoint, "" on a removal's own), runs do, audits the change as
// action with attrs, and answers with do's result, where a change in force
// but not saved (daemon.ErrNotSaved) is a warning, not a failure.
func portChange[Req, Res any](s *Server, action string, removal func(Req) string, attrs func(Req) []any,
	do func(Req) (Res, error), warn func(*Res, []string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if !decode(w, r, &req) {
			return
		}
		if at := removal(req); at != "" {
			writeErr(w, fmt.Errorf("%w: remove with POST %s", daemon.ErrUsage, at))
			return
		}
		res, err := do(req)
		s.auditAttrs(r, append([]any{"action", action}, attrs(req)...), err)
		if errors.Is(err, daemon.ErrNotSaved) {
			warn(&res, []string{err.Error()})
			err = nil
		}
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

func noRemoval[Req any](Req) string { return "" }

// portHandlers are the handlers of the per-port kernel settings.
func (s *Server) portHandlers(mux *http.ServeMux) {
	bl := func(req api.BaselineRequest) []any { return []any{"port", req.Port, "limits", req.Limits} }
	blPort := func(req api.BaselineRequest) []any { return []any{"port", req.Port} }
	mux.HandleFunc("POST /v1/baseline", portChange(s, "baseline",
		func(req api.BaselineRequest) string { return removeAt(req.Remove, "/v1/baseline/remove") }, bl,
		func(req api.BaselineRequest) (api.Baseline, error) { return s.m.SetBaseline(req.Port, req.Limits) },
		func(b *api.Baseline, w []string) { b.Warnings = w }))
	mux.HandleFunc("POST /v1/baseline/remove", portChange(s, "baseline-remove", noRemoval[api.BaselineRequest], blPort,
		func(req api.BaselineRequest) (api.BaselineRemoved, error) {
			return api.BaselineRemoved{Port: req.Port}, s.m.RemoveBaseline(req.Port)
		},
		func(b *api.BaselineRemoved, w []string) { b.Warnings = w }))

	gd := func(req api.GuardRequest) []any {
		return []any{"port", req.Port, "mac", req.MAC, "ip", req.IP, "ipv6", req.IPv6}
	}
	gdPort := func(req api.GuardRequest) []any { return []any{"port", req.Port} }
	mux.HandleFunc("POST /v1/guard", portChange(s, "guard",
		func(req api.GuardRequest) string { return removeAt(req.Remove, "/v1/guard/remove") }, gd,
		s.m.SetGuard, func(g *api.Guard, w []string) { g.Warnings = w }))
	mux.HandleFunc("POST /v1/guard/remove", portChange(s, "guard-remove", noRemoval[api.GuardRequest], gdPort,
		func(req api.GuardRequest) (api.Removed, error) {
			return api.Removed{Port: req.Port}, s.m.RemoveGuard(req.Port)
		},
		func(res *api.Removed, w []string) { res.Warnings = w }))

	iso := func(req api.IsolateRequest) []any { return []any{"port", req.Port, "allow_from", req.AllowFrom} }
	isoPort := func(req api.IsolateRequest) []any { return []any{"port", req.Port} }
	mux.HandleFunc("POST /v1/isolate", portChange(s, "isolate",
		func(req api.IsolateRequest) string { return removeAt(req.Remove, "/v1/isolate/remove") }, iso,
		func(req api.IsolateRequest) (api.Isolation, error) { return s.m.SetIsolate(req.Port, req.AllowFrom) },
		func(i *api.Isolation, w []string) { i.Warnings = w }))
	mux.HandleFunc("POST /v1/isolate/remove", portChange(s, "isolate-remove", noRemoval[api.IsolateRequest], isoPort,
		func(req api.IsolateRequest) (api.Removed, error) {
			return api.Removed{Port: req.Port}, s.m.RemoveIsolate(req.Port)
		},
		func(res *api.Removed, w []string) { res.Warnings = w }))
}

func removeAt(remove bool, path string) string {
	if remove {
		return path
	}
	return ""
}

func (s *Server) quotaAdd(w http.ResponseWriter, r *http.Request) {
	var req api.QuotaAddRequest
	if !decode(w, r, &req) {
		return
	}
	t, err := s.m.AddTenant(req.Tenant, req.Settings)
	s.auditAttrs(r, []any{"action", "quota-add", "tenant", req.Tenant, "settings", req.Settings}, err)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (s *Server) quotaRemove(w http.ResponseWriter, r *http.Request) {
	var req api.QuotaRemoveRequest
	if !decode(w, r, &req) {
		return
	}
	err := s.m.RemoveTenant(req.Tenant)
	s.auditAttrs(r, []any{"action", "quota-remove", "tenant", req.Tenant}, err)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.QuotaRemoveResult{Removed: req.Tenant})
}

func (s *Server) quotaList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.m.QuotaList())
}

func (s *Server) quotaReport(w http.ResponseWriter, r *http.Request) {
	rep, err := s.m.QuotaReport(r.URL.Query().Get("tenant"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// audit logs one change: who (the peer's uid), what, and its result; slog
// adds when.
func (s *Server) audit(r *http.Request, what, port string, limits api.LimitFlags, err error) {
	attrs := []any{"action", what, "port", port}
	if limits != nil {
		attrs = append(attrs, "limits", limits)
	}
	s.auditAttrs(r, attrs, err)
}

// auditAttrs logs one change described by attrs, with the peer and the
// result.
func (s *Server) auditAttrs(r *http.Request, attrs []any, err error) {
	if c, ok := r.Context().Value(peerKey{}).(*unix.Ucred); ok && c != nil {
		attrs = append(attrs, "uid", c.Uid, "pid", c.Pid)
	}
	if err != nil {
		attrs = append(attrs, "result", "refused", "err", err.Error())
	} else {
		attrs = append(attrs, "result", "ok")
	}
	s.log.Info("audit", attrs...)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, api.Error{Code: api.CodeUsage, Message: "malformed request: " + err.Error()})
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeJSON(w, http.StatusBadRequest, api.Error{Code: api.CodeUsage, Message: "malformed request: trailing data"})
		return false
	}
	return true
}

func writeErr(w http.ResponseWriter, err error) {
	if errors.Is(err, daemon.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, api.Error{Code: api.CodeNotFound, Message: strings.TrimPrefix(err.Error(), daemon.ErrNotFound.Error()+": ")})
		return
	}
	if errors.Is(err, daemon.ErrUsage) {
		writeJSON(w, http.StatusBadRequest, api.Error{Code: api.CodeUsage, Message: usageMessage(err)})
		return
	}
	writeJSON(w, http.StatusInternalServerError, api.Error{Code: api.CodeRuntime, Message: err.Error()})
}

// usageMessage strips the "usage: " marker the daemon puts on usage errors.
func usageMessage(err error) string {
	msg := err.Error()
	const p = "usage: "
	if len(msg) > len(p) && msg[:len(p)] == p {
		return msg[len(p):]
	}
	return msg
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

type peerKey struct{}

// peerContext records the connecting process's credentials.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		c = lc.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return context.WithValue(ctx, peerKey{}, cred)
}

// authorize refuses, with 403 and an audit line, peers that are neither
// root (or the daemon's own user) nor members of the socket group.
func (s *Server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(peerKey{}).(*unix.Ucred)
		if c == nil || !s.allowed(c) {
			uid := int64(-1)
			if c != nil {
				uid = int64(c.Uid)
			}
			s.log.Warn("audit", "action", r.Method+" "+r.URL.Path, "uid", uid, "result", "refused", "err", "peer is neither root nor in the socket group")
			// Answered at once, before any of the body is read, and
			// the connection closed rather than drained.
			w.Header().Set("Connection", "close")
			writeJSON(w, http.StatusForbidden, api.Error{Code: api.CodeRuntime,
				Message: fmt.Sprintf("permission denied: uid %d is neither root nor in the daemon's --socket-group", uid)})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) allowed(c *unix.Ucred) bool {
	if c.Uid == 0 || int(c.Uid) == os.Getuid() {
		return true
	}
	if s.gid < 0 {
		return false
	}
	if int(c.Gid) == s.gid {
		return true
	}
	return slicesContains(supplementaryGroups(int(c.Pid)), s.gid)
}

// supplementaryGroups reads a process's supplementary groups from /proc.
func supplementaryGroups(pid int) []int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []int
		for _, g := range strings.Fields(rest) {
			if n, err := strconv.Atoi(g); err == nil {
				out = append(out, n)
			}
		}
		return out
	}
	return nil
}

func slicesContains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
