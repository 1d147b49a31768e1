// Command ironclaw-agent is the guest agent of IronClaw's long-lived
// sandboxes. It is a static binary (CGO_ENABLED=0) with two modes:
//
//   - As PID 1 of a micro-VM (started by the kernel from the initramfs, no
//     flags): it sets the guest up (internal/agent/guest), then serves the
//     agent protocol on the virtio-serial port or vsock port named on the
//     kernel command line, and powers the VM off on request.
//   - In a jail: ironclaw-agent --listen unix:/path.sock --token-file F
//     [--root DIR] [--reap], serving on a Unix socket bind-mounted from
//     the host. With --reap (the jail's init) it reaps every orphan.
//
// Everything but flag parsing lives in internal/agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ironclaw/ironclaw/internal/agent"
	"github.com/ironclaw/ironclaw/internal/agent/guest"
	"github.com/ironclaw/ironclaw/internal/jail/initproc"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// The jail executes this small binary as a sandbox's init
	// (argv[0] "ironclaw-init"): it never returns from there.
	initproc.MaybeMain()
	if os.Getpid() == 1 && len(os.Args) == 1 {
		vmInit()
		return
	}
	os.Exit(jailMain(os.Args[1:]))
}

func jailMain(args []string) int {
	fs := flag.NewFlagSet("ironclaw-agent", flag.ContinueOnError)
	listen := fs.String("listen", "", "where to serve: unix:/path/to.sock")
	tokenFile := fs.String("token-file", "", "file holding the per-sandbox token (required)")
	removeToken := fs.Bool("remove-token-file", false, "delete the token file once read")
	root := fs.String("root", "/", "directory file operations are confined to")
	maxFile := fs.Int64("max-file-size", agent.DefaultMaxFileSize, "upload/download limit in bytes")
	reap := fs.Bool("reap", os.Getpid() == 1, "reap all children (set when running as an init)")
	debug := fs.Bool("debug", false, "log debug messages")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Println("ironclaw-agent", version)
		return 0
	}
	log := newLogger(*debug)
	path, ok := strings.CutPrefix(*listen, "unix:")
	if !ok || path == "" {
		log.Error("--listen: want unix:/path/to.sock", "got", *listen)
		return 2
	}
	if *tokenFile == "" {
		log.Error("--token-file: required")
		return 2
	}
	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		log.Error("read token file", "err", err)
		return 1
	}
	if *removeToken {
		if err := os.Remove(*tokenFile); err != nil {
			log.Error("remove token file", "err", err)
			return 1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := agent.Config{
		Token:       []byte(strings.TrimSpace(string(token))),
		FileRoot:    *root,
		MaxFileSize: *maxFile,
		Shutdown:    stop,
		Version:     version,
		Logger:      log,
	}
	if *reap {
		cfg.Reaper = agent.NewReaper(ctx)
	}
	srv, err := agent.New(cfg)
	if err != nil {
		log.Error("start agent", "err", err)
		return 1
	}
	defer srv.Close()
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		log.Error("listen", "err", err)
		return 1
	}
	if err := os.Chmod(path, 0o600); err != nil {
		log.Error("chmod socket", "err", err)
		return 1
	}
	log.Info("agent serving", "socket", path)
	if err := srv.Serve(ctx, l); err != nil {
		log.Error("serve", "err", err)
		return 1
	}
	return 0
}

func newLogger(debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// vmInit is PID 1 of a micro-VM. It never returns: on any failure it logs to
// the console and powers the VM off, so the host sees the VMM exit.
func vmInit() {
	log := newLogger(strings.Contains(readCmdline(), guest.ParamDebug+"=1"))
	start := time.Now()
	b, err := guest.Setup(log)
	if err != nil {
		log.Error("guest setup failed; powering off", "err", err)
		guest.PowerOff(log, strings.Contains(readCmdline(), guest.ParamPowerOff+"=reboot"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	shutdown := make(chan struct{})
	acfg := agent.Config{
		Token:    b.Token,
		Reaper:   agent.NewReaper(ctx),
		Shutdown: sync.OnceFunc(func() { close(shutdown) }),
		Version:  version,
		Logger:   log,
	}
	if o := b.Params.Owner; o != nil {
		acfg.FileOwner = &agent.FileOwner{UID: o.UID, GID: o.GID}
	}
	srv, err := agent.New(acfg)
	if err != nil {
		log.Error("start agent; powering off", "err", err)
		guest.PowerOff(log, b.Params.Reboot)
	}
	accept, err := guest.Listen(b.Params.Channel)
	if err != nil {
		log.Error("open host channel; powering off", "err", err)
		guest.PowerOff(log, b.Params.Reboot)
	}
	log.Info("ironclaw-agent ready", "channel", b.Params.Channel.String(), "setup", time.Since(start).String())
	go func() {
		for ctx.Err() == nil {
			conn, err := accept(ctx)
			if err != nil {
				log.Error("host channel", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if err := srv.ServeConn(ctx, conn); err != nil {
				log.Warn("host session ended", "err", err)
			}
		}
	}()
	<-shutdown
	cancel()
	_ = srv.Close()
	log.Info("powering off")
	guest.PowerOff(log, b.Params.Reboot)
}

func readCmdline() string {
	b, _ := os.ReadFile("/proc/cmdline")
	return string(b)
}
