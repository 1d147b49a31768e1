// Package jail is IronClaw's namespace backend: it runs a command in a
// fresh set of Linux namespaces (user, PID, mount, IPC, UTS, network and
// cgroup) on a throwaway root built from read-only binds, under cgroup
// limits, Landlock and a seccomp filter, and removes every trace of it
// afterwards.
//
// The host side (Start) claims the sandbox's state directory, makes its
// cgroup, and re-executes the current binary as the sandbox's init
// (InitArg0), which is PID 1 of the new PID namespace. The two talk over a
// socket pair (see ctl.go). Init builds the root and pivots into it,
// confines one locked OS thread (capability bounding set, no_new_privs,
// Landlock, seccomp) and reports that thread's ID; the host reads the
// thread's /proc status back from the kernel and only then lets init fork
// the command from it. Root inside the sandbox is an unprivileged uid on
// the host.
package jail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/jail/initproc"
	"github.com/ironclaw/ironclaw/internal/jail/spawner"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/state"
)

// DefaultUIDBase is the first host uid (and gid) of the range a sandbox's
// user namespace maps: uid 0 inside is this uid outside, an account that
// does not exist on the host.
const DefaultUIDBase = 1_000_000_000

// Config configures the jail backend.
type Config struct {
	// Root is the state directory sandboxes are recorded in.
	Root *state.Root
	// Cgroups is the host's cgroup layout; nil detects it.
	Cgroups *cgroup.Host
	// Logger receives debug and warning messages.
	Logger *slog.Logger
	// UIDBase is the first host uid of the mapped range (DefaultUIDBase).
	UIDBase uint32
	// Exe is the binary executed as the sandboxes' init. Empty means
	// the ironclaw-agent binary next to this executable when there is
	// one (a small static binary that starts in a third of the time),
	// else this executable itself (/proc/self/exe). It must call
	// MaybeInit first thing.
	Exe string
	// Network configures networked sandboxes (--allow); its Root
	// defaults to the state root.
	Network network.Config
	// Spawner makes the inits of persistent sandboxes be forked by a
	// spawner process (package spawner) rather than by this one: for a
	// daemon, whose large heap makes each of its own forks costly. Call
	// Close to stop it.
	Spawner bool
}

// Jail starts sandboxes. It is safe for concurrent use.
type Jail struct {
	cfg Config

	// progs caches the compiled built-in seccomp profiles (by profile and
	// mode): their output depends only on the host's arch and kernel,
	// and compiling one is about a tenth of a daemon's share of a create.
	// Profile files are compiled at every start (their content may change).
	progMu sync.Mutex
	progs  map[string]*seccomp.Program

	spawner *spawner.Client // with Config.Spawner
}

// New returns a jail backend.
func New(cfg Config) (*Jail, error) {
	if cfg.Root == nil {
		return nil, errors.New("jail: no state root")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase = DefaultUIDBase
	}
	if cfg.Exe == "" {
		cfg.Exe = defaultInitExe()
	}
	if cfg.Network.Root == "" {
		cfg.Network.Root = cfg.Root.Dir()
	}
	if cfg.Network.Logger == nil {
		cfg.Network.Logger = cfg.Logger
	}
	if cfg.Cgroups == nil {
		h, err := cgroup.Detect()
		if err != nil {
			return nil, err
		}
		cfg.Cgroups = h
	}
	j := &Jail{cfg: cfg}
	if cfg.Spawner {
		j.spawner = spawner.New(cfg.Exe, cfg.Logger)
	}
	return j, nil
}

// Close stops the spawner (Config.Spawner). Sandboxes live on.
func (j *Jail) Close() error {
	if j.spawner == nil {
		return nil
	}
	return j.spawner.Close()
}

// IO holds the command's standard streams. Nil means /dev/null. A stream
// that is an *os.File and not a terminal is handed to the command as is;
// anything else is copied through a pipe, so that the command never holds
// a descriptor of the caller's terminal.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Options carry what other subsystems contribute to a start.
type Options struct {
	IO IO
	// NetNS, when set, is the network namespace the sandbox joins instead
	// of getting a new one with loopback only.
	NetNS *os.File
	// ResolvConf is the sandbox's /etc/resolv.conf.
	ResolvConf string
	// Agent, when set, makes a long-lived sandbox: its init serves the
	// agent protocol (exec, files, health) on AgentSocket instead of
	// running spec.Command.
	Agent *AgentOptions
	// Persistent keeps the sandbox running after the process that started
	// it exits; a later process re-attaches with Attach. Without it the
	// sandbox dies with its owner.
	Persistent bool
}

// AgentOptions configure the agent of a long-lived sandbox.
type AgentOptions struct {
	// Token authenticates every agent connection. Required.
	Token []byte
	// MaxFileSize caps uploads and downloads (0: the agent's default).
	MaxFileSize int64
}

// StartError is a failed start (see sandbox.StartError).
type StartError = sandbox.StartError

// Result is how a sandbox's command ended.
type Result struct {
	// ExitCode is the shell-style status: the command's exit code, or
	// 128+N for death by signal N.
	ExitCode int `json:"exit_code"`
	// Signal is the signal that killed the command, if one did.
	Signal syscall.Signal `json:"signal,omitempty"`
	// OOMKilled says the kernel OOM killer ended the command at the
	// sandbox's memory limit.
	OOMKilled bool `json:"oom_killed,omitempty"`
	// TimedOut says the sandbox was killed at its timeout.
	TimedOut bool `json:"timed_out,omitempty"`
}

// record is the jail's record in the sandbox directory, written before any
// kernel object exists (and completed once init runs), so that GC can
// always find what to remove and a daemon can re-attach.
type record struct {
	Cgroups []string `json:"cgroups"`
	// CgroupRel and Resources rebuild the cgroup handle on Attach.
	CgroupRel string            `json:"cgroup_rel"`
	Resources sandbox.Resources `json:"resources"`
	// InitPID and InitStart (start time in clock ticks since boot, from
	// /proc/PID/stat) identify init without trusting a reused PID.
	InitPID    int    `json:"init_pid,omitempty"`
	InitStart  uint64 `json:"init_start,omitempty"`
	Agent      bool   `json:"agent,omitempty"`
	Persistent bool   `json:"persistent,omitempty"`
}

const recordName = "jail.json"

