// Package control is shaperd's control socket: an HTTP/JSON API on a unix
// socket, served by the daemon and used by every command but run.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon"
)

// MaxRequestBytes bounds a request body.
const MaxRequestBytes = 64 << 10

// Server serves the control API for a Manager.
type Server struct {
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
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("control: another shaperd is already listening on %s", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	s := &Server{m: m, log: log, ln: ln, path: path}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/quarantine", s.quarantine)
	mux.HandleFunc("POST /v1/set", s.set)
	mux.HandleFunc("POST /v1/release", s.release)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
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

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.m.Status(r.URL.Query().Get("port"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) quarantine(w http.ResponseWriter, r *http.Request) {
	var req api.QuarantineRequest
	if !decode(w, r, &req) {
		return
	}
	q, err := s.m.Quarantine(req.Port, req.Limits)
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
	q, err := s.m.Set(req.Port, req.Limits)
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
	err := s.m.Release(req.Port)
	s.audit(r, "release", req.Port, nil, err)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"port": req.Port, "released": "true"})
}

// audit logs one change and its result.
func (s *Server) audit(r *http.Request, what, port string, limits api.LimitRequest, err error) {
	attrs := []any{"action", what, "port", port}
	if limits != nil {
		attrs = append(attrs, "limits", limits)
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
