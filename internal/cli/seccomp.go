package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// newSeccompCmd returns `ironclaw seccomp`: profile tools (suggest, check).
func newSeccompCmd(g *Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "seccomp",
		Short: "Seccomp profile tools",
	}
	cmd.AddCommand(newSeccompSuggestCmd(g), newSeccompCheckCmd(g))
	return cmd
}

func newSeccompSuggestCmd(g *Globals) *cobra.Command {
	var base string
	cmd := &cobra.Command{
		Use:   "suggest REPORT.json",
		Short: "Print a Docker-format profile that allows what an audit-mode run used",
		Long: "Reads the report written by `ironclaw run --seccomp-mode audit --seccomp-report FILE` and prints\n" +
			"the base profile (the audited one by default) extended to allow every syscall the workload was\n" +
			"reported for. Review it: a syscall the base allowed only for some arguments becomes allowed for all.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("read audit report: %w", err)
			}
			dec := json.NewDecoder(bytes.NewReader(data))
			dec.DisallowUnknownFields()
			var rep seccomp.Report
			if err := dec.Decode(&rep); err != nil {
				return fmt.Errorf("decode audit report %s: %w", args[0], err)
			}
			name := base
			if name == "" {
				name = rep.Profile
			}
			if name == "" {
				name = seccomp.ProfileDefault
			}
			p, _, err := seccomp.LoadProfile(name)
			if err != nil {
				return fmt.Errorf("base profile: %w", err)
			}
			out, err := seccomp.Suggest(rep, p)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
	cmd.Flags().StringVar(&base, "base", "", "profile to extend: default, strict or a JSON file (default: the report's profile, else default)")
	return cmd
}

func newSeccompCheckCmd(g *Globals) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "check PROFILE",
		Short: "Compile a profile (default, strict, unconfined or a JSON file) for this machine and report it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			arch, err := seccomp.NativeArch()
			if err != nil {
				return err
			}
			p, err := seccomp.Compile(args[0], seccomp.Mode(mode), arch)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "profile %s: %s, %s, %d BPF instructions, digest %s\n", p.Profile, p.Arch, p.Mode, len(p.Instructions), p.Digest())
			if p.Unconfined {
				fmt.Fprintln(cmd.OutOrStdout(), "WARNING: unconfined: every syscall is allowed")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", string(seccomp.Enforce), "enforce or audit")
	return cmd
}

// seccompReexec runs the VMM launcher when this binary was started as it
// (argv[0] == seccomp.LauncherArg0, see seccomp.LaunchVMM). It returns only
// when this is not a launcher start.
func seccompReexec() bool {
	if len(os.Args) == 0 || os.Args[0] != seccomp.LauncherArg0 {
		return false
	}
	os.Exit(seccomp.LauncherMain(os.Args[1:], os.Stderr))
	return true
}