// Sandbox is a running jail. It owns the sandbox's cgroup, init process
// and state directory until Wait or Close returns.
type Sandbox struct {
	ID  string
	Key sandbox.Key
	Dir string

	log     *slog.Logger
	root    *state.Root
	claim   *state.Claim // nil when attached: init holds the lock
	pidMu   sync.Mutex
	pidfd   int // names init without a PID race; -1 before start and after Close
	group   *cgroup.Group
	initPID int
	ctl     *initproc.Conn
	master  *os.File // pty master, with TTY

	copies     sync.WaitGroup      // output copies to finish before Wait returns
	exited     chan struct{}       // init has exited
	initErr    error               // from waiting for init
	initStatus *syscall.WaitStatus // how init ended, when known (with initErr)
	status     chan initproc.ExitStatus
	statusDone chan struct{} // readStatus has returned
	ended      chan struct{} // init reported the command's exit status
	timedOut   chan struct{}
	timer      *time.Timer

	closeOnce sync.Once
	closeErr  error
	result    Result

	t0    time.Time
	marks []mark // step timings, logged at debug level

	net     *network.Net  // nil: loopback only
	netOnce sync.Once     // starts closing net (see closeNet)
	netDone chan struct{} // closed when net is closed; netErr is set
	netErr  error
	seccomp *seccomp.Program
	auditor *seccomp.Auditor // with --seccomp-mode audit
	audited chan struct{}    // closed when the auditor has returned
}

// auditCapacity is the number of recent violations an audit keeps.
const auditCapacity = 1024

// compileSeccomp returns the sandbox's filter for this machine: a copy of
// the cached one for a built-in profile.
func (j *Jail) compileSeccomp(sc sandbox.Seccomp, agent bool) (*seccomp.Program, error) {
	builtin := sc.Profile == "" || sc.Profile == seccomp.ProfileDefault || sc.Profile == seccomp.ProfileStrict ||
		sc.Profile == seccomp.ProfileUnconfined
	if !builtin {
		return compileSeccomp(sc, agent)
	}
	key := fmt.Sprintf("%s/%t/%t", sc.Profile, sc.Audit, agent)
	j.progMu.Lock()
	defer j.progMu.Unlock()
	p := j.progs[key]
	if p == nil {
		var err error
		if p, err = compileSeccomp(sc, agent); err != nil {
			return nil, err
		}
		if j.progs == nil {
			j.progs = map[string]*seccomp.Program{}
		}
		j.progs[key] = p
	}
	c := *p
	c.Instructions = slices.Clone(p.Instructions)
	return &c, nil
}

// compileSeccomp compiles the sandbox's filter for this machine.
func compileSeccomp(sc sandbox.Seccomp, agent bool) (*seccomp.Program, error) {
	profile := sc.Profile
	if profile == "" {
		profile = seccomp.ProfileDefault
	}
	mode := seccomp.Enforce
	if sc.Audit {
		if agent {
			return nil, fmt.Errorf("%w: seccomp audit mode: available for ironclaw run, not for long-lived sandboxes", sandbox.ErrUnsupported)
		}
		mode = seccomp.Audit
	}
	arch, err := seccomp.NativeArch()
	if err != nil {
		return nil, err
	}
	return seccomp.Compile(profile, mode, arch)
}

// Seccomp returns the compiled filter every command of the sandbox carries.
// Its Unconfined field says the user asked for no filtering by name.
func (s *Sandbox) Seccomp() *seccomp.Program { return s.seccomp }

// SeccompReport returns the audit of a sandbox in seccomp audit mode, once
// the sandbox has ended (Wait or Close); nil otherwise.
func (s *Sandbox) SeccompReport() *seccomp.Report {
	if s.auditor == nil {
		return nil
	}
	<-s.audited
	r := s.auditor.Report()
	r.Profile = s.seccomp.Profile
	return &r
}

type mark struct {
	step string
	at   time.Duration
}

func (s *Sandbox) mark(step string) { s.marks = append(s.marks, mark{step, time.Since(s.t0)}) }

func (s *Sandbox) logTimeline() {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	attrs := make([]any, 0, 2*len(s.marks))
	for _, m := range s.marks {
		attrs = append(attrs, m.step, m.at.Round(time.Microsecond).String())
	}
	s.log.Debug("sandbox timeline", attrs...)
}

