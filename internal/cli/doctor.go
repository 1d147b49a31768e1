package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/doctor"
	"github.com/ironclaw/ironclaw/internal/firewall"
)

func newDoctorCmd(g *Globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Report what this host supports and what to do about what it lacks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			checks := doctor.Run(cmd.Context(), g.probes()...)
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Checks []doctor.Check `json:"checks"`
				}{checks})
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			for _, c := range checks {
				fmt.Fprintf(w, "%s\t%s\t%s\n", c.Name, c.Status, c.Detail)
				if c.Fix != "" {
					fmt.Fprintf(w, "\t\t-> %s\n", c.Fix)
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// probes are the doctor checks contributed by the backends and the firewall.
func (g *Globals) probes() []doctor.Probe { return []doctor.Probe{firewall.Probe, g.vmProbe} }
