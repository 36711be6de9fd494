// Command probe measures whether an interactive TCP session (ssh-like
// traffic) survives a flood, and pings lab addresses.
//
//	probe server --listen 198.18.0.11:22
//	probe client --connect 198.18.0.11:22 --count 100 --interval 100ms --size 64 [--timeout 5s] [--new-conn] [--json]
//	probe ping   --dst 198.18.0.100 [--count 3] [--interval 100ms] [--timeout 1s] [--json]
//
// The server echoes every byte back. The client keeps one connection (or
// opens one per message with --new-conn, timing connect+echo), sends
// --count messages of --size bytes spaced --interval, waits for each echo
// up to --timeout and prints the round-trip percentiles. client and ping
// exit 1 if any round trip failed. Only lab addresses (198.18.0.0/15,
// 2001:2::/48) are accepted, and client and ping refuse to run in the
// initial network namespace.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `usage:
  probe server --listen ADDR:PORT
  probe client --connect ADDR:PORT [--count 100] [--interval 100ms] [--size 64] [--timeout 5s] [--connect-timeout 5s] [--new-conn] [--json]
  probe ping   --dst ADDR [--count 3] [--interval 100ms] [--timeout 1s] [--json]
`

// errFailed means the summary was printed and some round trip failed.
var errFailed = errors.New("some round trips failed")

func main() {
	err := run(os.Args[1:])
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errFailed):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("missing subcommand: server, client or ping")
	}
	switch args[0] {
	case "server":
		return runServer(args[1:])
	case "client":
		return runClient(args[1:])
	case "ping":
		return runPing(args[1:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown subcommand %q: want server, client or ping", args[0])
}