// Start creates a sandbox for spec and starts its command. On error every
// step already done is undone and the error is a *StartError.
func (j *Jail) Start(ctx context.Context, spec sandbox.Spec, opts Options) (_ *Sandbox, err error) {
	if err := spec.Validate(); err != nil {
		return nil, &StartError{Step: "validate", Err: err}
	}
	if opts.Agent == nil && len(spec.Command) == 0 {
		return nil, &StartError{Step: "validate", Err: fmt.Errorf("%w: command: must name a program", sandbox.ErrInvalid)}
	}
	if opts.Agent != nil && len(opts.Agent.Token) < 16 {
		return nil, &StartError{Step: "validate", Err: fmt.Errorf("%w: agent token: want at least 16 bytes", sandbox.ErrInvalid)}
	}
	prog, err := j.compileSeccomp(spec.Seccomp, opts.Agent != nil)
	if err != nil {
		return nil, &StartError{Step: "seccomp", Err: err}
	}
	policy, err := firewall.ParsePolicy(spec.Network.Allow)
	if err != nil {
		return nil, &StartError{Step: "network policy", Err: err}
	}
	if err := j.cfg.Cgroups.Check(spec.Resources); err != nil {
		return nil, &StartError{Step: "cgroup", Err: err}
	}
	if opts.Persistent && policy.Networked() {
		// The egress proxy, DNS stub and pool slot lock of a sandbox
		// network live in the process that made it; a persistent
		// sandbox outlives that process.
		return nil, &StartError{Step: "validate", Err: fmt.Errorf("%w: a persistent sandbox cannot have --allow rules yet (its egress servers live in the process that starts it)", sandbox.ErrUnsupported)}
	}
	// undo holds the rollback of every step done so far. If any rollback
	// step fails, the state directory and its records are kept (unlocked)
	// so that the next start or `ironclaw gc` can reclaim what is left.
	var undo []func() error
	claim, err := j.claim(spec.ID)
	if err != nil {
		return nil, &StartError{Step: "claim state", Err: err}
	}
	defer func() {
		if err == nil {
			return
		}
		var failed []error
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				failed = append(failed, uerr)
			}
		}
		if len(failed) == 0 {
			if rerr := claim.Release(); rerr == nil {
				return
			} else {
				failed = append(failed, rerr)
			}
		}
		claim.Abandon()
		j.cfg.Logger.Warn("rollback incomplete: kept the state directory for gc", "sandbox", spec.ID, "err", errors.Join(failed...))
		var se *StartError
		if errors.As(err, &se) {
			se.Err = fmt.Errorf("%w (rollback incomplete, run `ironclaw gc`: %v)", se.Err, errors.Join(failed...))
		}
	}()
	s := &Sandbox{
		ID: spec.ID, Key: claim.Key, Dir: claim.Dir,
		log:        j.cfg.Logger.With("sandbox", spec.ID),
		claim:      claim,
		pidfd:      -1,
		root:       j.cfg.Root,
		exited:     make(chan struct{}),
		status:     make(chan initproc.ExitStatus, 1),
		statusDone: make(chan struct{}),
		ended:      make(chan struct{}),
		timedOut:   make(chan struct{}),
		t0:         time.Now(),
	}
	rel := cgroup.SandboxRel(j.cfg.Root.Name(), string(claim.Key))
	rec := record{Cgroups: j.cfg.Cgroups.Paths(rel, spec.Resources), CgroupRel: rel, Resources: spec.Resources,
		Agent: opts.Agent != nil, Persistent: opts.Persistent}
	if opts.Agent != nil {
		if child := j.cfg.Cgroups.PidsChildPath(rel, spec.Resources, workloadGroup); child != "" {
			rec.Cgroups = append([]string{child}, rec.Cgroups...)
		}
	}
	if err := state.WriteJSON(filepath.Join(claim.Dir, recordName), rec); err != nil {
		return nil, &StartError{Step: "record", Err: err}
	}
	s.group, err = j.cfg.Cgroups.Create(rel, spec.Resources)
	if err != nil {
		return nil, &StartError{Step: "cgroup", Err: err}
	}
	s.mark("cgroup")
	undo = append(undo, s.group.Destroy)
	// On cgroup v1, moving init into the group below waits for an RCU
	// grace period; starting that wait now overlaps it with the rest of
	// the setup. (Not before Create: the waiting writer holds the
	// cgroup_mutex that making a group needs.)
	_ = j.cfg.Cgroups.PrimeMigration(spec.Resources)

	if policy.Networked() {
		// The network's own record (net.json) is written before any of
		// its objects exist; GC reclaims from it. A pool slot's policy
		// is installed while init starts (until then the slot has the
		// rules it was prepared with, and only init runs in it);
		// handshake waits for it before the command.
		s.net, err = network.Begin(ctx, j.cfg.Network, claim.Dir, claim.Key, policy)
		if err != nil {
			return nil, &StartError{Step: "network", Err: err}
		}
		undo = append(undo, func() error { return s.net.Close() })
		opts.NetNS = s.net.File()
		opts.ResolvConf = string(s.net.ResolvConf())
		s.mark("network")
	}

	icfg, files, err := j.prepare(spec, opts, claim.Dir)
	defer func() { initproc.CloseAll(files) }() // files grows below
	if err != nil {
		return nil, err
	}
	icfg.Seccomp = prog
	s.seccomp = prog
	s.mark("prepare")

	// The control socket: the host's end is close-on-exec, init's end
	// becomes fd 3.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &StartError{Step: "control socket", Err: err}
	}
	hostEnd, initEnd := os.NewFile(uintptr(pair[0]), "ctl"), os.NewFile(uintptr(pair[1]), "ctl-init")
	defer initEnd.Close()
	s.ctl, err = initproc.NewConn(hostEnd)
	if err != nil {
		return nil, &StartError{Step: "control socket", Err: err}
	}
	undo = append(undo, func() error { s.ctl.Close(); return nil })

	stdio, err := s.plumb(opts.IO, spec.TTY)
	defer initproc.CloseAll(stdio)
	if err != nil {
		return nil, &StartError{Step: "stdio", Err: err}
	}
	undo = append(undo, func() error { s.closeIO(); return nil })

	// Init keeps the state directory's lock for the sandbox's life.
	var workTasks *os.File
	if opts.Agent != nil {
		if workTasks, err = s.group.SplitPids(workloadGroup, spec.Resources); err != nil {
			return nil, &StartError{Step: "cgroup", Err: err}
		}
	}
	lockDup, err := dupFile(claim.LockFile())
	if err != nil {
		return nil, &StartError{Step: "lock", Err: err}
	}
	icfg.LockFD = 3 + len(files) + 1
	files = append(files, lockDup)
	if opts.Agent != nil {
		lf, err := listenAgent(claim.Dir)
		if err != nil {
			return nil, &StartError{Step: "agent socket", Err: err}
		}
		icfg.Agent = &initproc.AgentInit{ListenFD: 3 + len(files) + 1, Token: opts.Agent.Token, MaxFileSize: opts.Agent.MaxFileSize}
		files = append(files, lf)
		if workTasks != nil {
			icfg.Agent.WorkTasksFD = 3 + len(files) + 1
			files = append(files, workTasks)
		}
	}
	icfg.Persistent = opts.Persistent

	// Init is executed through an O_PATH descriptor of its binary, so
	// the binary's directory need not be searchable by the sandbox's
	// unprivileged host uid.
	exe, err := os.OpenFile(j.cfg.Exe, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &StartError{Step: "start init", Err: fmt.Errorf("open init binary: %w", err)}
	}
	icfg.Protocol = initproc.ProtocolVersion
	icfg.ExeFD = 3 + len(files) + 1
	files = append(files, exe)

	cmd := &exec.Cmd{
		Path: fmt.Sprintf("/proc/self/fd/%d", icfg.ExeFD),
		Args: []string{InitArg0, j.cfg.Root.Name()}, // the name makes leaks attributable
		// One P: init is a supervisor and, in long-lived sandboxes, an
		// agent that mostly idles; each P costs idle threads (and their
		// stacks) for the sandbox's whole life. With 1 the idle agent's
		// Pss went from 1.35 to 1.06 MiB (./scripts/bench daemon).
		Env:        []string{"GOMAXPROCS=1"},
		Stdin:      stdio[0],
		Stdout:     stdio[1],
		Stderr:     stdio[2],
		ExtraFiles: append([]*os.File{initEnd}, files...),
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS |
				syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
			UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(j.cfg.UIDBase), Size: sandbox.MappedIDs}},
			GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(j.cfg.UIDBase), Size: sandbox.MappedIDs}},
			GidMappingsEnableSetgroups: true,
			// Become uid 0 of the new namespace (host UIDBase); without it
			// init would keep host root's uid, which is unmapped there.
			Credential: &syscall.Credential{Uid: 0, Gid: 0},
			Pdeathsig:  syscall.SIGKILL,
			Setsid:     true,
		},
	}
	if opts.NetNS == nil {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNET
	}
	if opts.Persistent {
		cmd.SysProcAttr.Pdeathsig = 0
	}
	cgFD, err := s.group.Open()
	if err != nil {
		return nil, &StartError{Step: "cgroup", Err: err}
	}
	if cgFD != nil {
		defer cgFD.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgFD.Fd())
	}
	icfg.Epoch = time.Now().UnixNano()
	spawn := s.spawn
	if j.spawner != nil && opts.Persistent {
		spawn = func(cmd *exec.Cmd, netns *os.File) error { return s.spawnVia(j.spawner, cmd, netns) }
	}
	if err := spawn(cmd, opts.NetNS); err != nil {
		return nil, &StartError{Step: "start init", Err: err}
	}
	s.mark("spawn")
	undo = append(undo, func() error {
		_ = s.kill(syscall.SIGKILL)
		<-s.exited
		return nil
	})
	// Init's start time is read before it gets its config: with the
	// config it may fail (a command not found) and be reaped at once, and
	// its own report of why must win over "process gone".
	rec.InitPID = s.initPID
	if rec.InitStart, err = state.ProcStart(s.initPID); err != nil {
		return nil, &StartError{Step: "record", Err: err}
	}
	// Init builds its root while the host records it and moves it into
	// the cgroup; on cgroup v2 it was cloned straight into it.
	if err := s.ctl.Send(initproc.HostMsg{Config: icfg}); err != nil {
		return nil, &StartError{Step: "configure init", Err: err}
	}
	if err := state.WriteJSON(filepath.Join(claim.Dir, recordName), rec); err != nil {
		return nil, &StartError{Step: "record", Err: err}
	}
	if cgFD == nil {
		// ESRCH: init already died, and the handshake reports why.
		if err := s.group.AddProc(s.initPID); err != nil && !errors.Is(err, syscall.ESRCH) {
			return nil, &StartError{Step: "cgroup", Err: err}
		}
	}
	// A closed control socket means init has ended: the handshake then
	// reads the error init sent before it did (or reports its death).
	if err := s.ctl.Send(initproc.HostMsg{Placed: true}); err != nil &&
		!errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		return nil, &StartError{Step: "configure init", Err: err}
	}
	s.mark("placed")
	if err := s.handshake(ctx); err != nil {
		return nil, err
	}
	s.mark("started")
	if spec.Timeout > 0 {
		s.timer = time.AfterFunc(spec.Timeout, func() {
			close(s.timedOut)
			_ = s.kill(syscall.SIGKILL)
		})
	}
	go s.readStatus()
	s.log.Debug("sandbox started", "init_pid", s.initPID)
	return s, nil
}

