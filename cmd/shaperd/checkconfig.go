package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/config"
)

// newCheckConfigCmd checks a config file as the daemon would read it, and
// changes nothing: exit 0 when the daemon would start with it, 2 with every
// problem on standard error as FILE:LINE:COLUMN: KEY: message (as compilers
// print them, so that editors and Ansible's validate: show them).
func newCheckConfigCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check-config FILE",
		Short: "Check a config file without starting the daemon (exit 0: good, 2: every problem listed)",
		Long: `Check a config file as shaperd run would read it (the YAML, every value,
the profiles, the webhook token and its file) and change nothing. Exit 0
when the daemon would start with it; exit 2, with every problem listed as
FILE:LINE:COLUMN: KEY: message, when it would not. For example, as an
Ansible template's check before it replaces the file:

    validate: shaperd check-config %s`,
		Args: exactArgs("config file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			problems := config.Check(path)
			if len(problems) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", path)
				return nil
			}
			for _, p := range problems {
				where := path
				if p.Line > 0 {
					where = fmt.Sprintf("%s:%d:%d", path, p.Line, p.Column)
					p.Line = 0
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", where, p)
			}
			return &exitError{code: 2, err: fmt.Errorf("%d %s in %s", len(problems), plural(len(problems), "problem", "problems"), path)}
		},
	}
}
