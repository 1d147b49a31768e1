package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// sandboxGlobals are the flags of `ironclaw sandbox` that say where the
// daemon is.
type sandboxGlobals struct {
	socket string
	url    string
	token  string
}

// socketName is the daemon's socket in the state root.
const socketName = "ironclaw.sock"

// DaemonSocket returns where the CLI looks for the daemon: $IRONCLAW_SOCKET,
// or the socket in the state root.
func (g *Globals) DaemonSocket() string {
	if s := os.Getenv("IRONCLAW_SOCKET"); s != "" {
		return s
	}
	return filepath.Join(g.root, socketName)
}

func (s *sandboxGlobals) client(g *Globals) (*client.Client, error) {
	if s.url != "" {
		tok := s.token
		if tok == "" {
			tok = os.Getenv("IRONCLAW_TOKEN")
		}
		return client.New(client.Config{URL: s.url, Token: tok})
	}
	sock := s.socket
	if sock == "" {
		sock = g.DaemonSocket()
	}
	return client.New(client.Config{Socket: sock})
}

func newSandboxCmd(g *Globals) *cobra.Command {
	var sg sandboxGlobals
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Manage long-lived sandboxes through the daemon (ironclaw serve)",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&sg.socket, "socket", "", "daemon socket (default <root>/ironclaw.sock, env IRONCLAW_SOCKET)")
	pf.StringVar(&sg.url, "url", os.Getenv("IRONCLAW_URL"), "daemon TCP URL instead of the socket (env IRONCLAW_URL)")
	pf.StringVar(&sg.token, "token", "", "bearer token for --url (default env IRONCLAW_TOKEN)")
	cmd.AddCommand(newSandboxCreateCmd(g, &sg), newSandboxLsCmd(g, &sg), newSandboxInspectCmd(g, &sg),
		newSandboxExecCmd(g, &sg), newSandboxCpCmd(g, &sg), newSandboxLogsCmd(g, &sg), newSandboxRmCmd(g, &sg),
		newSandboxNetCmd(g, &sg), newSandboxEventsCmd(g, &sg))
	return cmd
}