// claim takes the state directory of id, reclaiming a leftover of a dead
// owner first.
func (j *Jail) claim(id string) (*state.Claim, error) {
	c, leftover, err := j.cfg.Root.Claim(id)
	if leftover != nil {
		if err := Reclaim(leftover.Dir); err != nil {
			leftover.Abandon() // keep its records for the next attempt
			return nil, fmt.Errorf("reclaim leftover of %q: %w", id, err)
		}
		if err := leftover.Release(); err != nil {
			return nil, err
		}
		c, _, err = j.cfg.Root.Claim(id)
	}
	return c, err
}

// spawn starts init from a goroutine locked to its OS thread, for init's
// whole life when there is a parent-death signal (it is tied to the thread
// that forked). Without one (a persistent sandbox) the thread goes back to
// the runtime once init runs: a daemon would otherwise keep, create and
// destroy one OS thread per sandbox. A network namespace joined for the
// fork is left right after it.
func (s *Sandbox) spawn(cmd *exec.Cmd, netns *os.File) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread joins the sandbox's network namespace for the fork
		// only, and goes back at once: a thread left in it would keep
		// the namespace alive (the runtime cannot end the process's main
		// thread, which may well be this one; it parks it for good). One
		// that cannot go back is never unlocked, and the runtime discards
		// it when this goroutine ends.
		back := true
		var err error
		if netns != nil {
			back, err = s.forkIn(cmd, netns)
		} else {
			err = s.start(cmd)
		}
		if err != nil {
			if back {
				runtime.UnlockOSThread()
			}
			started <- err
			return
		}
		started <- nil
		if back && cmd.SysProcAttr.Pdeathsig == 0 {
			runtime.UnlockOSThread()
			// A waitid blocked for init's whole life would hold an OS
			// thread just the same: wait for the exit in the netpoller
			// first, then reap.
			waitExited(cmd.Process.Pid)
		}
		s.initErr = cmd.Wait()
		if cmd.ProcessState != nil {
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
				s.initStatus = &ws
			}
		}
		close(s.exited)
		if back {
			runtime.UnlockOSThread() // a no-op if already unlocked above
		}
	}()
	return <-started
}

// start starts init from the calling (locked) thread, with a pidfd.
func (s *Sandbox) start(cmd *exec.Cmd) error {
	// A pidfd names init for every later signal: its PID may be
	// reused once init is reaped, the pidfd cannot be.
	pidfd := -1
	cmd.SysProcAttr.PidFD = &pidfd
	if err := cmd.Start(); err != nil {
		return err
	}
	s.initPID = cmd.Process.Pid
	s.pidfd = pidfd
	return nil
}

// forkIn starts init from the calling (locked) thread moved into netns for
// the fork. It reports whether the thread is back in its own namespace.
func (s *Sandbox) forkIn(cmd *exec.Cmd, netns *os.File) (back bool, err error) {
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return true, fmt.Errorf("open this thread's network namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("join network namespace: %w", err)
	}
	err = s.start(cmd)
	return unix.Setns(orig, unix.CLONE_NEWNET) == nil, err
}

// spawnVia starts init through the spawner sp instead (a persistent
// sandbox: no parent-death signal to keep).
func (s *Sandbox) spawnVia(sp *spawner.Client, cmd *exec.Cmd, netns *os.File) error {
	files := append([]*os.File{cmd.Stdin.(*os.File), cmd.Stdout.(*os.File), cmd.Stderr.(*os.File)}, cmd.ExtraFiles...)
	child, err := sp.Spawn(spawner.Spec{Path: cmd.Path, Args: cmd.Args, Env: cmd.Env, Files: files, NetNS: netns, Sys: cmd.SysProcAttr})
	if err != nil {
		return err
	}
	s.initPID = child.PID
	s.pidfd = child.PidFD
	go func() {
		<-child.Done()
		if ws, ok := child.Status(); ok {
			s.initStatus = &ws
			if ws.Signaled() {
				s.initErr = fmt.Errorf("signal: %v", ws.Signal())
			} else if ws.ExitStatus() != 0 {
				s.initErr = fmt.Errorf("exit status %d", ws.ExitStatus())
			}
		} else {
			s.initErr = errors.New("ended (status unknown: its spawner ended first)")
		}
		close(s.exited)
	}()
	return nil
}

// waitExited returns once the child pid has exited (a pidfd of it polls
// readable then), waiting in the runtime's netpoller rather than in a
// blocked system call. On any error it returns at once, and the caller's
// waitid blocks instead. The pidfd is a fresh one opened non-blocking
// (pid is an unreaped child, so it cannot name another process): setting
// O_NONBLOCK on a duplicate of the sandbox's pidfd would also make the
// caller's waitid on that open file return EAGAIN early.
func waitExited(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return n > 0 || (err != nil && err != unix.EINTR)
	})
}

