package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/internal/fuzzcorpus"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// FuzzRequest sends arbitrary HTTP requests through the control API's real
// handler (peer check, routing, decoding) to a Manager on a fake backend
// and host, as a peer of the given uid. Each request meets a fresh
// Manager with vm-1 quarantined (pps=1000), vm-2 bridged and free, vm-9
// missing, and tenant t1 watching vm-3. Beyond not panicking:
//   - a request the API refuses (any status but 200) changed nothing: the
//     quarantines, the backend's splices and their intent, and the
//     tenants are as before;
//   - a peer that is neither root nor the daemon's user gets 403;
//   - every answer of the API's own is JSON: an api.Error with a code and
//     a message when refused;
//   - a quarantine answered 200 is in the status; a port released is not.
//
// The seed corpus is in testdata/fuzz/FuzzRequest (see TestFuzzCorpus):
// the requests the client sends for each command, and malformed ones.
func FuzzRequest(f *testing.F) {
	s, err := ListenOptions(filepath.Join(f.TempDir(), "s.sock"), nil, slog.New(slog.DiscardHandler), Options{})
	if err != nil {
		f.Fatal(err)
	}
	s.ln.Close() // the handler is called directly; nothing is served
	f.Fuzz(func(t *testing.T, raw []byte, uid int64) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // net/http's parser refused it: the handler never sees it
		}
		back := fakesplice.New("vm-1", "vm-2", "vm-3")
		m := daemon.NewWithOptions(nil, daemon.Options{Host: &hosttest.Host{Exists: func(p string) bool { return p != "vm-9" }}}, back)
		defer m.Close()
		if _, err := m.Quarantine("vm-1", api.LimitRequest{FromVM: api.DirChange{PPS: api.Some(1000.0)}}, false); err != nil {
			t.Fatal(err)
		}
		if _, err := m.AddTenant("t1", map[string]string{"ports": "vm-3", "commit": "10mbit"}); err != nil {
			t.Fatal(err)
		}
		s.m = m
		before := snapshot(m, back)

		cred := &unix.Ucred{Pid: int32(os.Getpid()), Uid: uint32(uid), Gid: uint32(uid)}
		req = req.WithContext(context.WithValue(context.Background(), peerKey{}, cred))
		w := httptest.NewRecorder()
		s.srv.Handler.ServeHTTP(w, req)
		after := snapshot(m, back)

		allowed := cred.Uid == 0 || int(cred.Uid) == os.Getuid()
		if !allowed && w.Code != http.StatusForbidden {
			t.Fatalf("uid %d: %d, want 403", cred.Uid, w.Code)
		}
		if w.Code != http.StatusOK && after != before {
			t.Fatalf("refused (%d %s), yet the state changed:\nbefore %s\nafter  %s", w.Code, w.Body, before, after)
		}
		if w.Header().Get("Content-Type") == "application/json" {
			if w.Code == http.StatusOK {
				if !json.Valid(w.Body.Bytes()) {
					t.Fatalf("200 with a body that is not JSON: %q", w.Body)
				}
			} else {
				var e api.Error
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
					t.Fatalf("%d with a body that is no api.Error (%v): %q", w.Code, err, w.Body)
				}
			}
		} else if w.Code == http.StatusOK {
			t.Fatalf("200 without a JSON body: %q %q", w.Header(), w.Body)
		}
		if w.Code != http.StatusOK {
			return
		}
		switch req.URL.Path {
		case "/v1/quarantine":
			var q api.Quarantine
			if err := json.Unmarshal(w.Body.Bytes(), &q); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Status(q.Port); err != nil {
				t.Fatalf("quarantine of %q answered 200, status: %v", q.Port, err)
			}
		case "/v1/release":
			var res api.ReleaseResult
			if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
				t.Fatal(err)
			}
			st, err := m.Status("")
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range st.Quarantines {
				if slices.Contains(res.Released, q.Port) {
					t.Fatalf("%s released, yet in the status: %+v", q.Port, q)
				}
			}
		}
	})
}

