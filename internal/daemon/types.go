package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/vm"
)

// Backends a create may ask for.
const (
	BackendJail = "jail"
	BackendVM   = "vm"
	// BackendAuto is a micro-VM where KVM boots one (the cached boot
	// probe passed) and the spec fits a VM, the jail otherwise. A
	// sandbox reports the backend it got.
	BackendAuto = "auto"
)

// Sandbox states as the manager reports them.
const (
	StateCreating   = "creating"
	StateRunning    = "running"
	StateExited     = "exited"
	StateDestroying = "destroying"
	statePooled     = "pooled" // only in metrics: pool members are not listed
)

// Limits on labels, checked by Validate.
const (
	MaxLabels     = 64
	MaxLabelKey   = 128
	MaxLabelValue = 1024
	// MaxPath is the longest file path the file operations accept.
	MaxPath = 4096
)

// CreateOptions describe a sandbox to create.
type CreateOptions struct {
	// ID is the user-visible ID; empty means a generated one.
	ID string `json:"id"`
	// Backend is "jail" (default), "vm" (a micro-VM) or "auto" (see
	// BackendAuto); Create replaces auto with the backend it picked.
	Backend string `json:"backend"`
	// Spec is the sandbox: user, workdir, mounts, rootfs, resources,
	// seccomp, network. Its ID and Command are ignored (the agent is the
	// sandbox's init); Env is the base environment of every exec.
	Spec sandbox.Spec `json:"spec"`
	// TTL, when non-zero, destroys the sandbox that long after creation.
	TTL time.Duration `json:"ttl,omitempty"`
	// IdleTimeout, when non-zero, destroys the sandbox after that long
	// without an exec running or any exec or file operation.
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	// Labels are free-form key/value pairs for selecting sandboxes.
	Labels map[string]string `json:"labels,omitempty"`
	// NoPool makes the create start a fresh sandbox even when a warm pool
	// member of the same class is ready (a pool member keeps the hostname
	// of its pool ID).
	NoPool bool `json:"no_pool,omitempty"`
}

// Validate checks o completely; errors wrap sandbox.ErrInvalid and name
// the field. It does not touch the kernel.
func (o *CreateOptions) Validate() error {
	if o.ID != "" {
		if err := sandbox.ValidateID(o.ID); err != nil {
			return fmt.Errorf("%w", err)
		}
	}
	switch o.Backend {
	case "", BackendJail, BackendVM, BackendAuto:
	default:
		return fmt.Errorf("%w: backend: %q is not jail, vm or auto", sandbox.ErrInvalid, o.Backend)
	}
	if len(o.Spec.Command) > 0 {
		return fmt.Errorf("%w: command: a long-lived sandbox runs no command of its own; use exec", sandbox.ErrInvalid)
	}
	if o.Spec.Timeout != 0 {
		return fmt.Errorf("%w: timeout: use ttl for a long-lived sandbox", sandbox.ErrInvalid)
	}
	if o.TTL < 0 {
		return fmt.Errorf("%w: ttl: %s is negative", sandbox.ErrInvalid, o.TTL)
	}
	if o.IdleTimeout < 0 {
		return fmt.Errorf("%w: idle_timeout: %s is negative", sandbox.ErrInvalid, o.IdleTimeout)
	}
	if len(o.Labels) > MaxLabels {
		return fmt.Errorf("%w: labels: %d labels, more than the limit of %d", sandbox.ErrInvalid, len(o.Labels), MaxLabels)
	}
	for k, v := range o.Labels {
		switch {
		case k == "" || len(k) > MaxLabelKey:
			return fmt.Errorf("%w: labels: key %q must be 1 to %d bytes", sandbox.ErrInvalid, k, MaxLabelKey)
		case len(v) > MaxLabelValue:
			return fmt.Errorf("%w: labels: value of %q is longer than %d bytes", sandbox.ErrInvalid, k, MaxLabelValue)
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return fmt.Errorf("%w: labels: %q is not valid UTF-8", sandbox.ErrInvalid, k)
		case strings.ContainsAny(k, "=,\x00"):
			return fmt.Errorf("%w: labels: key %q contains '=', ',' or NUL", sandbox.ErrInvalid, k)
		}
	}
	spec := o.Spec
	spec.ID = "x"
	if o.ID != "" {
		spec.ID = o.ID
	}
	if err := spec.Validate(); err != nil {
		return err
	}
	if o.Backend == BackendVM {
		return vmFits(spec)
	}
	return nil
}