// handshake runs init's side of the start: it waits for init to report a
// confined launching thread, verifies that thread from the kernel's side,
// lets init start the command and waits for it to have started.
func (s *Sandbox) handshake(ctx context.Context) error {
	msgs := make(chan initproc.InitMsg, 1)
	errc := make(chan error, 1)
	var attached []*os.File
	next := func() {
		go func() {
			var m initproc.InitMsg
			files, err := s.ctl.Recv(&m)
			if err != nil {
				errc <- err
				return
			}
			if m.Ready != nil {
				attached = files
			} else {
				initproc.CloseAll(files)
			}
			msgs <- m
		}()
	}
	wait := func() (initproc.InitMsg, error) {
		select {
		case m := <-msgs:
			if m.Error != nil {
				return m, stepErr(m.Error)
			}
			return m, nil
		case err := <-errc:
			<-s.exited
			return initproc.InitMsg{}, &StartError{Step: "init", Err: fmt.Errorf("init exited during start: %v (control: %w)", s.initErr, err)}
		case <-ctx.Done():
			return initproc.InitMsg{}, &StartError{Step: "start", Err: ctx.Err()}
		}
	}
	next()
	m, err := wait()
	if err != nil {
		return err
	}
	if m.Ready == nil {
		return &StartError{Step: "init", Err: errors.New("protocol error: expected ready")}
	}
	if s.seccomp.Mode == seccomp.Audit {
		if len(attached) != 1 {
			initproc.CloseAll(attached)
			return &StartError{Step: "seccomp", Err: errors.New("init sent no audit listener")}
		}
		s.auditor = seccomp.NewAuditor(attached[0], auditCapacity, s.log)
		s.audited = make(chan struct{})
		go func() {
			defer close(s.audited)
			if err := s.auditor.Run(context.Background()); err != nil {
				s.log.Warn("seccomp audit", "err", err)
			}
		}()
	} else {
		initproc.CloseAll(attached)
	}
	s.mark("ready")
	if len(m.Ready.Steps) > 0 {
		s.log.Debug("init timeline", "steps", strings.Join(m.Ready.Steps, " "))
	}
	if err := verifyThread(s.initPID, m.Ready.TID); err != nil {
		return &StartError{Step: "verify confinement", Err: err}
	}
	if s.net != nil {
		// Fail closed: the command starts only once the network's
		// rules are applied, read back and verified.
		if err := s.net.Wait(ctx); err != nil {
			return &StartError{Step: "network", Err: err}
		}
		s.mark("network ready")
	}
	if err := s.ctl.Send(initproc.HostMsg{Go: true}); err != nil {
		return &StartError{Step: "start command", Err: err}
	}
	next()
	m, err = wait()
	if err != nil {
		return err
	}
	if m.Started == nil {
		return &StartError{Step: "init", Err: errors.New("protocol error: expected started")}
	}
	return nil
}

func stepErr(e *initproc.StepError) error {
	err := errors.New(e.Message)
	switch {
	case strings.Contains(e.Message, ErrCommandNotFound.Error()):
		err = fmt.Errorf("%s: %w", strings.TrimSuffix(e.Message, ": "+ErrCommandNotFound.Error()), ErrCommandNotFound)
	case e.Errno != 0:
		err = errnoError{e.Message, syscall.Errno(e.Errno)}
	}
	return &StartError{Step: e.Step, Err: err}
}

// errnoError is an error from init whose cause has an errno, so that
// errors.Is(err, syscall.EACCES) works across the process boundary.
type errnoError struct {
	msg   string
	errno syscall.Errno
}

func (e errnoError) Error() string { return e.msg }
func (e errnoError) Unwrap() error { return e.errno }

// verifyThread reads the status of init's launching thread (tid inside the
// sandbox's PID namespace) and requires what the command will inherit:
// no_new_privs and an empty capability bounding set.
func verifyThread(initPID, nsTID int) error {
	st, err := findThread(initPID, nsTID)
	if err != nil {
		return err
	}
	return initproc.CheckConfined(st)
}

// findThread returns the /proc status fields of the thread of process pid
// whose ID in the innermost PID namespace is nsTID.
func findThread(pid, nsTID int) (map[string]string, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list threads of init: %w", err)
	}
	want := strconv.Itoa(nsTID)
	for _, e := range ents {
		st, err := initproc.ReadStatus(filepath.Join(dir, e.Name(), "status"))
		if err != nil {
			continue // thread exited
		}
		ids := strings.Fields(st["NSpid"])
		if len(ids) > 0 && ids[len(ids)-1] == want {
			return st, nil
		}
	}
	return nil, fmt.Errorf("launching thread %d of init %d not found", nsTID, pid)
}

// readStatus collects the command's exit status from init, if init gets
// to send one.
func (s *Sandbox) readStatus() {
	defer close(s.statusDone)
	for {
		var m initproc.InitMsg
		files, err := s.ctl.Recv(&m)
		initproc.CloseAll(files)
		if err != nil {
			return
		}
		if m.Exited != nil {
			s.status <- *m.Exited
			close(s.ended)
			return
		}
	}
}

// PID returns the host PID of the sandbox's init.
func (s *Sandbox) PID() int { return s.initPID }

// Group returns the sandbox's cgroup.
func (s *Sandbox) Group() *cgroup.Group { return s.group }

// Signal sends sig to init, which forwards it to the command's process group.
func (s *Sandbox) Signal(sig syscall.Signal) error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	if err := s.kill(sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal sandbox: %w", err)
	}
	return nil
}

// ResizeTTY sets the size of the sandbox's terminal, with TTY.
func (s *Sandbox) ResizeTTY(rows, cols uint16) error {
	if s.master == nil {
		return nil
	}
	return pty.Setsize(s.master, &pty.Winsize{Rows: rows, Cols: cols})
}

// Wait waits for the command to end, tears the sandbox down and reports
// how the command ended.
func (s *Sandbox) Wait() (Result, error) {
	select {
	case <-s.exited:
	case <-s.ended:
		// The command has ended and init is on its way out, taking
		// every process of the sandbox with it: the network is closed
		// while that happens, off the exit path.
		s.closeNet()
		<-s.exited
	}
	err := s.Close()
	return s.result, err
}

