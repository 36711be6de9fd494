package main

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/shaperd/shaperd/internal/version"
)

// newManCmd is the hidden `shaperd man DIR`: it writes a man page (section
// 8) for shaperd and each of its commands into DIR, from the commands'
// own help. make deb runs it; the date is $SOURCE_DATE_EPOCH's when set.
func newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "Write the man pages into DIR",
		Hidden: true,
		Args:   exactArgs("DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			hdr := &doc.GenManHeader{Title: "SHAPERD", Section: "8", Source: "shaperd " + version.Version(), Manual: "shaperd manual"}
			return doc.GenManTree(cmd.Root(), hdr, args[0])
		},
	}
}