// snapshot is what a request may change: each quarantine's state and
// settings, the backend's splices and the intent recorded on them, and
// the tenants with their settings.
func snapshot(m *daemon.Manager, back *fakesplice.Backend) string {
	var b strings.Builder
	st, err := m.Status("")
	if err != nil {
		return "status: " + err.Error()
	}
	for _, q := range st.Quarantines {
		fmt.Fprintf(&b, "%s %s %s %s %v %s %s %s intent=%q; ", q.Port, q.State, q.Backend, q.Fail, q.Bypass, q.Profile, q.Origin, q.Stage, back.Intent(q.Port))
	}
	fmt.Fprintf(&b, "splices=%d released=%d; ", back.Splices(), back.Released())
	for _, p := range []string{"vm-1", "vm-2", "vm-3", "vm-9"} {
		fmt.Fprintf(&b, "%s:%v ", p, back.Spliced(p))
	}
	l, _ := json.Marshal(m.QuotaList())
	b.Write(l)
	return b.String()
}

// httpReq is a request as the client writes it.
func httpReq(method, path, body string) []byte {
	s := method + " " + path + " HTTP/1.1\r\nHost: shaperd\r\nUser-Agent: Go-http-client/1.1\r\n"
	if body != "" {
		s += fmt.Sprintf("Content-Length: %d\r\nContent-Type: application/json\r\n", len(body))
	}
	return []byte(s + "Accept-Encoding: gzip\r\n\r\n" + body)
}