// Close kills the sandbox if it still runs, removes every kernel object
// and file it owns, and releases its ID. It is idempotent.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() {
		if s.timer != nil {
			s.timer.Stop()
		}
		_ = s.kill(syscall.SIGKILL)
		s.closeNet()
		<-s.exited
		s.mark("exited")
		s.result = s.collect()
		if s.ctl != nil {
			s.ctl.Close()
		}
		s.copies.Wait()
		s.closeIO()
		var errs []error
		if err := s.group.Destroy(); err != nil {
			errs = append(errs, err)
		}
		s.mark("cgroup removed")
		if s.net != nil {
			<-s.netDone
			if s.netErr != nil {
				errs = append(errs, s.netErr)
			}
			s.mark("network removed")
		}
		claim := s.claim
		if len(errs) > 0 {
			// Something the records name is still there: keep them for
			// gc rather than forget it.
			if claim != nil {
				claim.Abandon()
			}
			claim = nil
		} else if claim == nil {
			// Attached: the lock went with init; take it to remove the dir.
			var err error
			if claim, err = s.root.TakeOver(s.Key, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		if claim != nil {
			if err := claim.Release(); err != nil {
				errs = append(errs, err)
			}
		}
		s.pidMu.Lock()
		if s.pidfd >= 0 {
			unix.Close(s.pidfd)
			s.pidfd = -1
		}
		s.pidMu.Unlock()
		s.mark("released")
		s.logTimeline()
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// closeNet starts closing the sandbox's network, once: it only takes
// away what the sandbox may still reach, so it may run while the sandbox's
// processes die. Close waits for it (netDone).
func (s *Sandbox) closeNet() {
	s.netOnce.Do(func() {
		s.netDone = make(chan struct{})
		if s.net == nil {
			close(s.netDone)
			return
		}
		go func() {
			defer close(s.netDone)
			s.netErr = s.net.Close()
		}()
	})
}

// kill signals init through its pidfd. After Close there is no init to
// signal.
func (s *Sandbox) kill(sig syscall.Signal) error {
	s.pidMu.Lock()
	defer s.pidMu.Unlock()
	if s.pidfd < 0 {
		return syscall.ESRCH
	}
	return unix.PidfdSendSignal(s.pidfd, sig, nil, 0)
}

// Done is closed when the sandbox's init has exited.
func (s *Sandbox) Done() <-chan struct{} { return s.exited }

// Attach re-attaches to the persistent sandbox id, started by a process
// that has since exited (a daemon before its restart). It fails with
// sandbox.ErrNotFound when the sandbox is not alive; GC reclaims it then.
func (j *Jail) Attach(id string) (*Sandbox, error) {
	k := sandbox.KeyOf(id)
	dir := j.cfg.Root.SandboxDir(k)
	var rec record
	if err := state.ReadJSON(filepath.Join(dir, recordName), &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("attach %q: %w", id, sandbox.ErrNotFound)
		}
		return nil, fmt.Errorf("attach %q: %w", id, err)
	}
	if !rec.Persistent || rec.InitPID == 0 {
		return nil, fmt.Errorf("attach %q: not a persistent sandbox", id)
	}
	// The group handle is rebuilt from CgroupRel (usage and OOM kills are
	// read through it, Close destroys its directories): it must be the
	// sandbox's own, also when the record lists no directories.
	if rel := cgroup.SandboxRelOf(dir); rec.CgroupRel != rel {
		return nil, fmt.Errorf("attach %q: record names cgroup %q, not the sandbox's %s", id, rec.CgroupRel, rel)
	} else if err := cgroup.CheckRecorded(rec.Cgroups, rel); err != nil {
		return nil, fmt.Errorf("attach %q: %w", id, err)
	}
	pidfd, err := unix.PidfdOpen(rec.InitPID, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %q: init is gone: %w", id, sandbox.ErrNotFound)
	}
	// The pidfd pins the process; now check it is the recorded init.
	if start, err := state.ProcStart(rec.InitPID); err != nil || start != rec.InitStart {
		unix.Close(pidfd)
		return nil, fmt.Errorf("attach %q: init is gone (PID reused): %w", id, sandbox.ErrNotFound)
	}
	s := &Sandbox{
		ID: id, Key: k, Dir: dir,
		log:        j.cfg.Logger.With("sandbox", id),
		root:       j.cfg.Root,
		pidfd:      pidfd,
		initPID:    rec.InitPID,
		group:      j.cfg.Cgroups.LoadPaths(rec.CgroupRel, rec.Resources, rec.Cgroups),
		exited:     make(chan struct{}),
		status:     make(chan initproc.ExitStatus, 1),
		statusDone: make(chan struct{}),
		ended:      make(chan struct{}),
		timedOut:   make(chan struct{}),
		t0:         time.Now(),
	}
	close(s.statusDone)
	go func() {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		close(s.exited)
	}()
	return s, nil
}

// collect works out the Result once init has exited.
func (s *Sandbox) collect() Result {
	var r Result
	// Init's last message is in the socket before its exit; the reader
	// returns at that message or at EOF.
	<-s.statusDone
	select {
	case st := <-s.status:
		r = Result{ExitCode: st.Code, Signal: syscall.Signal(st.Signal)}
	default:
		// Init died without reporting: it was killed (timeout, OOM,
		// Close), which killed the whole sandbox.
		r = Result{ExitCode: 128 + int(syscall.SIGKILL), Signal: syscall.SIGKILL}
		if ws := s.initStatus; ws != nil && ws.Signaled() {
			r = Result{ExitCode: 128 + int(ws.Signal()), Signal: ws.Signal()}
		}
	}
	select {
	case <-s.timedOut:
		r.TimedOut = true
	default:
	}
	if r.Signal == syscall.SIGKILL {
		if n, err := s.group.OOMKills(); err == nil && n > 0 {
			r.OOMKilled = true
		}
	}
	return r
}

// Reclaim removes what a sandbox whose owner died left behind in its
// state directory dir: the processes and cgroups named in its record.
// Mounts need no reclaiming: they lived in the sandbox's own mount
// namespace and died with its last process.
func Reclaim(dir string) error {
	var rec record
	if err := state.ReadJSON(filepath.Join(dir, recordName), &rec); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read jail record: %w", err)
		}
		// Died before making a cgroup; the network may still have a record.
	}
	if err := cgroup.CheckRecorded(rec.Cgroups, cgroup.SandboxRelOf(dir)); err != nil {
		return fmt.Errorf("reclaim cgroups: %w", err)
	}
	if err := cgroup.Remove(rec.Cgroups); err != nil {
		return fmt.Errorf("reclaim cgroups: %w", err)
	}
	// The network outlives no process: its namespace is a bind mount,
	// its links and rules are named in net.json.
	if err := network.Reclaim(dir); err != nil {
		return fmt.Errorf("reclaim network: %w", err)
	}
	return nil
}

