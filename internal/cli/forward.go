package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// DaemonBinary is the complete binary (cmd/ironclawd) that the lean
// ironclaw forwards its daemon-side commands to.
const DaemonBinary = "ironclawd"

// ForwardAnnotation marks, in the lean binary, a command that ironclawd
// runs: its value is ForwardAlways or ForwardIfFound.
const ForwardAnnotation = "ironclaw.forward"

// Values of ForwardAnnotation.
const (
	// ForwardAlways forwards the command, and fails without ironclawd.
	ForwardAlways = "always"
	// ForwardIfFound forwards the command when ironclawd is found and
	// runs the lean one otherwise (gc: see newLeanGCCmd).
	ForwardIfFound = "if-found"
)

// forwardedEnv is set in the environment of the ironclawd that ironclaw
// executes, and removed by Main before any command runs: a binary that
// finds it set and would forward again is not the complete one (a copy of
// ironclaw installed as ironclawd), and forwarding would execute it
// forever.
const forwardedEnv = "IRONCLAW_FORWARDED"

// errForwardLoop marks a forwarded command that reached a binary which
// forwards it again.
var errForwardLoop = errors.New(DaemonBinary + " forwarded the command back: it is not the complete binary")

// ErrNoDaemonBinary marks a forwarded command whose ironclawd was found
// neither next to ironclaw nor in $PATH.
var ErrNoDaemonBinary = errors.New(DaemonBinary + " not found")

// daemonSide are the commands ironclawd runs for the lean binary, with the
// short text of ironclawd's own (a test keeps them in step).
func daemonSide() []struct{ name, short string } {
	return []struct{ name, short string }{
		{"serve", "Run the daemon: long-lived sandboxes behind an HTTP/JSON API"},
		{"mcp", "MCP gateway: every tool server sandboxed behind one MCP server"},
		{"approvals", "List, inspect, approve and deny tool calls held by MCP gateways"},
		{"audit", "Show the MCP tool calls the gateways recorded"},
	}
}

// forwardedCommands returns the lean binary's stand-ins for the
// daemon-side commands: listed in --help with ironclawd's short text,
// taking every argument as it is (`ironclaw serve --help` is ironclawd's
// help), and forwarded to ironclawd by Main.
func forwardedCommands() []Command {
	var cmds []Command
	for _, d := range daemonSide() {
		cmds = append(cmds, func(g *Globals) *cobra.Command {
			return &cobra.Command{
				Use:   d.name,
				Short: d.short,
				Long: fmt.Sprintf(`%s.

Run by %s: ironclaw executes %s %s with the same arguments, found next to
ironclaw (symlinks resolved) or else in $PATH. "ironclaw %s --help" shows
its flags.`, d.short, DaemonBinary, DaemonBinary, d.name, d.name),
				DisableFlagParsing: true,
				Annotations:        map[string]string{ForwardAnnotation: ForwardAlways},
				RunE: func(cmd *cobra.Command, args []string) error {
					return forwardTo(os.Args[1:])
				},
			}
		})
	}
	return cmds
}

// forward runs ironclawd in place of this process (syscall.Exec: stdio,
// signals and the exit status are ironclawd's own) when args name a
// command the lean binary forwards, with args unchanged, so global flags
// before the command keep working. It returns nil when args name no such
// command, or a gc that finds no ironclawd (the lean gc runs then), and an
// error when ironclawd is needed but missing or does not start. It runs
// before cloexecInherited: ironclawd inherits every descriptor ironclaw
// did, as if it had been started itself.
// forwarded says whether this process is the ironclawd an ironclaw
// executed (see forwardedEnv): then a command to forward is an error.
func forward(root *cobra.Command, args []string, forwarded bool) error {
	c, _, err := root.Find(args)
	if err != nil {
		return nil // not a forwarded command: cobra reports it
	}
	if a := c.Annotations[ForwardAnnotation]; forwarded && (a == ForwardAlways || a == ForwardIfFound) {
		self, _ := os.Executable()
		return fmt.Errorf("%s: %w (%s is a lean ironclaw; install the ironclawd that `go build -o bin/ ./cmd/...` builds)", c.Name(), errForwardLoop, self)
	}
	switch c.Annotations[ForwardAnnotation] {
	case ForwardAlways:
		if err := forwardTo(args); err != nil {
			return fmt.Errorf("%s: %w", c.Name(), err)
		}
	case ForwardIfFound:
		if _, err := FindDaemonBinary(); err != nil {
			return nil
		}
		if err := forwardTo(args); err != nil {
			return fmt.Errorf("%s: %w", c.Name(), err)
		}
	}
	return nil
}

// forwardTo executes ironclawd with args; it returns only on failure.
func forwardTo(args []string) error {
	bin, err := FindDaemonBinary()
	if err != nil {
		return err
	}
	argv := append([]string{bin}, args...)
	if err := syscall.Exec(bin, argv, append(os.Environ(), forwardedEnv+"=1")); err != nil {
		return fmt.Errorf("exec %s: %w", bin, err)
	}
	return nil // not reached
}

// FindDaemonBinary returns the ironclawd to forward to: the one next to
// the running executable (symlinks resolved), else the first in $PATH;
// never the running executable itself (an ironclawd that is a link to
// ironclaw). Its error (ErrNoDaemonBinary) names where it looked and how
// to build it.
func FindDaemonBinary() (string, error) {
	var looked []string
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	var selfInfo os.FileInfo
	if err == nil {
		selfInfo, err = os.Stat(self)
	}
	isSelf := func(fi os.FileInfo) bool { return selfInfo != nil && os.SameFile(fi, selfInfo) }
	if err != nil {
		looked = append(looked, fmt.Sprintf("next to this executable (%v)", err))
	} else {
		p := filepath.Join(filepath.Dir(self), DaemonBinary)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 && !isSelf(fi) {
			return p, nil
		}
		looked = append(looked, p)
	}
	p, err := exec.LookPath(DaemonBinary)
	if err == nil {
		if fi, err := os.Stat(p); err == nil && !isSelf(fi) {
			return p, nil
		}
	}
	looked = append(looked, DaemonBinary+" in $PATH")
	return "", fmt.Errorf("%w: looked for %s; the daemon-side commands (serve, mcp, approvals, audit) are in %s: build it next to ironclaw with `go build -o bin/ ./cmd/...`",
		ErrNoDaemonBinary, strings.Join(looked, " and "), DaemonBinary)
}
