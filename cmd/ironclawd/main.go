// Command ironclawd is IronClaw's complete binary: every command of
// ironclaw and the daemon-side ones it forwards here, serve (the daemon),
// mcp (the MCP gateway), approvals and audit, and gc with the daemon's
// store. It works alone. See internal/cli and internal/cli/daemoncli.
package main

import (
	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/ironclaw/ironclaw/internal/cli/daemoncli"
)

func main() { cli.Main("ironclawd", daemoncli.Commands()) }