// UpdateNetwork replaces the egress policy of a running networked
// sandbox atomically; connections the new policy does not allow are cut.
// A sandbox started without network rules has no link to give rules to.
func (s *Sandbox) UpdateNetwork(ctx context.Context, allow []string) error {
	return s.updateNetwork(ctx, allow, (*network.Net).Update)
}

// UpdateUnusedNetwork is UpdateNetwork for a sandbox that has run no
// command yet, such as a warm pool member being handed out: there are no
// connections to cut (see network.Net.UpdateUnused).
func (s *Sandbox) UpdateUnusedNetwork(ctx context.Context, allow []string) error {
	return s.updateNetwork(ctx, allow, (*network.Net).UpdateUnused)
}

func (s *Sandbox) updateNetwork(ctx context.Context, allow []string, update func(*network.Net, context.Context, firewall.Policy) error) error {
	policy, err := firewall.ParsePolicy(allow)
	if err != nil {
		return err
	}
	if s.net == nil {
		return fmt.Errorf("%w: update network of %q: it was started without --allow rules (loopback only); its network namespace has no link", sandbox.ErrUnsupported, s.ID)
	}
	return update(s.net, ctx, policy)
}

// Network returns the sandbox's network, or nil for loopback only.
func (s *Sandbox) Network() *network.Net { return s.net }

// prepare builds init's config and clones every host path the sandbox
// binds into a detached mount, passed to init from fd 4 on.
func (j *Jail) prepare(spec sandbox.Spec, opts Options, dir string) (*initproc.Config, []*os.File, error) {
	newRoot := filepath.Join(dir, "root")
	if err := os.Mkdir(newRoot, 0o755); err != nil {
		return nil, nil, &StartError{Step: "create root", Err: err}
	}
	cfg := &initproc.Config{
		Hostname: sandbox.Hostname(spec.ID),
		NewRoot:  newRoot,
		Symlinks: map[string]string{},
		Command:  spec.Command,
		User:     spec.User,
		Cwd:      sandbox.Workspace,
		TTY:      spec.TTY,
		Loopback: opts.NetNS == nil,
		Trace:    j.cfg.Logger.Enabled(context.Background(), slog.LevelDebug),
	}
	cfg.Env = sandbox.MergeEnv(baseEnv(spec, cfg.Hostname), spec.Env...)
	cfg.Etc = etcFiles(spec.User, cfg.Hostname, opts.ResolvConf)
	cfg.Rlimits = rlimits(spec.Resources)

	var files []*os.File
	add := func(hostPath, target string, writable, system bool) error {
		st, err := os.Stat(hostPath)
		if err != nil {
			return err
		}
		f, err := detachedBind(hostPath, writable)
		if err != nil {
			return err
		}
		files = append(files, f)
		cfg.Sources = append(cfg.Sources, initproc.BindSource{
			FD: 3 + len(files), Target: target, Writable: writable, Dir: st.IsDir(), System: system,
		})
		return nil
	}
	fail := func(step string, err error) (*initproc.Config, []*os.File, error) {
		return nil, files, &StartError{Step: step, Err: err}
	}

	src := "/"
	sys := systemDirs
	if spec.Rootfs != "" {
		src = spec.Rootfs
		var err error
		if sys, err = rootfsEntries(src); err != nil {
			return fail("rootfs", err)
		}
	}
	for _, name := range sys {
		p := filepath.Join(src, name)
		st, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			continue
		case err != nil:
			return fail("mount "+name, err)
		case st.Mode()&os.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return fail("mount "+name, err)
			}
			cfg.Symlinks[name] = t
		default:
			if err := add(p, name, false, true); err != nil {
				return fail("mount "+name, err)
			}
		}
	}
	etc, err := etcEntries(src, spec.Rootfs != "")
	if err != nil {
		return fail("mount /etc", err)
	}
	for _, name := range etc {
		p := filepath.Join(src, name)
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if st.Mode()&os.ModeSymlink != 0 {
			if t, err := os.Readlink(p); err == nil {
				cfg.Symlinks[name] = t
			}
			continue
		}
		if err := add(p, name, false, false); err != nil {
			return fail("mount "+name, err)
		}
	}

	work := spec.Workdir
	if work == "" {
		work = filepath.Join(dir, "workspace")
		if err := os.Mkdir(work, 0o755); err != nil {
			return fail("workspace", err)
		}
		if err := os.Chown(work, int(j.cfg.UIDBase+spec.User.UID), int(j.cfg.UIDBase+spec.User.GID)); err != nil {
			return fail("workspace", err)
		}
	}
	if err := add(work, sandbox.Workspace, true, false); err != nil {
		return fail("workspace", err)
	}
	mounts := append([]sandbox.Mount(nil), spec.Mounts...)
	sort.SliceStable(mounts, func(a, b int) bool { return mounts[a].Target < mounts[b].Target })
	for _, m := range mounts {
		if err := add(m.Source, m.Target, m.Writable, false); err != nil {
			return fail("mount "+m.Target, err)
		}
	}
	return cfg, files, nil
}

// defaultInitExe picks the init binary: ironclaw-agent next to this
// executable if it is there, else this executable.
func defaultInitExe() string {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "ironclaw-agent")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return "/proc/self/exe"
}

// workloadGroup names the pids cgroup a long-lived sandbox's commands run
// in, below the sandbox's own (threaded on cgroup v2).
const workloadGroup = "work"

// AgentSocket returns the path of the Unix socket a long-lived sandbox's
// agent listens on. It lives in the state directory, outside the sandbox.
func (s *Sandbox) AgentSocket() string { return filepath.Join(s.Dir, agentSocketName) }

const agentSocketName = "agent.sock"

// listenAgent creates the agent's listening socket, readable by root only.
func listenAgent(dir string) (*os.File, error) {
	path := filepath.Join(dir, agentSocketName)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, err
	}
	return l.File()
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// detachedBind makes a detached recursive bind mount of hostPath with its
// final attributes (read-only unless writable; nosuid and nodev always) and
// returns its descriptor. Init, which runs as an unprivileged host uid and
// in another mount namespace, attaches it with move_mount(2); it needs no
// access to the host path itself, and the path is resolved once, here.
func detachedBind(hostPath string, writable bool) (*os.File, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, hostPath, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return nil, fmt.Errorf("clone mount of %s: %w", hostPath, err)
	}
	attr := uint64(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
	if !writable {
		attr |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: attr}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set attributes of %s: %w", hostPath, err)
	}
	return os.NewFile(uintptr(fd), hostPath), nil
}

// systemDirs are the host directories a sandbox sees, read-only.
var systemDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

