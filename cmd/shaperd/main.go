// Command shaperd quarantines misbehaving VM ports: `shaperd run` is the
// daemon; every other command is a client of its control socket.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/control"
	"github.com/shaperd/shaperd/internal/version"
)

// exitError carries an exit code: 2 for usage and validation errors, 1 for
// runtime failures.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// clientErr maps a control client's error to an exit code.
func clientErr(err error) error {
	if err == nil {
		return nil
	}
	var ue *control.UsageError
	if errors.As(err, &ue) {
		return &exitError{code: 2, err: err}
	}
	var nf *control.NotFoundError
	if errors.As(err, &nf) {
		return &exitError{code: 3, err: err}
	}
	return &exitError{code: 1, err: err}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "shaperd:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	// cobra's own errors are about flags and arguments.
	return 2
}

type globals struct {
	socket string
}

func (g *globals) client() *control.Client {
	return control.NewClient(g.socketPath())
}

func (g *globals) socketPath() string { return control.SocketPath(g.socket) }

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "shaperd",
		Short: "Quarantine misbehaving VM ports: police floods per port while ssh and rdp keep working",
		Long: `shaperd splices a VM's switch port through a pair of tap devices into a userland
forwarder that classifies every frame, keeps ssh/rdp working, and polices the
rest to packets-per-second AND byte budgets. 'shaperd run' is the daemon; the
other commands talk to it over its control socket.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "control socket path (default $SHAPERD_SOCKET, else "+control.DefaultSocket+")")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErr("%v (see '%s --help')", err, c.CommandPath())
	})
	root.Version = versionLine()
	root.SetVersionTemplate("{{.Version}}\n")
	root.AddCommand(newRunCmd(g), newQuarantineCmd(g), newSetCmd(g), newReleaseCmd(g), newBaselineCmd(g), newGuardCmd(g), newIsolateCmd(g), newStatusCmd(g), newTopCmd(g), newQuotaCmd(g), newVersionCmd(), newCheckConfigCmd(), newManCmd())
	addPortCompletion(root, g)
	return root
}

// versionLine is what version and --version print.
func versionLine() string {
	return fmt.Sprintf("shaperd %s (commit %s, %s)", version.Version(), version.Commit(), version.Go())
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print shaperd's version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), versionLine())
			return nil
		},
	}
}

// exactArgs is cobra.ExactArgs with exit code 2 and a message naming the
// missing argument.
func exactArgs(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usageErr("%s takes exactly one %s (got %d arguments); see '%s --help'", cmd.Name(), what, len(args), cmd.CommandPath())
		}
		return nil
	}
}
