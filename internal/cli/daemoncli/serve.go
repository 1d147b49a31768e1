package daemoncli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/apiserver"
	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/ironclaw/ironclaw/internal/daemon"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
)

type serveFlags struct {
	socket         string
	group          string
	listen         string
	tokenFile      string
	maxSandboxes   int
	maxCreates     int
	maxFileSize    string
	requestTimeout time.Duration
	pool           int
	poolConfig     string
	sweep          time.Duration
	netPool        string
	vm             vmFlags
}

func newServeCmd(g *cli.Globals) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: long-lived sandboxes behind an HTTP/JSON API",
		Long: `Run the IronClaw daemon. It serves the HTTP/JSON API (see /v1/openapi.yaml)
on a Unix socket, <root>/ironclaw.sock by default, mode 0600 (0660 with
--group), and logs each request with the peer's credentials as JSON on
stderr. With --listen it also serves TCP, but only with a bearer token
(--token-file or IRONCLAW_TOKEN, at least 16 bytes); it refuses to start
otherwise.

Sandboxes outlive the daemon: a restarted daemon re-attaches every sandbox
that still runs and reclaims every other one (sandboxes with network allow
rules die with the daemon: their egress servers live in it). With --pool N
it keeps N prepared sandboxes of the default shape ready, so that a matching
create takes one instead of starting cold. Networked sandboxes take prepared
network slots; once the first one has been asked for, the daemon keeps
--net-pool of them free in the background and destroys used ones.

The daemon's records of its sandboxes and their events are kept in the store
in --data-dir (default /var/lib/ironclaw with the default --root), which
outlives a reboot; the sandboxes do not, and the daemon after a reboot drops
their records. One daemon serves a root and a data directory. It refuses to
start while a store of an earlier version is left in the root, and says how
to move it.

A create may ask for backend "vm": a micro-VM (QEMU microvm, KVM when this
boot's probe saw a guest boot under it, else TCG; IRONCLAW_VM_ACCEL=kvm|tcg
forces one) booting --image, or the default image, built at the first VM
create if missing. Backend "auto" is a VM only where KVM works, else the jail.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return serve(g, &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.socket, "socket", "", "Unix socket path (default <root>/ironclaw.sock, env IRONCLAW_SOCKET)")
	fl.StringVar(&f.group, "group", "", "group allowed to use the socket (mode 0660 instead of 0600)")
	fl.StringVar(&f.listen, "listen", "", "also listen on this TCP address, e.g. 127.0.0.1:7878 (needs a token)")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token for --listen (or env IRONCLAW_TOKEN)")
	fl.IntVar(&f.maxSandboxes, "max-sandboxes", daemon.DefaultMaxSandboxes, "most sandboxes at once (pool members not counted)")
	fl.IntVar(&f.maxCreates, "max-creates", daemon.DefaultMaxConcurrentCreates, "most sandbox starts at once; more creates wait")
	fl.StringVar(&f.maxFileSize, "max-file-size", sandbox.FormatSize(daemon.DefaultMaxFileSize), "largest upload or download")
	fl.DurationVar(&f.requestTimeout, "request-timeout", apiserver.DefaultRequestTimeout, "timeout of each API request (not exec or event streams)")
	fl.IntVar(&f.pool, "pool", 0, "warm pool size for sandboxes of the default shape")
	fl.StringVar(&f.poolConfig, "pool-config", "", `JSON file of warm pools: [{"name": N, "size": N, "template": <create request>}]`)
	cli.NetPoolFlag(fl, &f.netPool)
	fl.DurationVar(&f.sweep, "sweep-interval", daemon.DefaultSweepInterval, "how often time-to-live and idle timeouts are checked")
	fl.StringVar(&f.vm.image, "image", os.Getenv("IRONCLAW_IMAGE"),
		"micro-VM image directory from `ironclaw image build` (default: the default image, built at the first VM create) (env IRONCLAW_IMAGE)")
	fl.StringVar(&f.vm.qemu, "qemu", os.Getenv("IRONCLAW_QEMU"), "qemu-system-x86_64 binary (default: on PATH) (env IRONCLAW_QEMU)")
	return cmd
}

// poolEntry is one warm pool in --pool-config.
type poolEntry struct {
	Name     string            `json:"name"`
	Size     int               `json:"size"`
	Template api.CreateRequest `json:"template"`
}

func (f *serveFlags) pools() ([]daemon.PoolClass, error) {
	var out []daemon.PoolClass
	if f.pool > 0 {
		o, err := apiserver.CreateOptions(&api.CreateRequest{})
		if err != nil {
			return nil, err
		}
		out = append(out, daemon.PoolClass{Name: "default", Template: o, Size: f.pool})
	}
	if f.poolConfig == "" {
		return out, nil
	}
	b, err := os.ReadFile(f.poolConfig)
	if err != nil {
		return nil, fmt.Errorf("--pool-config: %w", err)
	}
	var entries []poolEntry
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&entries); err != nil {
		return nil, fmt.Errorf("--pool-config %s: %w", f.poolConfig, err)
	}
	for i, e := range entries {
		if e.Name == "" || e.Size < 0 {
			return nil, fmt.Errorf("--pool-config %s: pool %d: want a name and a size >= 0", f.poolConfig, i)
		}
		o, err := apiserver.CreateOptions(&e.Template)
		if err != nil {
			return nil, fmt.Errorf("--pool-config %s: pool %q: %w", f.poolConfig, e.Name, err)
		}
		out = append(out, daemon.PoolClass{Name: e.Name, Template: o, Size: e.Size})
	}
	return out, nil
}

func readToken(file string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		return []byte(strings.TrimSpace(string(b))), nil
	}
	return []byte(os.Getenv("IRONCLAW_TOKEN")), nil
}

func serve(g *cli.Globals, f *serveFlags) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel(g)}))
	// Refuse a TCP listener without a token before anything starts.
	var token []byte
	if f.listen != "" {
		var err error
		if token, err = readToken(f.tokenFile); err != nil {
			return err
		}
		if len(token) < apiserver.MinTokenLen {
			return fmt.Errorf("--listen %s: refusing to serve TCP without a bearer token of at least %d bytes (--token-file or IRONCLAW_TOKEN)", f.listen, apiserver.MinTokenLen)
		}
	}
	maxFile, err := sandbox.ParseSize(f.maxFileSize)
	if err != nil || maxFile <= 0 {
		return fmt.Errorf("--max-file-size: want a positive size, got %q", f.maxFileSize)
	}
	pools, err := f.pools()
	if err != nil {
		return err
	}
	netPool, err := cli.NetPoolSize(f.netPool)
	if err != nil {
		return err
	}
	gid, perm := -1, os.FileMode(0o600)
	if f.group != "" {
		grp, err := user.LookupGroup(f.group)
		if err != nil {
			return fmt.Errorf("--group: %w", err)
		}
		if gid, err = strconv.Atoi(grp.Gid); err != nil {
			return fmt.Errorf("--group %s: gid %q: %w", f.group, grp.Gid, err)
		}
		perm = 0o660
	}
	socket := f.socket
	if socket == "" {
		socket = g.DaemonSocket()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root, err := state.Open(g.Root())
	if err != nil {
		return err
	}
	// The store lives in the data directory (durable), not the root.
	dataDir, err := g.DataDirectory()
	if err != nil {
		return err
	}
	st, err := openStore(ctx, g, "", true)
	if err != nil {
		return err
	}
	defer st.Close()
	// The daemon's sandboxes are forked by a spawner: a fork of the
	// daemon itself copies (and write-protects) its whole heap.
	// Networked sandboxes keep the network pool filled: a Keeper
	// destroys used slots and prepares free ones in the background.
	netCfg := network.Config{Root: root.Dir(), Logger: log}
	if netPool > 0 {
		keeper := network.NewKeeper(netCfg, netPool)
		netCfg.DeferRemoval, netCfg.Wake = true, keeper.Wake
		kctx, kcancel := context.WithCancel(context.Background())
		kdone := make(chan struct{})
		go func() { defer close(kdone); keeper.Run(kctx) }()
		// Runs after the sandboxes are closed (deferred first): their
		// used slots go too, not the free ones.
		defer func() {
			kcancel()
			<-kdone
			mctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := network.Maintain(mctx, network.Config{Root: root.Dir(), Logger: log}); err != nil {
				log.Warn("network pool maintenance at shutdown", "err", err)
			}
		}()
	}
	j, err := jail.New(jail.Config{Root: root, Logger: log, Network: netCfg, Spawner: true})
	if err != nil {
		return err
	}
	defer j.Close()
	vmb, autoVM, err := f.vm.daemonBackend(root, log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := daemon.New(ctx, daemon.Config{
		Root: root, Jail: j, VM: vmb, AutoVM: autoVM, Store: st, DataDir: dataDir, Reclaim: cli.Reclaim, Logger: log, Registry: reg,
		MaxSandboxes: f.maxSandboxes, MaxConcurrentCreates: f.maxCreates, MaxFileSize: maxFile,
		Pools: pools, SweepInterval: f.sweep,
	})
	if err != nil {
		return err
	}
	defer m.Close()
	srv, err := apiserver.New(apiserver.Config{Manager: m, Logger: log, Registry: reg, Gatherer: reg, RequestTimeout: f.requestTimeout})
	if err != nil {
		return err
	}
	ul, err := apiserver.ListenUnix(socket, perm, gid)
	if err != nil {
		return err
	}
	defer os.Remove(socket)
	servers := []*http.Server{apiserver.HTTPServer(srv.Handler(), log)}
	listeners := []net.Listener{ul}
	if f.listen != "" {
		h, err := srv.TokenHandler(token)
		if err != nil {
			return err
		}
		tl, err := net.Listen("tcp", f.listen)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		servers = append(servers, apiserver.HTTPServer(h, log))
		listeners = append(listeners, tl)
	}
	errc := make(chan error, len(servers))
	for i, s := range servers {
		go func() { errc <- s.Serve(listeners[i]) }()
	}
	addrs := []string{socket}
	if f.listen != "" {
		addrs = append(addrs, listeners[1].Addr().String())
	}
	log.Info("serving", "listen", addrs, "root", root.Dir(), "pools", len(pools))
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func logLevel(g *cli.Globals) slog.Level {
	if g.Debug() {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
