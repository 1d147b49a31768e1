package daemoncli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/spf13/cobra"
)

func newApprovalsCmd(g *cli.Globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "List, inspect, approve and deny tool calls held by MCP gateways",
		Long: `Without a subcommand, lists the pending tool calls of every gateway running under
the state root. "watch" shows each new call's card and asks approve or deny.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pending, err := allPending(cmd.Context(), g.Root())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				reqs := make([]approval.Request, 0, len(pending))
				for _, p := range pending {
					reqs = append(reqs, p.req)
				}
				return enc.Encode(reqs)
			}
			if len(pending) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no pending approvals")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tGATEWAY\tTOOL\tWAITING\tEXPIRES IN\tWHAT")
			for _, p := range pending {
				r := p.req
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Gateway, r.Tool,
					time.Since(r.Created).Round(time.Second), time.Until(r.Deadline).Round(time.Second),
					approval.SanitizeTerminal(r.Card.Title))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(
		&cobra.Command{
			Use:   "show ID",
			Short: "Show the card of a held call",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				p, err := findPending(cmd.Context(), g.Root(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprint(cmd.OutOrStdout(), renderRequest(p.req))
				return nil
			},
		},
		newDecideCmd(g, "approve", true),
		newDecideCmd(g, "deny", false),
		newApprovalsWatchCmd(g),
	)
	return cmd
}

func newDecideCmd(g *cli.Globals, verb string, approve bool) *cobra.Command {
	var note string
	cmd := &cobra.Command{
		Use:   verb + " ID",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " a held call",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := findPending(cmd.Context(), g.Root(), args[0])
			if err != nil {
				return err
			}
			d, err := p.client.Decide(cmd.Context(), p.req.ID, approve, note)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%s) as %s\n", pastTense(approve), p.req.ID, p.req.Tool, d.By)
			return nil
		},
	}
	cmd.Flags().StringVar(&note, "note", "", "a note recorded with the decision")
	return cmd
}

func pastTense(approve bool) string {
	if approve {
		return "approved"
	}
	return "denied"
}

func newApprovalsWatchCmd(g *cli.Globals) *cobra.Command {
	return &cobra.Command{
		Use:   "watch",
		Short: "Show each new held call and ask: [a]pprove, [d]eny or [s]kip",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			in := bufio.NewReader(cmd.InOrStdin())
			seen := map[string]bool{}
			fmt.Fprintln(out, "watching for held tool calls (Ctrl-C to stop)")
			for ctx.Err() == nil {
				pending, err := allPending(ctx, g.Root())
				if err != nil && !errors.Is(err, errNoGateways) {
					return err
				}
				asked := false
				for _, p := range pending {
					if seen[p.req.ID] {
						continue
					}
					seen[p.req.ID] = true
					asked = true
					fmt.Fprint(out, "\n"+renderRequest(p.req))
					approve, note, skip, err := ask(out, in)
					if err != nil {
						return err
					}
					if skip {
						continue
					}
					d, err := p.client.Decide(ctx, p.req.ID, approve, note)
					if err != nil {
						fmt.Fprintf(out, "could not decide: %v\n", err)
						continue
					}
					fmt.Fprintf(out, "%s as %s\n", pastTense(approve), d.By)
				}
				if !asked {
					select {
					case <-ctx.Done():
					case <-time.After(250 * time.Millisecond):
					}
				}
			}
			return nil
		},
	}
}

func ask(out io.Writer, in *bufio.Reader) (approve bool, note string, skip bool, err error) {
	for {
		fmt.Fprint(out, "[a]pprove, [d]eny, [s]kip? ")
		line, err := in.ReadString('\n')
		if err != nil {
			return false, "", false, fmt.Errorf("read answer: %w", err)
		}
		word, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch strings.ToLower(word) {
		case "a", "approve", "y", "yes":
			return true, strings.TrimSpace(rest), false, nil
		case "d", "deny", "n", "no":
			return false, strings.TrimSpace(rest), false, nil
		case "s", "skip":
			return false, "", true, nil
		}
	}
}

func renderRequest(r approval.Request) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "── %s  %s  (gateway %s, expires in %s)\n", r.ID, approval.SanitizeTerminal(r.Tool), approval.SanitizeTerminal(r.Gateway), time.Until(r.Deadline).Round(time.Second))
	fmt.Fprintf(&sb, "held because: %s\n", approval.SanitizeTerminal(r.Verdict.Reason))
	sb.WriteString(r.Card.Render())
	return sb.String()
}

type pendingAt struct {
	client *approval.Client
	req    approval.Request
}

// allPending asks every gateway socket under the root for its pending
// calls. Sockets nobody answers on (a gateway that was killed) are skipped.
func allPending(ctx context.Context, root string) ([]pendingAt, error) {
	socks, err := filepath.Glob(filepath.Join(approval.SocketDir(root), "*.sock"))
	if err != nil {
		return nil, err
	}
	var out []pendingAt
	answered := 0
	for _, s := range socks {
		c := approval.NewClient(s)
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		reqs, _, err := c.List(cctx, 0, 0)
		cancel()
		if err != nil {
			continue
		}
		answered++
		for _, r := range reqs {
			out = append(out, pendingAt{c, r})
		}
	}
	if answered == 0 {
		return nil, fmt.Errorf("%w under %s", errNoGateways, approval.SocketDir(root))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].req.Created.Before(out[j].req.Created) })
	return out, nil
}

func findPending(ctx context.Context, root, id string) (pendingAt, error) {
	all, err := allPending(ctx, root)
	if err != nil {
		return pendingAt{}, err
	}
	for _, p := range all {
		if p.req.ID == id {
			return p, nil
		}
	}
	return pendingAt{}, fmt.Errorf("approval %s: %w", id, approval.ErrNotPending)
}
