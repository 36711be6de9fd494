package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

func runServer(args []string) error {
	fs := flag.NewFlagSet("probe server", flag.ContinueOnError)
	listen := fs.String("listen", "", "ADDR:PORT to serve the echo on, e.g. 198.18.0.11:22 (required)")
	verbose := fs.Bool("v", false, "log connections to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" || fs.NArg() > 0 {
		return errors.New("server: want --listen ADDR:PORT and no other arguments")
	}
	ap, err := labnet.ParseAddrPort("listen", *listen)
	if err != nil {
		return err
	}
	if err := labnet.CheckListen(ap.Addr()); err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	l, err := net.Listen("tcp", ap.String())
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Fprintf(os.Stderr, "probe: echo server listening on %s\n", l.Addr())
	s := newServer(l, *verbose)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		s.Close()
	}()
	s.wait()
	return nil
}

// server is a TCP echo server. Close stops accepting, closes every
// connection and waits for their goroutines; it is safe to call twice.
type server struct {
	l       net.Listener
	verbose bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
}

func newServer(l net.Listener, verbose bool) *server {
	s := &server{l: l, verbose: verbose, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.l.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.echo(c)
	}
}

func (s *server) echo(c net.Conn) {
	defer s.wg.Done()
	if s.verbose {
		fmt.Fprintf(os.Stderr, "probe: connection from %s\n", c.RemoteAddr())
	}
	n, err := io.Copy(c, c)
	if s.verbose {
		fmt.Fprintf(os.Stderr, "probe: %s closed after %d bytes (%v)\n", c.RemoteAddr(), n, err)
	}
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close stops the server: listener first so no connection is added, then
// every open connection, then waits for the goroutines.
func (s *server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.l.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// wait blocks until the accept loop and all connections ended.
func (s *server) wait() { s.wg.Wait() }