// hostEtc are the host /etc entries a sandbox sees, read-only: what the
// dynamic linker, TLS libraries, Debian's alternatives and common
// interpreters need. Everything else in /etc stays hidden.
var hostEtc = []string{
	"/etc/alternatives", "/etc/ca-certificates", "/etc/ca-certificates.conf",
	"/etc/debian_version", "/etc/gai.conf", "/etc/ld.so.cache", "/etc/ld.so.conf",
	"/etc/ld.so.conf.d", "/etc/localtime", "/etc/mime.types", "/etc/os-release",
	"/etc/protocols", "/etc/services", "/etc/ssl/certs", "/etc/ssl/openssl.cnf",
	"/etc/timezone", "/etc/python3", "/etc/python3.11", "/etc/bash.bashrc",
	"/etc/profile", "/etc/inputrc", "/etc/terminfo", "/etc/magic",
}

// generatedEtc are the /etc files IronClaw writes itself.
var generatedEtc = []string{"passwd", "group", "hosts", "hostname", "resolv.conf", "nsswitch.conf"}

// rootfsEntries lists the top-level entries of a prepared root directory,
// minus the ones IronClaw provides itself.
func rootfsEntries(root string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		switch e.Name() {
		case "proc", "dev", "sys", "tmp", "etc", "workspace":
			continue
		}
		out = append(out, "/"+e.Name())
	}
	return out, nil
}

// etcEntries lists the /etc entries to bind: the curated host list, or
// everything in a rootfs's /etc except the generated files.
func etcEntries(root string, isRootfs bool) ([]string, error) {
	if !isRootfs {
		return hostEtc, nil
	}
	ents, err := os.ReadDir(filepath.Join(root, "etc"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !contains(generatedEtc, e.Name()) {
			out = append(out, "/etc/"+e.Name())
		}
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// DefaultPath is the PATH a sandbox's command gets unless the spec sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func baseEnv(spec sandbox.Spec, hostname string) []string {
	env := []string{
		"PATH=" + DefaultPath,
		"HOME=" + sandbox.Workspace,
		"USER=" + sandbox.UserName(spec.User.UID),
		"LOGNAME=" + sandbox.UserName(spec.User.UID),
		"HOSTNAME=" + hostname,
		"LANG=C.UTF-8",
	}
	if spec.TTY {
		t := os.Getenv("TERM")
		if t == "" {
			t = "xterm"
		}
		env = append(env, "TERM="+t)
	}
	return env
}

func etcFiles(u sandbox.User, hostname, resolv string) map[string]string {
	passwd := "root:x:0:0:root:/root:/bin/sh\n" +
		"sandbox:x:1000:1000:sandbox:/workspace:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
	group := "root:x:0:\ntty:x:5:\nsandbox:x:1000:\nnogroup:x:65534:\n"
	if n := sandbox.UserName(u.UID); strings.HasPrefix(n, "user") {
		passwd += fmt.Sprintf("%s:x:%d:%d::/workspace:/bin/sh\n", n, u.UID, u.GID)
	}
	if u.GID != 0 && u.GID != 5 && u.GID != 1000 && u.GID != 65534 {
		group += fmt.Sprintf("group%d:x:%d:\n", u.GID, u.GID)
	}
	if resolv == "" {
		resolv = "# This sandbox has no network access beyond loopback.\n"
	}
	return map[string]string{
		"passwd":        passwd,
		"group":         group,
		"hostname":      hostname + "\n",
		"hosts":         "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + hostname + "\n",
		"resolv.conf":   resolv,
		"nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
	}
}

func rlimits(r sandbox.Resources) []initproc.Rlimit {
	out := []initproc.Rlimit{{Resource: unix.RLIMIT_CORE}}
	if r.NoFile > 0 {
		out = append(out, initproc.Rlimit{Resource: unix.RLIMIT_NOFILE, Cur: r.NoFile, Max: r.NoFile})
	}
	if r.FileSize > 0 {
		out = append(out, initproc.Rlimit{Resource: unix.RLIMIT_FSIZE, Cur: uint64(r.FileSize), Max: uint64(r.FileSize)})
	}
	return out
}

// plumb returns the command's stdin, stdout and stderr as files, starting
// the copies a pipe or terminal needs.
func (s *Sandbox) plumb(io IO, tty bool) ([]*os.File, error) {
	if tty {
		master, slave, err := pty.Open()
		if err != nil {
			return nil, fmt.Errorf("open pty: %w", err)
		}
		s.master = master
		if f, ok := io.Stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			if ws, err := pty.GetsizeFull(f); err == nil {
				_ = pty.Setsize(master, ws)
			}
		}
		if io.Stdin != nil {
			go copyIn(master, io.Stdin, false)
		}
		if io.Stdout != nil {
			s.copies.Add(1)
			go func() {
				defer s.copies.Done()
				copyOut(io.Stdout, master)
			}()
		}
		// Three descriptors for one terminal: the caller closes each.
		out, err := dupFile(slave)
		if err != nil {
			slave.Close()
			return nil, err
		}
		errf, err := dupFile(slave)
		if err != nil {
			slave.Close()
			out.Close()
			return nil, err
		}
		return []*os.File{slave, out, errf}, nil
	}
	files := make([]*os.File, 3)
	var err error
	if files[0], err = s.input(io.Stdin); err != nil {
		return files, err
	}
	if files[1], err = s.output(io.Stdout); err != nil {
		return files, err
	}
	if files[2], err = s.output(io.Stderr); err != nil {
		return files, err
	}
	return files, nil
}

func passThrough(v any) (*os.File, bool) {
	f, ok := v.(*os.File)
	if !ok || f == nil || term.IsTerminal(int(f.Fd())) {
		return nil, false
	}
	// Hand the command its own descriptor, so the caller may close theirs.
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	return os.NewFile(uintptr(fd), f.Name()), true
}

func (s *Sandbox) input(r io.Reader) (*os.File, error) {
	if r == nil {
		return os.Open(os.DevNull)
	}
	if f, ok := passThrough(r); ok {
		return f, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	go copyIn(pw, r, true)
	return pr, nil
}

func (s *Sandbox) output(w io.Writer) (*os.File, error) {
	if w == nil {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if f, ok := passThrough(w); ok {
		return f, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	s.copies.Add(1)
	go func() {
		defer s.copies.Done()
		copyOut(w, pr)
		pr.Close()
	}()
	return pw, nil
}

// copyIn feeds the command's input. It is not waited for: a command may
// exit without reading all of it.
func copyIn(dst *os.File, src io.Reader, closeDst bool) {
	_, _ = io.Copy(dst, src)
	if closeDst {
		dst.Close()
	}
}

// copyOut drains the command's output until every writer in the sandbox
// has closed it (or, for a terminal, until the terminal hangs up).
func copyOut(dst io.Writer, src *os.File) {
	_, _ = io.Copy(dst, src)
}

func (s *Sandbox) closeIO() {
	if s.master != nil {
		s.master.Close()
	}
}