// vmFits checks that spec asks for nothing a micro-VM cannot honour: host
// paths (a guest has no view of the host's files) and jail seccomp
// settings (the guest kernel runs the workload; IronClaw filters the
// VMM). Errors wrap sandbox.ErrInvalid and name the request's field.
func vmFits(spec sandbox.Spec) error {
	const noHost = "a micro-VM has no view of the host's files; move data with the files API, or use backend jail"
	switch {
	case len(spec.Mounts) > 0:
		return fmt.Errorf("%w: mounts: %s", sandbox.ErrInvalid, noHost)
	case spec.Workdir != "":
		return fmt.Errorf("%w: workdir: %s", sandbox.ErrInvalid, noHost)
	case spec.Rootfs != "":
		return fmt.Errorf("%w: rootfs: a micro-VM boots the daemon's image (ironclaw serve --image)", sandbox.ErrInvalid)
	case spec.Seccomp.Audit:
		return fmt.Errorf("%w: seccomp: audit mode applies to jail workloads; in a micro-VM the guest kernel runs the workload and IronClaw filters the VMM", sandbox.ErrInvalid)
	case spec.Seccomp.Profile != "" && spec.Seccomp.Profile != "default":
		return fmt.Errorf("%w: seccomp: profile %q applies to jail workloads; in a micro-VM the guest kernel runs the workload and IronClaw filters the VMM", sandbox.ErrInvalid, spec.Seccomp.Profile)
	case spec.Resources.MemoryBytes > 0 && spec.Resources.MemoryBytes < vm.MinMemoryMiB<<20:
		return fmt.Errorf("%w: memory: a micro-VM needs at least %d MiB", sandbox.ErrInvalid, vm.MinMemoryMiB)
	}
	// Whatever else the backend refuses.
	return vm.CheckSpec(spec)
}

// classKey names the pool class o belongs to: everything that shapes the
// prepared sandbox (backend, user, file system, limits, seccomp, network
// rules), nothing that is applied when it is handed out (ID, env, labels,
// time limits). A create takes a member of its own class first; see
// shapeKey for the members it may take otherwise.
func (o *CreateOptions) classKey() string { return o.key(o.Spec.Network.Allow) }

// shapeKey is classKey with the allow rules reduced to their kind (see
// netClass): pool members of one shape differ only in the rules they
// were started with, and a claimed member is given its user's rules
// (Manager.claim), so a create may take a member of any pool of its
// shape when its own class has none ready.
func (o *CreateOptions) shapeKey() string { return o.key(netClass(o.Spec.Network.Allow)) }