// corpusSeeds are the seed files: the requests of every command, as root
// and as another user, and malformed ones.
func corpusSeeds() map[string][]any {
	root, nobody := int64(0), int64(65534)
	seeds := map[string][]any{
		"status":                {httpReq("GET", "/v1/status", ""), root},
		"status-port":           {httpReq("GET", "/v1/status?port=vm-1", ""), root},
		"status-missing-port":   {httpReq("GET", "/v1/status?port=vm-9", ""), root},
		"status-samples-none":   {httpReq("GET", "/v1/status?quota_samples=none", ""), root},
		"status-samples-bad":    {httpReq("GET", "/v1/status?quota_samples=some&port=%00", ""), root},
		"status-nobody":         {httpReq("GET", "/v1/status", ""), nobody},
		"quarantine":            {httpReq("POST", "/v1/quarantine", `{"port":"vm-2","limits":{"pps":"5000","to-vm-bps":"16mbit"}}`), root},
		"quarantine-profile":    {httpReq("POST", "/v1/quarantine", `{"port":"vm-2","limits":null}`), root},
		"quarantine-classes":    {httpReq("POST", "/v1/quarantine", `{"port":"vm-2","limits":{"class":"ssh: tcp dport 22 pps 100\ndns: udp dport 53 pps 50","bypass":"none","fail":"closed"}}`), root},
		"quarantine-pending":    {httpReq("POST", "/v1/quarantine", `{"port":"vm-9","limits":{"pps":"100"},"pending":true}`), root},
		"quarantine-again":      {httpReq("POST", "/v1/quarantine", `{"port":"vm-1","limits":{"pps":"5000"}}`), root},
		"quarantine-bad-limit":  {httpReq("POST", "/v1/quarantine", `{"port":"vm-2","limits":{"pps":"1e30","burst-bytes":"99999999999mb"}}`), root},
		"quarantine-bad-name":   {httpReq("POST", "/v1/quarantine", `{"port":"--help","limits":{"pps":"1"}}`), root},
		"quarantine-dotdot":     {httpReq("POST", "/v1/quarantine", `{"port":"..","limits":{"pps":"1"}}`), root},
		"quarantine-nobody":     {httpReq("POST", "/v1/quarantine", `{"port":"vm-2","limits":{"pps":"5000"}}`), nobody},
		"set":                   {httpReq("POST", "/v1/set", `{"port":"vm-1","limits":{"pps":"2000","mode":"shape","delay":"50ms"}}`), root},
		"set-free-port":         {httpReq("POST", "/v1/set", `{"port":"vm-2","limits":{"pps":"2000"}}`), root},
		"set-bad":               {httpReq("POST", "/v1/set", `{"port":"vm-1","limits":{"pps":"-1","nonsense":"1"}}`), root},
		"release":               {httpReq("POST", "/v1/release", `{"port":"vm-1"}`), root},
		"release-all":           {httpReq("POST", "/v1/release", `{"all":true}`), root},
		"release-both":          {httpReq("POST", "/v1/release", `{"port":"vm-1","all":true}`), root},
		"release-free":          {httpReq("POST", "/v1/release", `{"port":"vm-2"}`), root},
		"release-nobody":        {httpReq("POST", "/v1/release", `{"all":true}`), nobody},
		"quota-add":             {httpReq("POST", "/v1/quota/add", `{"tenant":"t2","settings":{"ports":"vm-2","percentile":"95","commit":"10mbit"}}`), root},
		"quota-add-bad":         {httpReq("POST", "/v1/quota/add", `{"tenant":"t2","settings":{"ports":"vm-1","percentile":"101"}}`), root},
		"quota-add-again":       {httpReq("POST", "/v1/quota/add", `{"tenant":"t1","settings":{"ports":"vm-3","commit":"1mbit"}}`), root},
		"quota-remove":          {httpReq("POST", "/v1/quota/remove", `{"tenant":"t1"}`), root},
		"quota-remove-unknown":  {httpReq("POST", "/v1/quota/remove", `{"tenant":"nope"}`), root},
		"quota-list":            {httpReq("GET", "/v1/quota/list", ""), root},
		"quota-report":          {httpReq("GET", "/v1/quota/report?tenant=t1", ""), root},
		"quota-report-unknown":  {httpReq("GET", "/v1/quota/report?tenant=", ""), root},
		"malformed":             {httpReq("POST", "/v1/quarantine", `{"port":`), root},
		"trailing":              {httpReq("POST", "/v1/set", `{"port":"vm-1","limits":{"pps":"1"}} {}`), root},
		"unknown-field":         {httpReq("POST", "/v1/release", `{"port":"vm-1","force":true}`), root},
		"wrong-types":           {httpReq("POST", "/v1/quarantine", `{"port":1,"limits":["pps"]}`), root},
		"wrong-method":          {httpReq("GET", "/v1/release", ""), root},
		"unknown-path":          {httpReq("POST", "/v1/../v1/release", `{"all":true}`), root},
		"head":                  {httpReq("HEAD", "/v1/status", ""), root},
		"chunked":               {[]byte("POST /v1/release HTTP/1.1\r\nHost: shaperd\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"all\":tr\r\n3\r\nue}\r\n0\r\n\r\n"), root},
		"http10-no-length":      {[]byte("POST /v1/release HTTP/1.0\r\n\r\n{\"port\":\"vm-1\"}"), root},
		"absolute-uri":          {[]byte("POST http://shaperd/v1/release HTTP/1.1\r\nHost: other\r\nContent-Length: 12\r\n\r\n{\"all\":true}"), root},
		"nul-in-port":           {httpReq("POST", "/v1/quarantine", `{"port":"vm-2\u0000","limits":{"pps":"1"}}`), root},
		"long-port":             {httpReq("POST", "/v1/quarantine", `{"port":"`+strings.Repeat("v", 300)+`","limits":{"pps":"1"}}`), root},
		"duplicate-keys":        {httpReq("POST", "/v1/release", `{"port":"vm-2","port":"vm-1"}`), root},
		"body-on-get":           {httpReq("GET", "/v1/status", `{"port":"vm-1"}`), root},
		"empty-body":            {[]byte("POST /v1/set HTTP/1.1\r\nHost: shaperd\r\nContent-Length: 0\r\n\r\n"), root},
		"guard":                 {httpReq("POST", "/v1/quarantine", `{"port":"vm-2","limits":{"pps":"1000","guard":"true","guard-mac":"52:54:00:12:34:56","guard-ip":"198.18.0.5"}}`), root},
		"bypass-ports":          {httpReq("POST", "/v1/set", `{"port":"vm-1","limits":{"bypass":"22,65536,0","bypass-outbound":"yes"}}`), root},
		"intent-like-injection": {httpReq("POST", "/v1/quarantine", `{"port":"vm-2","limits":{"pps":"1 bps=1","class":"a: tcp%0A"}}`), root},
	}
	return seeds
}

// TestFuzzCorpus checks that the checked-in corpus is exactly corpusSeeds.
// With SHAPERD_WRITE_CORPUS=1 it (re)writes the files first.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzRequest")
	entries := corpusSeeds()
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(dir, entries); err != nil {
			t.Fatal(err)
		}
	}
	fuzzcorpus.Check(t, dir, entries, []byte(nil), int64(0))
}
