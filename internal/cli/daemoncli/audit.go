package daemoncli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/mcpgw"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/spf13/cobra"
)

func newAuditCmd(g *cli.Globals) *cobra.Command {
	var (
		f         store.AuditFilter
		since     string
		storePath string
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the MCP tool calls the gateways recorded",
		Long: `Shows the audit log. A call that did not run (denied, timeout, blocked,
cancelled) has one record. A call that ran has two: "started", written before it
was forwarded (a gateway that cannot write it refuses the call), and its outcome
(allowed or approved) with duration, result size and error. A "started" record
with no outcome after it is a call whose end the gateway did not record.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if storePath == "" {
				dir, err := g.DataDirectory()
				if err != nil {
					return err
				}
				storePath = datadir.Path(dir)
				// A store an earlier IronClaw left in the state root
				// holds the records written before the upgrade.
				se, err := datadir.Stranded(filepath.Clean(g.Root()), dir)
				if err != nil {
					return err
				}
				if se != nil {
					if _, err := os.Stat(storePath); err != nil {
						return fmt.Errorf("no audit log in %s: %w", dir, se)
					}
					fmt.Fprintln(cmd.ErrOrStderr(), "ironclaw: warning:", se)
				}
			}
			if _, err := os.Stat(storePath); err != nil {
				return fmt.Errorf("no audit log: %w", err)
			}
			if since != "" {
				t, err := parseSince(since)
				if err != nil {
					return err
				}
				f.Since = t
			}
			switch f.Decision {
			case "", store.DecisionAllowed, store.DecisionApproved, store.DecisionDenied, store.DecisionTimeout, store.DecisionBlocked, store.DecisionCancelled, mcpgw.DecisionStarted:
			default:
				return fmt.Errorf("--decision %q: want allowed, approved, denied, timeout, blocked, cancelled or started", f.Decision)
			}
			st, err := store.Open(cmd.Context(), storePath)
			if err != nil {
				return err
			}
			defer st.Close()
			recs, err := st.Audit(cmd.Context(), f)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				for _, r := range recs {
					if err := enc.Encode(r); err != nil {
						return err
					}
				}
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tSERVER\tTOOL\tDECISION\tBY\tDURATION\tBYTES\tERROR\tARGUMENTS")
			for _, r := range recs {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, r.Time.Local().Format(time.DateTime),
					clean(r.Server, 24), clean(r.Tool, 32), r.Decision, clean(r.Approver, 24), r.Duration.Round(time.Microsecond),
					r.ResultBytes, clean(r.Error, 40), clean(string(r.Arguments), 60))
			}
			return tw.Flush()
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Server, "server", "", "only this server")
	fl.StringVar(&f.Tool, "tool", "", "only this tool (as the server names it)")
	fl.StringVar(&f.Decision, "decision", "", "only this decision: allowed, approved, denied, timeout, blocked, cancelled, started")
	fl.StringVar(&since, "since", "", "only records since a duration ago (1h) or a time (RFC 3339)")
	fl.IntVar(&f.Limit, "limit", 0, "only the newest N records")
	fl.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	fl.StringVar(&storePath, "store", "", "store file (default DATA_DIR/"+datadir.FileName+", see --data-dir)")
	return cmd
}

func parseSince(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: negative duration", s)
		}
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration (1h) or an RFC 3339 time", s)
	}
	return t, nil
}

// clean makes a value safe and short for one table cell.
func clean(s string, max int) string {
	s = strings.Join(strings.Fields(approval.SanitizeTerminal(s)), " ")
	if len(s) > max {
		s = s[:max-3] + "..."
	}
	return s
}
