// Command ironclaw runs commands in disposable sandboxes: the lean binary
// of the sandbox path (run, net, seccomp, doctor, image, gc and the
// sandbox client commands). It leaves out the daemon and its dependencies;
// serve, mcp, approvals and audit forward to ironclawd (cmd/ironclawd),
// found next to it or in $PATH. See internal/cli.
package main

import "github.com/ironclaw/ironclaw/internal/cli"

func main() { cli.Main("ironclaw", cli.LeanCommands()) }