func (o *CreateOptions) key(net any) string {
	backend := o.Backend
	if backend == "" {
		backend = BackendJail
	}
	shape := struct {
		Backend   string            `json:"backend"`
		User      sandbox.User      `json:"user"`
		Workdir   string            `json:"workdir"`
		Mounts    []sandbox.Mount   `json:"mounts"`
		Rootfs    string            `json:"rootfs"`
		Resources sandbox.Resources `json:"resources"`
		Seccomp   sandbox.Seccomp   `json:"seccomp"`
		Allow     any               `json:"allow"`
	}{backend, o.Spec.User, o.Spec.Workdir, o.Spec.Mounts, o.Spec.Rootfs, o.Spec.Resources, o.Spec.Seccomp, net}
	if len(shape.Mounts) == 0 {
		shape.Mounts = nil
	}
	if l, ok := net.([]string); ok && len(l) == 0 {
		shape.Allow = nil
	}
	if shape.Seccomp.Profile == "" {
		shape.Seccomp.Profile = "default"
	}
	b, err := json.Marshal(shape)
	if err != nil {
		panic("marshal pool class: " + err.Error()) // plain data always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// netClass is the part of a network policy that shapes a prepared
// sandbox: "" for loopback only; "cidr" for a link with address rules
// only; "domains" for a link whose policy has domain rules, which also
// need the egress proxy and DNS stub and a resolv.conf naming the stub.
// Rules that do not parse (refused by the API) form shapes of their own
// that no valid request shares.
func netClass(allow []string) string {
	if len(allow) == 0 {
		return ""
	}
	p, err := firewall.ParsePolicy(allow)
	switch {
	case err != nil:
		return "invalid:" + strings.Join(allow, "\x00")
	case len(p.Domains) > 0:
		return "domains"
	case len(p.CIDRs) > 0:
		return "cidr"
	default:
		return ""
	}
}

// policyKey is the canonical form of a list of allow rules (the parsed
// policy's rules): two lists are one policy when both have a key and the
// keys are equal. Rules that do not parse have none (ok false).
func policyKey(allow []string) (key string, ok bool) {
	p, err := firewall.ParsePolicy(allow)
	if err != nil {
		return "", false
	}
	return strings.Join(p.Rules(), "\n"), true
}

// samePolicy reports whether two lists of allow rules are one policy
// (both parse and give the same canonical rules).
func samePolicy(a, b []string) bool {
	ka, oka := policyKey(a)
	kb, okb := policyKey(b)
	return oka && okb && ka == kb
}

// Exit says how a sandbox's init ended on its own.
type Exit struct {
	Time      time.Time `json:"time"`
	OOMKilled bool      `json:"oom_killed,omitempty"`
	Reason    string    `json:"reason"`
}

// Info is what the manager reports about one sandbox.
type Info struct {
	ID      string `json:"id"`
	Backend string `json:"backend"`
	State   string `json:"state"`
	// BackendID is the ID the kernel objects are named after
	// (sandbox.KeyOf); it is the pool ID for a sandbox from the pool.
	BackendID   string            `json:"backend_id"`
	Key         sandbox.Key       `json:"key"`
	Labels      map[string]string `json:"labels,omitempty"`
	Created     time.Time         `json:"created"`
	Started     time.Time         `json:"started"`
	TTL         time.Duration     `json:"ttl,omitempty"`
	IdleTimeout time.Duration     `json:"idle_timeout,omitempty"`
	ExpiresAt   time.Time         `json:"expires_at"`
	LastActive  time.Time         `json:"last_active"`
	FromPool    bool              `json:"from_pool,omitempty"`
	Spec        sandbox.Spec      `json:"spec"`
	InitPID     int               `json:"init_pid,omitempty"`
	ActiveExecs int               `json:"active_execs"`
	Usage       *cgroup.Usage     `json:"usage,omitempty"`
	// Addresses are the sandbox's and its gateway's addresses when it
	// has a network of its own (filled by Get only).
	Addresses []string `json:"addresses,omitempty"`
	Exit      *Exit    `json:"exit,omitempty"`
}

// Uptime is how long the sandbox has been running (zero unless running).
func (i *Info) Uptime(now time.Time) time.Duration {
	if i.State != StateRunning || i.Started.IsZero() {
		return 0
	}
	return now.Sub(i.Started)
}

// Event types.
const (
	EventCreated        = "created"
	EventStarted        = "started"
	EventExited         = "exited"
	EventOOM            = "oom"
	EventTimeout        = "timeout"
	EventDestroyed      = "destroyed"
	EventFailed         = "failed"
	EventReattached     = "reattached"
	EventNetworkUpdated = "network_updated"
	EventExecStarted    = "exec_started"
	EventExecExited     = "exec_exited"
)

// Event is one thing that happened to a sandbox. Seq increases across all
// sandboxes and survives restarts.
type Event struct {
	Seq     int64     `json:"seq"`
	Time    time.Time `json:"time"`
	Sandbox string    `json:"sandbox"`
	Type    string    `json:"type"`
	Detail
}

// Detail holds the fields an event type uses.
type Detail struct {
	Reason    string   `json:"reason,omitempty"`
	Step      string   `json:"step,omitempty"`
	Error     string   `json:"error,omitempty"`
	PoolID    string   `json:"pool_id,omitempty"`
	Pool      string   `json:"pool,omitempty"` // the warm pool a member came from
	ExecID    string   `json:"exec_id,omitempty"`
	Argv      []string `json:"argv,omitempty"`
	ExitCode  *int     `json:"exit_code,omitempty"`
	Signal    int      `json:"signal,omitempty"`
	OOMKilled bool     `json:"oom_killed,omitempty"`
	TimedOut  bool     `json:"timed_out,omitempty"`
	Allow     []string `json:"allow,omitempty"`
	Duration  string   `json:"duration,omitempty"`
}

// ExecOptions describe a process to run in a sandbox.
type ExecOptions struct {
	Argv []string
	// Env is added to the sandbox's base environment (PATH, HOME, USER,
	// HOSTNAME, LANG, TERM with a TTY) and the spec's env, overriding both.
	Env []string
	// Dir is the working directory; empty means /workspace.
	Dir string
	// User is "sandbox", "root", "UID" or "UID:GID"; empty means the
	// sandbox's user.
	User string
	TTY  bool
	Rows uint16
	Cols uint16
	// Timeout, when non-zero, kills the process that long after it started.
	Timeout time.Duration
	// DestroyAfter destroys the sandbox once the exec has ended, for
	// whatever reason (including the caller going away).
	DestroyAfter bool
}

// Validate checks o; errors wrap sandbox.ErrInvalid and name the field.
func (o *ExecOptions) Validate() error {
	if len(o.Argv) == 0 || o.Argv[0] == "" {
		return fmt.Errorf("%w: argv: must name a program", sandbox.ErrInvalid)
	}
	for i, a := range o.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: argv: argument %d contains a NUL byte", sandbox.ErrInvalid, i)
		}
	}
	for _, kv := range o.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.IndexByte(kv, 0) >= 0 {
			return fmt.Errorf("%w: env: %q is not KEY=VALUE", sandbox.ErrInvalid, kv)
		}
	}
	if o.Dir != "" {
		if err := ValidatePath(o.Dir); err != nil {
			return fmt.Errorf("%w: dir: %v", sandbox.ErrInvalid, err)
		}
	}
	if o.User != "" {
		if _, err := sandbox.ParseUser(o.User); err != nil {
			return err
		}
	}
	if o.Timeout < 0 {
		return fmt.Errorf("%w: timeout: %s is negative", sandbox.ErrInvalid, o.Timeout)
	}
	return nil
}

