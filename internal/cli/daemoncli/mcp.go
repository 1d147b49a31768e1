package daemoncli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/mcpgw"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/spf13/cobra"
)

// version is the version reported to MCP clients.
const version = "0.1.0-dev"

func newMCPCmd(g *cli.Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "MCP gateway: every tool server sandboxed behind one MCP server",
	}
	cmd.AddCommand(newMCPServeCmd(g))
	return cmd
}

func newMCPServeCmd(g *cli.Globals) *cobra.Command {
	var (
		configPath, httpAddr, tokenFile, name, binary, storePath string
		approvalTimeout                                          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve --config FILE [--http ADDR --token-file FILE]",
		Short: "Serve the MCP servers of an mcpServers config as one MCP server (stdio by default)",
		Long: `Reads the usual mcpServers JSON (Claude Desktop, Cursor) with IronClaw's keys
under "ironclaw", starts every stdio server in its own sandbox, and serves one MCP
server on stdio, or over streamable HTTP with --http. Listening on TCP requires a
bearer token (--token-file or IRONCLAW_MCP_TOKEN); "unix:/path" listens on a Unix
socket. Red tool calls wait for ` + "`ironclaw approvals`" + `; every call is recorded for
` + "`ironclaw audit`" + ` in the store in --data-dir (default /var/lib/ironclaw with the
default --root), which outlives a reboot.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			data, err := os.ReadFile(configPath)
			if err != nil {
				return fmt.Errorf("read config: %w", err)
			}
			cfg, err := mcpgw.ParseConfig(data)
			if err != nil {
				return fmt.Errorf("%s: %w", configPath, err)
			}
			token := os.Getenv("IRONCLAW_MCP_TOKEN")
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("read token file: %w", err)
				}
				token = strings.TrimSpace(string(b))
			}
			// Refuse early, before anything is started.
			if httpAddr != "" && !strings.HasPrefix(httpAddr, "unix:") && len(token) < mcpgw.MinTokenLen {
				return fmt.Errorf("--http %s: %w of at least %d characters (--token-file or IRONCLAW_MCP_TOKEN)", httpAddr, mcpgw.ErrNoToken, mcpgw.MinTokenLen)
			}
			if binary == "" {
				if binary, err = os.Executable(); err != nil {
					return fmt.Errorf("find the ironclaw binary: %w", err)
				}
			}
			if name == "" {
				name = fmt.Sprintf("gw-%d", os.Getpid())
			}
			if !validGatewayName(name) {
				return fmt.Errorf("--name %q: use 1-64 letters, digits, '.', '-' or '_' (it names a socket file)", name)
			}
			// state.Open creates the root searchable by the sandboxes'
			// unprivileged uids (0711) and refuses one they cannot walk
			// into, before any server is started.
			root, err := state.Open(g.Root())
			if err != nil {
				return err
			}
			st, err := openStore(ctx, g, storePath, false)
			if err != nil {
				return err
			}
			defer st.Close()

			queue := approval.NewQueue()
			sock := filepath.Join(approval.SocketDir(root.Dir()), name+".sock")
			ln, err := approval.Listen(sock)
			if err != nil {
				return err
			}
			defer os.Remove(sock)
			actx, stopApprovals := context.WithCancel(ctx)
			defer stopApprovals()
			go func() {
				if err := approval.Serve(actx, ln, queue, g.Logger()); err != nil {
					g.Logger().Error("approvals API stopped", "err", err)
				}
			}()

			sbx, err := mcpgw.SandboxRun(binary, root.Dir())
			if err != nil {
				return err
			}
			builtins := []mcpgw.Builtin{sbx}
			daemonTools, closeDaemon, err := daemonBuiltins(ctx, g, cfg, name)
			if err != nil {
				return err
			}
			defer closeDaemon()
			builtins = append(builtins, daemonTools...)
			gw, err := mcpgw.New(mcpgw.Options{
				Config: cfg, Queue: queue, Store: st, Name: name, Version: version, Logger: g.Logger(),
				Launcher:        &mcpgw.Launcher{Binary: binary, Root: root.Dir(), Logger: g.Logger()},
				Builtins:        builtins,
				ApprovalTimeout: approvalTimeout,
			})
			if err != nil {
				return err
			}
			if err := gw.Start(ctx); err != nil {
				if ctx.Err() != nil {
					return err
				}
				// The others are served; failed servers keep being retried.
				g.Logger().Warn("some MCP servers did not start", "err", err)
			}
			defer gw.Close()
			g.Logger().Info("MCP gateway ready", "name", name, "approvals", sock, "servers", len(cfg.Servers))
			if httpAddr == "" {
				return gw.ServeStdio(ctx)
			}
			hl, err := mcpgw.Listen(httpAddr, token)
			if err != nil {
				return err
			}
			if p, ok := strings.CutPrefix(httpAddr, "unix:"); ok {
				defer os.Remove(p)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "ironclaw: MCP gateway %s listening on %s\n", name, hl.Addr())
			return gw.ServeHTTP(ctx, hl, token)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "mcpServers JSON config (required)")
	f.StringVar(&httpAddr, "http", "", "serve streamable HTTP on ADDR (host:port, or unix:/path) instead of stdio")
	f.StringVar(&tokenFile, "token-file", "", "file holding the bearer token HTTP clients must send (env IRONCLAW_MCP_TOKEN)")
	f.StringVar(&name, "name", "", "gateway name for the audit log and approvals socket (default gw-PID)")
	f.StringVar(&binary, "ironclaw", "", "ironclaw binary that runs sandboxes (default: this one)")
	f.StringVar(&storePath, "store", "", "store file, for the audit log (default DATA_DIR/"+datadir.FileName+", see --data-dir)")
	f.DurationVar(&approvalTimeout, "approval-timeout", approval.DefaultTimeout, "how long a held call waits before it is denied")
	cmd.MarkFlagRequired("config")
	return cmd
}

// daemonProbeTimeout bounds the check for a running daemon at start.
const daemonProbeTimeout = 2 * time.Second

// daemonBuiltins returns the tools for the daemon's long-lived sandboxes
// when a daemon answers on the configured socket (ironclaw.daemon.socket,
// else $IRONCLAW_SOCKET, else ROOT/ironclaw.sock), and none otherwise. The
// check is made once, at start: a daemon started later is picked up by
// restarting the gateway.
func daemonBuiltins(ctx context.Context, g *cli.Globals, cfg *mcpgw.Config, name string) ([]mcpgw.Builtin, func(), error) {
	nothing := func() {}
	if cfg.Daemon.Disabled {
		g.Logger().Info("daemon tools disabled by the config (ironclaw.daemon.disabled)")
		return nil, nothing, nil
	}
	sock := cfg.Daemon.Socket
	if sock == "" {
		sock = g.DaemonSocket()
	}
	if !client.Reachable(ctx, sock, daemonProbeTimeout) {
		g.Logger().Info("no daemon answers: the long-lived sandbox tools are not offered", "socket", sock)
		return nil, nothing, nil
	}
	c, err := client.New(client.Config{Socket: sock})
	if err != nil {
		return nil, nothing, fmt.Errorf("daemon client: %w", err)
	}
	tools, err := mcpgw.DaemonTools(mcpgw.DaemonOptions{Client: c, Gateway: name, Foreign: cfg.Daemon.ForeignSandboxes, Logger: g.Logger()})
	if err != nil {
		c.Close()
		return nil, nothing, err
	}
	g.Logger().Info("a daemon answers: offering its long-lived sandbox tools", "socket", sock, "foreign_sandboxes", cfg.Daemon.ForeignSandboxes)
	return tools, c.Close, nil
}

func validGatewayName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '.' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

var errNoGateways = errors.New("no MCP gateway is running (no approvals socket answers)")
