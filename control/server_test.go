package control

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

func testServer(t *testing.T, opt Options) *Server {
	t.Helper()
	m := daemon.NewWithOptions(nil, daemon.Options{Host: &hosttest.Host{}}, fakesplice.New("vm-1"))
	t.Cleanup(func() { m.Close() })
	sock := filepath.Join(t.TempDir(), "s.sock")
	s, err := ListenOptions(sock, m, slog.New(slog.DiscardHandler), opt)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(t.Context()) })
	return s
}

// Only a socket nothing answers on is replaced; a live one, or anything that
// is not a socket, is refused and left as it was.
func TestListenReplacesOnlyAStaleSocket(t *testing.T) {
	m := daemon.NewWithOptions(nil, daemon.Options{Host: &hosttest.Host{}}, fakesplice.New())
	defer m.Close()
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("precious"), 0o600)
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o700)
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	for _, p := range []string{file, sub, link} {
		if _, err := Listen(p, m, log); err == nil || !strings.Contains(err.Error(), "is not a socket") {
			t.Errorf("Listen on %s: %v, want a refusal", filepath.Base(p), err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Errorf("the file was touched: %q %v", b, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Errorf("the link was touched: %v", err)
	}

	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(live, m, log); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Errorf("Listen on a live socket: %v", err)
	}

	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	sl.SetUnlinkOnClose(false)
	sl.Close()
	s, err := Listen(stale, m, log)
	if err != nil {
		t.Fatalf("Listen on a stale socket: %v", err)
	}
	s.Shutdown(t.Context())
}

// A request whose body trickles in is cut RequestTimeout after it began;
// an idle connection after IdleTimeout.
func TestSlowClientsAreCut(t *testing.T) {
	s := testServer(t, Options{RequestTimeout: time.Second, IdleTimeout: time.Second})
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "POST /v1/quarantine HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
	closed := make(chan time.Duration, 1)
	go func() {
		io.Copy(io.Discard, c)
		closed <- time.Since(start)
	}()
	for i := 0; i < 10; i++ {
		if _, err := io.WriteString(c, " "); err != nil {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	select {
	case d := <-closed:
		if d > 2*time.Second {
			t.Errorf("a trickling body was cut after %v, want about 1 s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a trickling body still holds its connection after 5 s")
	}

	idle, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	start = time.Now()
	if _, err := br.ReadByte(); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("an idle connection was kept %v (%v), want closed after about 1 s", time.Since(start), err)
	}
}

// At most MaxConns connections are served at once: the next waits until
// one closes.
func TestConnectionCap(t *testing.T) {
	s := testServer(t, Options{MaxConns: 3})
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("unix", s.path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST /v1/set HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
		held = append(held, c)
	}
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		t.Fatal("a fourth connection was served with three held")
	}
	held[0].Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after one closed, the fourth connection: %v %v", resp, err)
	}
}