// ExitStatus is how an exec ended.
type ExitStatus struct {
	// ExitCode is shell-style: the exit code, or 128+N for signal N.
	ExitCode  int  `json:"exit_code"`
	Signal    int  `json:"signal,omitempty"`
	OOMKilled bool `json:"oom_killed,omitempty"`
	TimedOut  bool `json:"timed_out,omitempty"`
	// Error says why the exec's stream broke, when it did (the sandbox
	// was destroyed, the agent died); ExitCode is then -1.
	Error string `json:"error,omitempty"`
}

// ValidatePath checks a path for the file operations: absolute, clean (no
// "." or ".." components, no doubled or trailing slash), no NUL, at most
// MaxPath bytes. The agent resolves it beneath the sandbox's root with
// openat2(RESOLVE_BENEATH), which also refuses symlinks that lead out.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("must not be empty")
	case len(p) > MaxPath:
		return fmt.Errorf("%d bytes, longer than the limit of %d", len(p), MaxPath)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("contains a NUL byte")
	case !path.IsAbs(p):
		return fmt.Errorf("%q is not absolute", p)
	case path.Clean(p) != p:
		return fmt.Errorf("%q is not clean (want %q): no '.', '..', '//' or trailing '/'", p, path.Clean(p))
	}
	return nil
}

// PoolClass is one warm pool: Size prepared sandboxes shaped like Template.
type PoolClass struct {
	Name     string        `json:"name"`
	Template CreateOptions `json:"template"`
	Size     int           `json:"size"`
}