// apiFailure prints an API error as one line and returns exit status 125.
func apiFailure(what string, err error) error {
	fmt.Fprintf(os.Stderr, "ironclaw: %s: %v\n", what, err)
	return exitError{125}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type createFlags struct {
	run          runFlags
	backend      string
	allow        []string
	seccomp      string
	seccompAudit bool
	ttl          time.Duration
	idle         time.Duration
	labels       []string
	noPool       bool
	json         bool
}

// request turns run-style flags into a create request.
func createRequest(spec sandbox.Spec) api.CreateRequest {
	r := spec.Resources
	req := api.CreateRequest{
		User:    fmt.Sprintf("%d:%d", spec.User.UID, spec.User.GID),
		Env:     spec.Env,
		Workdir: spec.Workdir,
		Rootfs:  spec.Rootfs,
		Resources: &api.Resources{MemoryBytes: &r.MemoryBytes, Pids: &r.Pids, CPUs: &r.CPUs, NoFile: &r.NoFile,
			FileSizeBytes: &r.FileSize},
	}
	for _, m := range spec.Mounts {
		req.Mounts = append(req.Mounts, api.Mount{Source: m.Source, Target: m.Target, Writable: m.Writable})
	}
	if len(spec.Network.Allow) > 0 {
		req.Network = &api.Network{Allow: spec.Network.Allow}
	}
	if spec.Seccomp != (sandbox.Seccomp{}) {
		req.Seccomp = &api.Seccomp{Profile: spec.Seccomp.Profile, Audit: spec.Seccomp.Audit}
	}
	return req
}

func newSandboxCreateCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create [flags]",
		Short: "Create a long-lived sandbox and print its ID",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := f.run.spec([]string{"-"}) // parses and validates the shared flags
			if err != nil {
				return err
			}
			spec.Command = nil
			req := createRequest(spec)
			req.ID, req.Backend = f.run.name, f.backend
			if f.ttl > 0 {
				req.TTL = f.ttl.String()
			}
			if f.idle > 0 {
				req.IdleTimeout = f.idle.String()
			}
			if f.noPool {
				no := false
				req.Pool = &no
			}
			if len(f.labels) > 0 {
				req.Labels = map[string]string{}
				for _, l := range f.labels {
					k, v, ok := strings.Cut(l, "=")
					if !ok || k == "" {
						return fmt.Errorf("--label %q: want KEY=VALUE", l)
					}
					req.Labels[k] = v
				}
			}
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			sb, err := c.Create(cmd.Context(), req)
			if err != nil {
				return apiFailure("create sandbox", err)
			}
			if f.json {
				return printJSON(sb)
			}
			fmt.Println(sb.ID)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.run.name, "name", "", "sandbox ID (default: generated)")
	fl.StringVar(&f.backend, "backend", "jail", "backend: jail (namespaces), vm (a micro-VM) or auto (a VM where KVM boots one, else the jail)")
	fl.StringArrayVarP(&f.run.mounts, "mount", "m", nil, "grant a host path: HOST:GUEST[:ro|rw]")
	fl.StringVarP(&f.run.workdir, "workdir", "w", "", "host directory mounted read-write at /workspace")
	fl.StringVar(&f.run.rootfs, "rootfs", "", "prepared root directory instead of the host's system directories")
	fl.StringArrayVarP(&f.run.env, "env", "e", nil, "set KEY=VALUE in every exec's environment")
	fl.StringArrayVar(&f.run.envFiles, "env-file", nil, "read KEY=VALUE lines from a file")
	fl.StringVarP(&f.run.user, "user", "u", "sandbox", "user execs run as: sandbox (1000), root, UID or UID:GID")
	fl.StringVar(&f.run.memory, "memory", sandbox.FormatSize(sandbox.DefaultResources.MemoryBytes), "memory limit; 0 for none")
	fl.Int64Var(&f.run.pids, "pids", sandbox.DefaultResources.Pids, "limit on processes and threads; 0 for none")
	fl.Float64Var(&f.run.cpus, "cpus", 0, "CPU limit in CPUs; 0 for none")
	fl.Uint64Var(&f.run.nofile, "nofile", sandbox.DefaultResources.NoFile, "limit on open files per process")
	fl.StringVar(&f.run.fsize, "fsize", sandbox.FormatSize(sandbox.DefaultResources.FileSize), "largest file a process may write; 0 for none")
	fl.StringArrayVar(&f.run.allow, "allow", nil, "allow egress: CIDR[:PORT[-PORT]][/tcp|/udp], DOMAIN[:PORT] or '*.example.com' (repeatable; none: loopback only)")
	fl.StringVar(&f.run.seccomp, "seccomp", "default", "syscall filter: default, strict, a Docker/OCI JSON profile file, or unconfined")
	fl.StringVar(&f.run.seccompMode, "seccomp-mode", "enforce", "enforce, or audit: log what the profile would block instead of blocking it")
	fl.DurationVar(&f.ttl, "ttl", 0, "destroy the sandbox this long after creation; 0 for never")
	fl.DurationVar(&f.idle, "idle-timeout", 0, "destroy the sandbox after this long without activity; 0 for never")
	fl.StringArrayVar(&f.labels, "label", nil, "KEY=VALUE label (repeatable)")
	fl.BoolVar(&f.noPool, "no-pool", false, "start a fresh sandbox even when a warm pool member is ready")
	fl.BoolVar(&f.json, "json", false, "print the sandbox as JSON")
	return cmd
}

func newSandboxLsCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var labels []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List sandboxes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			sel := map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok {
					return fmt.Errorf("--label %q: want KEY=VALUE", l)
				}
				sel[k] = v
			}
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			l, err := c.List(cmd.Context(), sel)
			if err != nil {
				return apiFailure("list sandboxes", err)
			}
			if asJSON {
				return printJSON(api.SandboxList{Sandboxes: l})
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tBACKEND\tUPTIME\tMEMORY\tPIDS\tLABELS")
			for _, s := range l {
				mem, pids := "-", "-"
				if s.Usage != nil {
					mem, pids = sandbox.FormatSize(int64(s.Usage.MemoryBytes)), fmt.Sprint(s.Usage.Pids)
				}
				var ls []string
				for k, v := range s.Labels {
					ls = append(ls, k+"="+v)
				}
				sort.Strings(ls)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.State, s.Backend,
					(time.Duration(s.UptimeSeconds) * time.Second).String(), mem, pids, strings.Join(ls, ","))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringArrayVar(&labels, "label", nil, "only sandboxes with this KEY=VALUE label (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newSandboxInspectCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect ID...",
		Short: "Show everything about sandboxes: state, limits, addresses, usage",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			var out []*api.Sandbox
			for _, id := range args {
				s, err := c.Get(cmd.Context(), id)
				if err != nil {
					return apiFailure("inspect "+id, err)
				}
				out = append(out, s)
			}
			// Inspect is for reading every field: JSON is its only format.
			if len(out) == 1 {
				return printJSON(out[0])
			}
			return printJSON(out)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", true, "print JSON (the only format; accepted for symmetry)")
	return cmd
}

// execExitCode maps an exec's end to the shell-style status `ironclaw run`
// uses, printing what the status alone does not say.
func execExitCode(id string, st api.ExitStatus, timeout time.Duration, memory int64, wholeSandbox bool) int {
	switch {
	case st.TimedOut && wholeSandbox:
		fmt.Fprintf(os.Stderr, "ironclaw: sandbox %q timed out after %s: killed it and every process in it\n", id, timeout)
		return 124
	case st.TimedOut:
		fmt.Fprintf(os.Stderr, "ironclaw: exec in sandbox %q timed out after %s: killed it and its session\n", id, timeout)
		return 124
	case st.OOMKilled:
		fmt.Fprintf(os.Stderr, "ironclaw: sandbox %q ran out of memory: the kernel OOM killer ended it at the %s limit (--memory)\n",
			id, sandbox.FormatSize(memory))
	case st.Error != "":
		fmt.Fprintf(os.Stderr, "ironclaw: exec in sandbox %q: %s\n", id, st.Error)
		return 125
	}
	return st.ExitCode
}

// execStartFailure prints why an exec did not start and picks the status.
func execStartFailure(id string, err error) error {
	fmt.Fprintf(os.Stderr, "ironclaw: exec in sandbox %q: %v\n", id, err)
	switch {
	case client.IsCode(err, api.CodeCommandNotFound):
		return exitError{127}
	case client.IsCode(err, api.CodeNotExecutable):
		return exitError{126}
	}
	return exitError{125}
}

// streamExec runs req in the sandbox id with the caller's stdio, terminal
// and signals wired through, and returns its exit status.
func streamExec(ctx context.Context, c *client.Client, id string, req api.ExecRequest) (st api.ExitStatus, started bool, err error) {
	sigs := catchSignals()
	stdinFD := int(os.Stdin.Fd())
	if req.TTY {
		if w, h, err := term.GetSize(stdinFD); err == nil {
			req.Rows, req.Cols = uint16(h), uint16(w)
		}
		if t := os.Getenv("TERM"); t != "" {
			req.Env = append([]string{"TERM=" + t}, req.Env...)
		}
		if term.IsTerminal(stdinFD) {
			old, err := term.MakeRaw(stdinFD)
			if err != nil {
				return api.ExitStatus{}, false, fmt.Errorf("set terminal raw mode: %w", err)
			}
			defer term.Restore(stdinFD, old)
		}
	}
	e, err := c.Exec(ctx, id, req, client.ExecIO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil {
		return api.ExitStatus{}, false, err
	}
	stop := forwardSignals(sigs, req.TTY, execTarget{e})
	defer stop()
	st, err = e.Wait()
	return st, true, err
}

// execTarget is a streamed exec as forwardSignals' signalTarget.
type execTarget struct{ e *client.Exec }

func (t execTarget) Signal(s syscall.Signal) error     { return t.e.Signal(int(s)) }
func (t execTarget) ResizeTTY(rows, cols uint16) error { return t.e.Resize(rows, cols) }

func newSandboxExecCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var (
		tty     bool
		env     []string
		user    string
		dir     string
		timeout time.Duration
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] ID -- CMD [ARGS...]",
		Short: "Run a command in a sandbox with stdio, signals and an optional TTY",
		Long: `Run CMD in the sandbox ID. Standard input, output and error stream both ways;
signals sent to this command reach CMD; with -t it gets a terminal that
follows this one's size. Exit status as for ironclaw run.

With --json the input is read to its end first and the result (exit status,
output capped at 1 MiB per stream) is printed as JSON.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, argv := args[0], args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return fmt.Errorf("exec: no command after --")
			}
			req := api.ExecRequest{Argv: argv, Env: env, User: user, Dir: dir, TTY: tty}
			if timeout > 0 {
				req.Timeout = timeout.String()
			}
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			if asJSON {
				if !term.IsTerminal(int(os.Stdin.Fd())) {
					if req.Stdin, err = io.ReadAll(os.Stdin); err != nil {
						return fmt.Errorf("read stdin: %w", err)
					}
				}
				res, err := c.ExecBuffered(cmd.Context(), id, req)
				if err != nil {
					return execStartFailure(id, err)
				}
				if err := printJSON(res); err != nil {
					return err
				}
				if res.ExitCode != 0 {
					return exitError{res.ExitCode}
				}
				return nil
			}
			st, _, err := streamExec(cmd.Context(), c, id, req)
			if err != nil {
				var ae *api.Error
				if errors.As(err, &ae) {
					return execStartFailure(id, err)
				}
				return apiFailure("exec in sandbox "+id, err)
			}
			if code := execExitCode(id, st, timeout, 0, false); code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.BoolVarP(&tty, "tty", "t", false, "give the command a pseudo-terminal")
	fl.StringArrayVarP(&env, "env", "e", nil, "set KEY=VALUE in the command's environment")
	fl.StringVarP(&user, "user", "u", "", "run as sandbox, root, UID or UID:GID (default: the sandbox's user)")
	fl.StringVarP(&dir, "workdir", "w", "", "working directory in the sandbox (default /workspace)")
	fl.DurationVar(&timeout, "timeout", 0, "kill the command after this long")
	fl.BoolVar(&asJSON, "json", false, "buffer the output and print the result as JSON")
	return cmd
}

// splitRemote parses "ID:/path"; ok is false for a local path.
func splitRemote(s string) (id, path string, ok bool) {
	i := strings.Index(s, ":/")
	if i <= 0 || strings.HasPrefix(s, "/") || strings.HasPrefix(s, "./") {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

func newSandboxCpCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var mode string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a sandbox (ID:/path on one side; - is stdin/stdout)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sid, spath, sRemote := splitRemote(args[0])
			did, dpath, dRemote := splitRemote(args[1])
			if sRemote == dRemote {
				return fmt.Errorf("cp: exactly one of SRC and DST must be ID:/path")
			}
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			var n int64
			if dRemote {
				var m uint64
				if mode != "" {
					if _, err := fmt.Sscanf(mode, "%o", &m); err != nil || m > 0o7777 {
						return fmt.Errorf("--mode %q: want octal like 0644", mode)
					}
				}
				var in io.Reader = os.Stdin
				if args[0] != "-" {
					f, err := os.Open(args[0])
					if err != nil {
						return err
					}
					defer f.Close()
					in = f
				}
				if n, err = c.Upload(cmd.Context(), did, dpath, in, uint32(m)); err != nil {
					return apiFailure("upload to "+did+":"+dpath, err)
				}
			} else {
				var out io.Writer = os.Stdout
				var f *os.File
				if args[1] != "-" {
					tmp := args[1] + ".ironclaw-tmp"
					if f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
						return err
					}
					out = f
				}
				n, err = c.Download(cmd.Context(), sid, spath, out)
				if f != nil {
					cerr := f.Close()
					if err == nil && cerr == nil {
						err = os.Rename(f.Name(), args[1])
					} else {
						os.Remove(f.Name())
					}
					if err == nil {
						err = cerr
					}
				}
				if err != nil {
					return apiFailure("download "+sid+":"+spath, err)
				}
			}
			if asJSON {
				return printJSON(map[string]int64{"bytes": n})
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "permissions of an uploaded file, octal (default 0644)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the byte count as JSON")
	return cmd
}

func printEvent(ev api.Event) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s  %-8d %-16s %s", ev.Time.Local().Format("2006-01-02T15:04:05.000"), ev.Seq, ev.Type, ev.Sandbox)
	add := func(k string, v any) { fmt.Fprintf(&b, " %s=%v", k, v) }
	if ev.ExecID != "" {
		add("exec", ev.ExecID)
	}
	if len(ev.Argv) > 0 {
		add("argv", strings.Join(ev.Argv, " "))
	}
	if ev.ExitCode != nil {
		add("exit_code", *ev.ExitCode)
	}
	if ev.OOMKilled {
		add("oom_killed", true)
	}
	if ev.TimedOut {
		add("timed_out", true)
	}
	if ev.Reason != "" {
		add("reason", ev.Reason)
	}
	if ev.Step != "" {
		add("step", ev.Step)
	}
	if ev.Error != "" {
		add("error", ev.Error)
	}
	if ev.PoolID != "" {
		add("pool_id", ev.PoolID)
	}
	if ev.Allow != nil {
		add("allow", strings.Join(ev.Allow, ","))
	}
	if ev.Duration != "" {
		add("duration", ev.Duration)
	}
	fmt.Println(b.String())
}

func newSandboxLogsCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var limit int
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Show a sandbox's log: lifecycle events and exec records",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			evs, err := c.Logs(cmd.Context(), args[0], limit)
			if err != nil {
				return apiFailure("logs of "+args[0], err)
			}
			show := func(ev api.Event) error {
				if asJSON {
					return json.NewEncoder(os.Stdout).Encode(ev)
				}
				printEvent(ev)
				return nil
			}
			last := int64(0)
			for _, ev := range evs {
				if err := show(ev); err != nil {
					return err
				}
				last = ev.Seq
			}
			if !follow {
				return nil
			}
			err = c.Events(cmd.Context(), client.EventFilter{Sandbox: args[0], Since: last}, func(ev api.Event) error {
				if err := show(ev); err != nil {
					return err
				}
				if ev.Type == "destroyed" {
					return io.EOF
				}
				return nil
			})
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().IntVarP(&limit, "tail", "n", 1000, "show the newest N entries")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new entries until the sandbox is destroyed")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

func newSandboxRmCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "rm ID...",
		Short: "Destroy sandboxes",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			var removed []string
			var failed error
			for _, id := range args {
				if err := c.Destroy(cmd.Context(), id); err != nil {
					fmt.Fprintf(os.Stderr, "ironclaw: rm %s: %v\n", id, err)
					failed = exitError{125}
					continue
				}
				removed = append(removed, id)
			}
			if asJSON {
				if removed == nil {
					removed = []string{}
				}
				if err := printJSON(map[string][]string{"removed": removed}); err != nil {
					return err
				}
			} else {
				for _, id := range removed {
					fmt.Println(id)
				}
			}
			return failed
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newSandboxNetCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var allow []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "net ID",
		Short: "Replace the egress allow rules of a running sandbox (none: loopback only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.UpdateNetwork(cmd.Context(), args[0], allow)
			if err != nil {
				return apiFailure("update network of "+args[0], err)
			}
			if asJSON {
				return printJSON(s)
			}
			fmt.Printf("%s: allow %s\n", s.ID, strings.Join(s.Network.Allow, " "))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "egress allow rule (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the sandbox as JSON")
	return cmd
}

func newSandboxEventsCmd(g *Globals, sg *sandboxGlobals) *cobra.Command {
	var f client.EventFilter
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow the daemon's event stream",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sg.client(g)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			err = c.Events(ctx, f, func(ev api.Event) error {
				if asJSON {
					return json.NewEncoder(os.Stdout).Encode(ev)
				}
				printEvent(ev)
				return nil
			})
			if errors.Is(err, context.Canceled) || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&f.Sandbox, "sandbox", "", "only events of this sandbox")
	cmd.Flags().StringArrayVar(&f.Types, "type", nil, "only events of this type (repeatable)")
	cmd.Flags().Int64Var(&f.Since, "since", -1, "first replay stored events after this sequence number")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

// daemonClient returns a client when a daemon's socket exists, for
// `ironclaw run` to go through it; nil means run embedded. It does not
// connect: runViaDaemon falls back to an embedded run when its first
// request cannot connect (errNoDaemon), which costs nothing on the path
// where a daemon answers.
func daemonClient(g *Globals) *client.Client {
	sock := g.DaemonSocket()
	if _, err := os.Stat(sock); err != nil {
		return nil
	}
	c, err := client.New(client.Config{Socket: sock})
	if err != nil {
		return nil
	}
	return c
}

// errNoDaemon is runViaDaemon's answer when no daemon took the create:
// the socket did not accept a connection, the daemon is shutting down, or
// (for an unnamed run) it did not answer within daemonAnswerTimeout. No
// exec was sent (a sandbox the daemon makes after all runs nothing, and
// its idle timeout ends it); the caller runs embedded.
var errNoDaemon = errors.New("no daemon answers")

// daemonAnswerTimeout is how long `ironclaw run` waits for a daemon's
// answer to its create: a daemon that accepts connections but is stopped
// or wedged must not hang every run. An unnamed run then runs embedded; a
// named one fails, since the daemon may still make a sandbox of its name.
const daemonAnswerTimeout = 5 * time.Second

// runViaDaemon is `ironclaw run` through the daemon: create a sandbox with
// the spec (a warm pool member when one of its shape is ready), exec the
// command in it with stdio, signals and the terminal wired through; the
// exit status follows `ironclaw run`'s rules. The exec is bound to the
// sandbox (destroy_after): the daemon destroys it when the command ends,
// and a killed CLI takes the sandbox with it; an idle timeout covers a
// CLI killed between the create and the exec. An unnamed run returns
// without waiting for that destroy (the daemon owns the sandbox and
// reclaims it even if it dies); a named one waits, so that its name is
// free again when the command returns.
func runViaDaemon(g *Globals, c *client.Client, spec sandbox.Spec, named bool) error {
	defer c.Close()
	ctx := context.Background()
	req := createRequest(spec)
	req.IdleTimeout = "1m"
	if named {
		// A named sandbox is the one started for it (its hostname is its
		// name): never a pool member.
		req.ID = spec.ID
		no := false
		req.Pool = &no
	}
	cctx, cancel := context.WithTimeout(ctx, daemonAnswerTimeout)
	sb, err := c.Create(cctx, req)
	cancel()
	switch {
	case client.IsUnreachable(err) || client.IsCode(err, api.CodeShuttingDown):
		g.logger.Debug("run embedded", "daemon", err)
		return errNoDaemon
	case errors.Is(err, context.DeadlineExceeded) && named:
		fmt.Fprintf(os.Stderr, "ironclaw: start sandbox %q: the daemon on %s did not answer in %s (--no-daemon runs embedded)\n",
			spec.ID, g.DaemonSocket(), daemonAnswerTimeout)
		return exitError{125}
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(os.Stderr, "ironclaw: the daemon on %s did not answer in %s; running embedded\n", g.DaemonSocket(), daemonAnswerTimeout)
		return errNoDaemon
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ironclaw: start sandbox %q: %v\n", spec.ID, err)
		return exitError{125}
	}
	started := false
	defer func() {
		if started && !named {
			return // the daemon destroys it (destroy_after)
		}
		// The command has ended or never started: signals are no
		// longer forwarded, and a Ctrl-C during the wait below
		// interrupts this process.
		releaseSignals()
		if err := c.Destroy(context.Background(), sb.ID); err != nil && !client.IsCode(err, api.CodeNotFound) {
			g.logger.Warn("destroy sandbox", "sandbox", sb.ID, "err", err)
		}
	}()
	ereq := api.ExecRequest{Argv: spec.Command, TTY: spec.TTY, DestroyAfter: true}
	if spec.Timeout > 0 {
		ereq.Timeout = spec.Timeout.String()
	}
	st, started, err := streamExec(ctx, c, sb.ID, ereq)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			return execStartFailure(sb.ID, err)
		}
		return apiFailure("run in sandbox "+sb.ID, err)
	}
	if code := execExitCode(sb.ID, st, spec.Timeout, spec.Resources.MemoryBytes, true); code != 0 {
		return exitError{code}
	}
	return nil
}
