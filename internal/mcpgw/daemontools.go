package mcpgw

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// OwnerLabel is the label the gateway puts on every sandbox it creates
// through the daemon; its value is the gateway's name. Unless the config
// sets ironclaw.daemon.foreign_sandboxes, the daemon tools list, exec in,
// read, write and destroy only sandboxes carrying it with this gateway's
// name. Callers may not set labels under "ironclaw.".
const OwnerLabel = "ironclaw.mcp.gateway"

// Defaults and limits of the daemon tools.
const (
	// DaemonDefaultTTL is a created sandbox's time to live unless the
	// call gives one; DaemonMaxTTL is the longest a call may give.
	DaemonDefaultTTL = time.Hour
	DaemonMaxTTL     = 24 * time.Hour
	// DaemonDefaultIdle is a created sandbox's idle timeout unless the
	// call gives one.
	DaemonDefaultIdle = 30 * time.Minute
	// daemonExecDefaultTimeout and daemonExecMaxTimeout bound one exec.
	daemonExecDefaultTimeout = 60 * time.Second
	daemonExecMaxTimeout     = 10 * time.Minute
	// daemonMaxStdin is the most stdin one exec takes: it travels in the
	// daemon's JSON request body (1 MiB, base64-encoded).
	daemonMaxStdin = 512 << 10
	// daemonReadDefault and daemonReadMax bound what read_file returns.
	daemonReadDefault = 1 << 20
	daemonReadMax     = 4 << 20
	// daemonMaxWrite is the largest content write_file takes.
	daemonMaxWrite = 16 << 20
	// cardReadLimit is what a card reads of the current file: one byte
	// over the card's diff limit, so the card can tell it was over.
	cardReadLimit = 1<<20 + 1
)

// reservedLabelPrefix marks labels only the gateway sets.
const reservedLabelPrefix = "ironclaw."

// DaemonOptions configure the tools for the daemon's long-lived sandboxes.
type DaemonOptions struct {
	// Client talks to the daemon.
	Client *client.Client
	// Gateway is this gateway's name (Options.Name): the value of
	// OwnerLabel on the sandboxes it creates. A gateway restarted under the
	// same name reaches the sandboxes it created before.
	Gateway string
	// Foreign lets the tools reach sandboxes this gateway did not create
	// (ironclaw.daemon.foreign_sandboxes).
	Foreign bool
	Logger  *slog.Logger
}

// SandboxCreateInput are the arguments of sandbox_create.
type SandboxCreateInput struct {
	ID          string            `json:"id,omitempty" jsonschema:"sandbox ID (default: generated); letters, digits, '.', '-' and '_' are safe"`
	Memory      string            `json:"memory,omitempty" jsonschema:"memory limit such as 512m (default: the daemon's)"`
	Pids        int64             `json:"pids,omitempty" jsonschema:"process limit (default: the daemon's)"`
	CPUs        float64           `json:"cpus,omitempty" jsonschema:"CPU limit in cores, such as 0.5 (default: the daemon's)"`
	TTL         string            `json:"ttl,omitempty" jsonschema:"time to live such as 2h (default 1h, at most 24h)"`
	IdleTimeout string            `json:"idle_timeout,omitempty" jsonschema:"destroy after this long without activity (default 30m)"`
	Allow       []string          `json:"allow,omitempty" jsonschema:"network egress allow rules such as example.com:443; any rule needs approval"`
	Mounts      []string          `json:"mounts,omitempty" jsonschema:"host paths to grant, HOST:GUEST[:ro|rw]; any mount needs approval"`
	Seccomp     string            `json:"seccomp,omitempty" jsonschema:"seccomp profile: default, strict, or unconfined (needs approval)"`
	Env         map[string]string `json:"env,omitempty" jsonschema:"environment of every exec in the sandbox"`
	Labels      map[string]string `json:"labels,omitempty" jsonschema:"labels for finding the sandbox again (keys under ironclaw. are reserved)"`
}

// SandboxInfo describes a sandbox in the daemon tools' results.
type SandboxInfo struct {
	ID          string            `json:"id"`
	State       string            `json:"state"`
	CreatedAt   string            `json:"created_at"`
	ExpiresAt   string            `json:"expires_at,omitempty"`
	IdleTimeout string            `json:"idle_timeout,omitempty"`
	Labels      map[string]string `json:"labels"`
	MemoryBytes int64             `json:"memory_bytes"`
	Pids        int64             `json:"pids"`
	CPUs        float64           `json:"cpus"`
	Allow       []string          `json:"allow"`
	Mounts      []string          `json:"mounts"`
	Seccomp     string            `json:"seccomp"`
	EnvNames    []string          `json:"env_names"`
	Addresses   []string          `json:"addresses"`
	ActiveExecs int               `json:"active_execs"`
}

// SandboxListInput are the arguments of sandbox_list.
type SandboxListInput struct {
	Labels map[string]string `json:"labels,omitempty" jsonschema:"only sandboxes carrying all these labels"`
}

// SandboxListOutput is the result of sandbox_list.
type SandboxListOutput struct {
	Sandboxes []SandboxInfo `json:"sandboxes"`
}

// SandboxRef names one sandbox (sandbox_destroy's arguments).
type SandboxRef struct {
	Sandbox string `json:"sandbox" jsonschema:"the sandbox's ID"`
}

// SandboxExecInput are the arguments of sandbox_exec.
type SandboxExecInput struct {
	Sandbox string            `json:"sandbox" jsonschema:"the sandbox's ID"`
	Command []string          `json:"command" jsonschema:"program and arguments, such as [\"sh\", \"-c\", \"ls -l\"]"`
	Stdin   string            `json:"stdin,omitempty" jsonschema:"text written to the command's standard input (at most 512 KiB)"`
	Env     map[string]string `json:"env,omitempty" jsonschema:"extra environment variables"`
	Dir     string            `json:"dir,omitempty" jsonschema:"absolute working directory (default /workspace)"`
	User    string            `json:"user,omitempty" jsonschema:"UID:GID inside the sandbox (default: the sandbox's user)"`
	Timeout string            `json:"timeout,omitempty" jsonschema:"kill the command after this long, such as 30s (default 60s, at most 10m)"`
}

// SandboxExecOutput is the result of sandbox_exec. Output that is not
// valid UTF-8 comes as base64 in the *_base64 field instead.
type SandboxExecOutput struct {
	ExitCode        int    `json:"exit_code"`
	Signal          int    `json:"signal,omitempty"`
	TimedOut        bool   `json:"timed_out,omitempty"`
	OOMKilled       bool   `json:"oom_killed,omitempty"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutBase64    string `json:"stdout_base64,omitempty"`
	StderrBase64    string `json:"stderr_base64,omitempty"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
}

// SandboxReadFileInput are the arguments of sandbox_read_file.
type SandboxReadFileInput struct {
	Sandbox  string `json:"sandbox" jsonschema:"the sandbox's ID"`
	Path     string `json:"path" jsonschema:"absolute path of the file to read, such as /workspace/out.txt"`
	MaxBytes int64  `json:"max_bytes,omitempty" jsonschema:"read at most this many bytes (default 1 MiB, at most 4 MiB)"`
	Encoding string `json:"encoding,omitempty" jsonschema:"text, base64, or empty: text when the bytes are valid UTF-8, else base64"`
}

// SandboxReadFileOutput is the result of sandbox_read_file.
type SandboxReadFileOutput struct {
	Path          string `json:"path"`
	Size          int64  `json:"size"`
	Encoding      string `json:"encoding"`
	Content       string `json:"content,omitempty"`
	ContentBase64 string `json:"content_base64,omitempty"`
	Truncated     bool   `json:"truncated,omitempty"`
}

// SandboxWriteFileInput are the arguments of sandbox_write_file.
type SandboxWriteFileInput struct {
	Sandbox       string  `json:"sandbox" jsonschema:"the sandbox's ID"`
	Path          string  `json:"path" jsonschema:"absolute path of the file to write, such as /workspace/main.py; it is replaced"`
	Content       *string `json:"content,omitempty" jsonschema:"the new content as text (give content or content_base64)"`
	ContentBase64 string  `json:"content_base64,omitempty" jsonschema:"the new content, base64-encoded"`
	Mode          string  `json:"mode,omitempty" jsonschema:"octal permissions such as 0644 (default 0644)"`
	Parents       bool    `json:"parents,omitempty" jsonschema:"create missing parent directories"`
}

// SandboxWriteFileOutput is the result of sandbox_write_file.
type SandboxWriteFileOutput struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

type daemonTools struct {
	c       *client.Client
	gateway string
	foreign bool
	log     *slog.Logger
	specs   map[string]argSpec
}

// DaemonTools returns the gateway's tools for the daemon's long-lived
// sandboxes: sandbox_create, sandbox_list, sandbox_exec,
// sandbox_read_file, sandbox_write_file and sandbox_destroy. The caller
// offers them only when a daemon answers (client.Reachable).
//
// Their default classification: list and read_file are green; create is
// green only without mounts, without egress rules and with the default or
// strict seccomp profile; exec, write_file and destroy are red. The
// gateway-wide rules come first, so a user's rule can change any of it.
// Only sandboxes this gateway created (OwnerLabel) are reachable unless
// o.Foreign; a call naming another is refused before classification.
func DaemonTools(o DaemonOptions) ([]Builtin, error) {
	if o.Client == nil || o.Logger == nil {
		return nil, errors.New("daemon tools: Client and Logger are required")
	}
	if o.Gateway == "" {
		return nil, errors.New("daemon tools: the gateway's name is required (it labels the sandboxes)")
	}
	d := &daemonTools{c: o.Client, gateway: o.Gateway, foreign: o.Foreign, log: o.Logger, specs: map[string]argSpec{}}
	f, t := false, true
	yes := true
	red := func(tool string) approval.Policy {
		return approval.Policy{Rules: []approval.Rule{{Tool: tool, Class: approval.Red}}}
	}
	green := func(tool string) approval.Policy {
		return approval.Policy{Rules: []approval.Rule{{Tool: tool, Class: approval.Green}}}
	}
	// create is green only without mounts, egress rules or a weaker
	// seccomp profile: absent, or exactly "default" or "strict".
	plain := map[string]approval.Matcher{"mounts": {Absent: &yes}, "allow": {Absent: &yes}, "seccomp": {Absent: &yes}}
	withSeccomp := map[string]approval.Matcher{"mounts": {Absent: &yes}, "allow": {Absent: &yes}, "seccomp": {Regex: "default|strict"}}
	createPolicy := approval.Policy{Rules: []approval.Rule{
		{Tool: "sandbox_create", Args: plain, Class: approval.Green},
		{Tool: "sandbox_create", Args: withSeccomp, Class: approval.Green},
		{Tool: "sandbox_create", Class: approval.Red},
	}}
	defs := []struct {
		name, title, desc string
		in, out           func() (*jsonschema.Schema, error)
		ann               *mcp.ToolAnnotations
		pol               approval.Policy
		handler           func(context.Context, json.RawMessage) (*mcp.CallToolResult, error)
		owned             bool // names a sandbox: checked before classification
		readFor           bool
	}{
		{
			name: "sandbox_create", title: "Create a long-lived sandbox",
			desc: "Creates a long-lived IronClaw sandbox through the daemon (namespace jail; no host files and loopback-only network unless granted). " +
				"It lives until sandbox_destroy, its time to live (default 1h) or its idle timeout (default 30m). Returns its ID for sandbox_exec, sandbox_read_file and sandbox_write_file.",
			in: schemaFor[SandboxCreateInput], out: schemaFor[SandboxInfo],
			ann: &mcp.ToolAnnotations{DestructiveHint: &f, OpenWorldHint: &t}, pol: createPolicy, handler: d.create,
		},
		{
			name: "sandbox_list", title: "List long-lived sandboxes",
			desc: "Lists the long-lived sandboxes this gateway created, with their state, limits and expiry.",
			in:   schemaFor[SandboxListInput], out: schemaFor[SandboxListOutput],
			ann: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &f}, pol: green("sandbox_list"), handler: d.list,
		},
		{
			name: "sandbox_exec", title: "Run a command in a long-lived sandbox",
			desc: "Runs a command in a sandbox made by sandbox_create and returns its exit code, stdout and stderr (each capped at 1 MiB).",
			in:   schemaFor[SandboxExecInput], out: schemaFor[SandboxExecOutput],
			ann: &mcp.ToolAnnotations{DestructiveHint: &t, OpenWorldHint: &t}, pol: red("sandbox_exec"), handler: d.exec, owned: true,
		},
		{
			name: "sandbox_read_file", title: "Read a file in a long-lived sandbox",
			desc: "Reads a file in a sandbox made by sandbox_create: text when it is valid UTF-8, else base64 (at most 4 MiB).",
			in:   schemaFor[SandboxReadFileInput], out: schemaFor[SandboxReadFileOutput],
			ann: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: &f}, pol: green("sandbox_read_file"), handler: d.readFile, owned: true,
		},
		{
			name: "sandbox_write_file", title: "Write a file in a long-lived sandbox",
			desc: "Writes (replaces) a file in a sandbox made by sandbox_create. A held call shows the person a diff against the file's current content.",
			in:   schemaFor[SandboxWriteFileInput], out: schemaFor[SandboxWriteFileOutput],
			ann: &mcp.ToolAnnotations{DestructiveHint: &t, OpenWorldHint: &f}, pol: red("sandbox_write_file"), handler: d.writeFile, owned: true, readFor: true,
		},
		{
			name: "sandbox_destroy", title: "Destroy a long-lived sandbox",
			desc: "Destroys a sandbox made by sandbox_create, with everything in it.",
			in:   schemaFor[SandboxRef], out: nil,
			ann: &mcp.ToolAnnotations{DestructiveHint: &t, IdempotentHint: true, OpenWorldHint: &f}, pol: red("sandbox_destroy"), handler: d.destroy, owned: true,
		},
	}
	var out []Builtin
	for _, def := range defs {
		in, err := def.in()
		if err != nil {
			return nil, fmt.Errorf("%s schema: %w", def.name, err)
		}
		tool := &mcp.Tool{Name: def.name, Title: def.title, Description: def.desc, InputSchema: in, Annotations: def.ann}
		if def.out != nil {
			if tool.OutputSchema, err = def.out(); err != nil {
				return nil, fmt.Errorf("%s schema: %w", def.name, err)
			}
		}
		spec, err := newArgSpec(in, true)
		if err != nil {
			return nil, fmt.Errorf("%s schema: %w", def.name, err)
		}
		d.specs[def.name] = spec
		b := Builtin{Tool: tool, Handler: def.handler, Policy: def.pol}
		if def.owned {
			b.Precheck = d.precheck
		}
		if def.readFor {
			b.ReadFor = d.cardReader
		}
		out = append(out, b)
	}
	return out, nil
}

func schemaFor[T any]() (*jsonschema.Schema, error) { return jsonschema.For[T](nil) }

// decodeExact decodes arguments the way the gateway classified them:
// parseArgs with the tool's exact spec (no unknown, repeated or
// case-variant keys), then a strict decode of the canonical encoding.
func decodeExact(raw json.RawMessage, spec argSpec, dst any) error {
	_, canon, err := parseArgs(raw, spec)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(canon))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

// check returns the sandbox id if this gateway may reach it. A sandbox
// that does not exist and one the gateway may not reach get the same
// answer, so the tools do not reveal other sandboxes.
func (d *daemonTools) check(ctx context.Context, id string) (*api.Sandbox, error) {
	if id == "" {
		return nil, errors.New("sandbox: required")
	}
	sb, err := d.c.Get(ctx, id)
	switch {
	case client.IsCode(err, api.CodeNotFound):
		return nil, d.notReachable(id)
	case err != nil:
		return nil, fmt.Errorf("sandbox %q: ask the daemon: %w", id, err)
	case !d.foreign && sb.Labels[OwnerLabel] != d.gateway:
		return nil, d.notReachable(id)
	}
	return sb, nil
}

func (d *daemonTools) notReachable(id string) error {
	if d.foreign {
		return fmt.Errorf("sandbox %q: no such sandbox", id)
	}
	return fmt.Errorf("sandbox %q: no such sandbox created by this gateway (%s); these tools reach only the sandboxes they created", id, d.gateway)
}

// precheck refuses, before classification, a call naming a sandbox the
// gateway may not reach: nobody is asked to approve it.
func (d *daemonTools) precheck(ctx context.Context, args map[string]any) error {
	id, ok := args["sandbox"].(string)
	if !ok {
		return errors.New(`argument "sandbox": want the sandbox's ID, a string`)
	}
	_, err := d.check(ctx, id)
	return err
}

// cardReader reads a file's current content for a held write's diff:
// through the daemon's file API, so confined to the sandbox the call
// names (the agent resolves it beneath the sandbox's root).
func (d *daemonTools) cardReader(args map[string]any) approval.ReadFunc {
	id, _ := args["sandbox"].(string)
	return func(ctx context.Context, p string) ([]byte, error) {
		if _, err := d.check(ctx, id); err != nil {
			return nil, err
		}
		sp, err := sandboxPath(p)
		if err != nil {
			return nil, fmt.Errorf("path: %w", err)
		}
		data, _, err := d.readHead(ctx, id, sp, cardReadLimit)
		return data, err
	}
}

// sandboxPath checks p as the tools take paths: absolute, so that a
// rule's matcher ("under": "/workspace/scratch") sees the path the call
// uses, and cleaned, as the "under" matcher cleans it (the daemon takes
// clean absolute paths and resolves them beneath the sandbox's root, so
// cleaning cannot lead out).
func sandboxPath(p string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("required")
	case strings.IndexByte(p, 0) >= 0:
		return "", errors.New("contains a NUL byte")
	case !path.IsAbs(p):
		return "", fmt.Errorf("%q is not an absolute path (the sandbox's workspace is %s)", p, sandbox.Workspace)
	}
	return path.Clean(p), nil
}

// errFull stops a download once the reader has what it wants.
var errFull = errors.New("read limit reached")

type headWriter struct {
	buf bytes.Buffer
	max int
}

func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); len(p) > room {
		w.buf.Write(p[:room])
		return room, errFull
	}
	return w.buf.Write(p)
}

// readHead reads up to max bytes of the file p in sandbox id, reporting
// whether the file is longer. A missing file is an error wrapping
// fs.ErrNotExist.
func (d *daemonTools) readHead(ctx context.Context, id, p string, max int) ([]byte, bool, error) {
	w := &headWriter{max: max}
	_, err := d.c.Download(ctx, id, p, w)
	switch {
	case errors.Is(err, errFull):
		return w.buf.Bytes(), true, nil
	case client.IsCode(err, api.CodeFileNotFound):
		return nil, false, fmt.Errorf("read %s: %w", p, fs.ErrNotExist)
	case err != nil:
		return nil, false, fmt.Errorf("read %s: %w", p, err)
	}
	return w.buf.Bytes(), false, nil
}

// toolResult is a tool's text and structured result.
func toolResult(text string, structured any, isError bool) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}, StructuredContent: structured, IsError: isError}
}

func badArgs(tool string, err error) *mcp.CallToolResult {
	return errorResult(tool + ": bad arguments: " + err.Error())
}

// createRequest turns sandbox_create's arguments into the daemon's create
// request. It is pure.
func (d *daemonTools) createRequest(in SandboxCreateInput) (api.CreateRequest, error) {
	req := api.CreateRequest{ID: in.ID, Labels: map[string]string{OwnerLabel: d.gateway}}
	if in.ID != "" {
		if err := sandbox.ValidateID(in.ID); err != nil {
			return req, fmt.Errorf("id: %w", err)
		}
	}
	for _, k := range sortedKeys(in.Labels) {
		if strings.HasPrefix(k, reservedLabelPrefix) {
			return req, fmt.Errorf("labels: %q: keys under %q are reserved for IronClaw", k, reservedLabelPrefix)
		}
		req.Labels[k] = in.Labels[k]
	}
	var res api.Resources
	if in.Memory != "" {
		n, err := sandbox.ParseSize(in.Memory)
		if err != nil {
			return req, fmt.Errorf("memory: %w", err)
		}
		if n <= 0 {
			return req, fmt.Errorf("memory: %q: want a positive size (no limit is not offered)", in.Memory)
		}
		res.MemoryBytes = &n
	}
	if in.Pids < 0 {
		return req, fmt.Errorf("pids: %d: want a positive number", in.Pids)
	} else if in.Pids > 0 {
		res.Pids = &in.Pids
	}
	if in.CPUs < 0 {
		return req, fmt.Errorf("cpus: %g: want a positive number", in.CPUs)
	} else if in.CPUs > 0 {
		res.CPUs = &in.CPUs
	}
	if res != (api.Resources{}) {
		req.Resources = &res
	}
	ttl, err := boundedDuration("ttl", in.TTL, DaemonDefaultTTL, DaemonMaxTTL)
	if err != nil {
		return req, err
	}
	idle, err := boundedDuration("idle_timeout", in.IdleTimeout, min(DaemonDefaultIdle, ttl), ttl)
	if err != nil {
		return req, err
	}
	req.TTL, req.IdleTimeout = ttl.String(), idle.String()
	for i, a := range in.Allow {
		if strings.TrimSpace(a) == "" {
			return req, fmt.Errorf("allow[%d]: empty rule", i)
		}
	}
	if len(in.Allow) > 0 {
		req.Network = &api.Network{Allow: in.Allow}
	}
	for i, m := range in.Mounts {
		mt, err := sandbox.ParseMount(m)
		if err != nil {
			return req, fmt.Errorf("mounts[%d]: %w", i, err)
		}
		req.Mounts = append(req.Mounts, api.Mount{Source: mt.Source, Target: mt.Target, Writable: mt.Writable})
	}
	switch in.Seccomp {
	case "":
	case "default", "strict", "unconfined":
		req.Seccomp = &api.Seccomp{Profile: in.Seccomp}
	default:
		return req, fmt.Errorf("seccomp: %q: want default, strict or unconfined", in.Seccomp)
	}
	if req.Env, err = envList(in.Env); err != nil {
		return req, err
	}
	return req, nil
}

// boundedDuration parses a positive duration at most max; empty is def.
func boundedDuration(field, s string, def, max time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%s: %q: want a positive duration such as 30m", field, s)
	}
	if v > max {
		return 0, fmt.Errorf("%s: %s is over the limit of %s", field, v, max)
	}
	return v, nil
}

// envList turns an env object into sorted KEY=VALUE entries.
func envList(env map[string]string) ([]string, error) {
	var out []string
	for _, k := range sortedKeys(env) {
		if !validEnvName(k) {
			return nil, fmt.Errorf("env: bad variable name %q (want letters, digits and '_', not starting with a digit)", k)
		}
		if strings.IndexByte(env[k], 0) >= 0 {
			return nil, fmt.Errorf("env.%s: value contains a NUL byte", k)
		}
		out = append(out, k+"="+env[k])
	}
	return out, nil
}

func validEnvName(k string) bool {
	if k == "" || k[0] >= '0' && k[0] <= '9' {
		return false
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

func info(sb *api.Sandbox) SandboxInfo {
	i := SandboxInfo{
		ID: sb.ID, State: sb.State, CreatedAt: sb.CreatedAt.UTC().Format(time.RFC3339), IdleTimeout: sb.IdleTimeout,
		Labels: sb.Labels, Allow: sb.Network.Allow, Mounts: []string{}, Seccomp: sb.Seccomp.Profile,
		EnvNames: sb.EnvNames, Addresses: sb.Addresses, ActiveExecs: sb.ActiveExecs,
	}
	if sb.ExpiresAt != nil {
		i.ExpiresAt = sb.ExpiresAt.UTC().Format(time.RFC3339)
	}
	if v := sb.Limits.MemoryBytes; v != nil {
		i.MemoryBytes = *v
	}
	if v := sb.Limits.Pids; v != nil {
		i.Pids = *v
	}
	if v := sb.Limits.CPUs; v != nil {
		i.CPUs = *v
	}
	for _, m := range sb.Mounts {
		i.Mounts = append(i.Mounts, sandbox.Mount{Source: m.Source, Target: m.Target, Writable: m.Writable}.String())
	}
	for _, p := range []*[]string{&i.Allow, &i.EnvNames, &i.Addresses} {
		if *p == nil {
			*p = []string{}
		}
	}
	if i.Labels == nil {
		i.Labels = map[string]string{}
	}
	return i
}

func (d *daemonTools) create(ctx context.Context, raw json.RawMessage) (*mcp.CallToolResult, error) {
	const tool = "sandbox_create"
	var in SandboxCreateInput
	if err := decodeExact(raw, d.specs[tool], &in); err != nil {
		return badArgs(tool, err), nil
	}
	req, err := d.createRequest(in)
	if err != nil {
		return errorResult(tool + ": " + err.Error()), nil
	}
	sb, err := d.c.Create(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("create sandbox: %w", err)
	}
	d.log.Info("sandbox created through the gateway", "sandbox", sb.ID, "ttl", req.TTL, "mounts", len(req.Mounts), "allow", len(in.Allow))
	i := info(sb)
	return toolResult(fmt.Sprintf("Created sandbox %s (expires %s, idle timeout %s).", sb.ID, i.ExpiresAt, i.IdleTimeout), i, false), nil
}

func (d *daemonTools) list(ctx context.Context, raw json.RawMessage) (*mcp.CallToolResult, error) {
	const tool = "sandbox_list"
	var in SandboxListInput
	if err := decodeExact(raw, d.specs[tool], &in); err != nil {
		return badArgs(tool, err), nil
	}
	sel := map[string]string{}
	for k, v := range in.Labels {
		sel[k] = v
	}
	if !d.foreign {
		if v, ok := sel[OwnerLabel]; ok && v != d.gateway {
			return toolResult("No sandboxes.", SandboxListOutput{Sandboxes: []SandboxInfo{}}, false), nil
		}
		sel[OwnerLabel] = d.gateway
	}
	l, err := d.c.List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	out := SandboxListOutput{Sandboxes: []SandboxInfo{}}
	var sb strings.Builder
	for i := range l {
		if !d.foreign && l[i].Labels[OwnerLabel] != d.gateway {
			continue // the daemon filtered already; never trust one filter alone
		}
		in := info(&l[i])
		out.Sandboxes = append(out.Sandboxes, in)
	}
	sort.Slice(out.Sandboxes, func(i, j int) bool { return out.Sandboxes[i].ID < out.Sandboxes[j].ID })
	for _, s := range out.Sandboxes {
		fmt.Fprintf(&sb, "%s\t%s\texpires %s\n", s.ID, s.State, orDash(s.ExpiresAt))
	}
	if len(out.Sandboxes) == 0 {
		sb.WriteString("No sandboxes.")
	}
	return toolResult(strings.TrimSuffix(sb.String(), "\n"), out, false), nil
}

func (d *daemonTools) exec(ctx context.Context, raw json.RawMessage) (*mcp.CallToolResult, error) {
	const tool = "sandbox_exec"
	var in SandboxExecInput
	if err := decodeExact(raw, d.specs[tool], &in); err != nil {
		return badArgs(tool, err), nil
	}
	req, err := execRequest(in)
	if err != nil {
		return errorResult(tool + ": " + err.Error()), nil
	}
	if _, err := d.check(ctx, in.Sandbox); err != nil {
		return errorResult(tool + ": " + err.Error()), nil
	}
	res, err := d.c.ExecBuffered(ctx, in.Sandbox, req)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", in.Sandbox, err)
	}
	out := SandboxExecOutput{
		ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut, OOMKilled: res.OOMKilled,
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
	}
	out.Stdout, out.StdoutBase64 = textOrBase64(res.Stdout, res.StdoutTruncated)
	out.Stderr, out.StderrBase64 = textOrBase64(res.Stderr, res.StderrTruncated)
	var note string
	switch {
	case res.Error != "":
		note = " (" + res.Error + ")"
	case res.TimedOut:
		note = " (timed out)"
	case res.OOMKilled:
		note = " (out of memory)"
	}
	text := fmt.Sprintf("exit code %d%s\n--- stdout ---\n%s\n--- stderr ---\n%s", out.ExitCode, note, orBase64Note(out.Stdout, out.StdoutBase64), orBase64Note(out.Stderr, out.StderrBase64))
	return toolResult(text, out, out.ExitCode != 0), nil
}

// execRequest turns sandbox_exec's arguments into the daemon's exec
// request. It is pure.
func execRequest(in SandboxExecInput) (api.ExecRequest, error) {
	req := api.ExecRequest{Argv: in.Command, User: in.User}
	if len(in.Command) == 0 || in.Command[0] == "" {
		return req, errors.New("command: must name a program")
	}
	if len(in.Stdin) > daemonMaxStdin {
		return req, fmt.Errorf("stdin: %d bytes, over the limit of %d (write a file with sandbox_write_file instead)", len(in.Stdin), daemonMaxStdin)
	}
	if in.Stdin != "" {
		req.Stdin = []byte(in.Stdin)
	}
	var err error
	if req.Env, err = envList(in.Env); err != nil {
		return req, err
	}
	if in.Dir != "" {
		if req.Dir, err = sandboxPath(in.Dir); err != nil {
			return req, fmt.Errorf("dir: %w", err)
		}
	}
	if in.User != "" {
		if _, err := sandbox.ParseUser(in.User); err != nil {
			return req, fmt.Errorf("user: %w", err)
		}
	}
	timeout, err := boundedDuration("timeout", in.Timeout, daemonExecDefaultTimeout, daemonExecMaxTimeout)
	if err != nil {
		return req, err
	}
	req.Timeout = timeout.String()
	return req, nil
}

// textOrBase64 returns b as text when it is valid UTF-8 (a rune cut by
// truncation at the end does not count), else as base64.
func textOrBase64(b []byte, truncated bool) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	if truncated {
		if cut := trimPartialRune(b); utf8.Valid(cut) {
			return string(cut), ""
		}
	}
	return "", base64.StdEncoding.EncodeToString(b)
}

// trimPartialRune drops an incomplete UTF-8 sequence at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			break
		}
	}
	return b
}

func orBase64Note(text, b64 string) string {
	if b64 != "" {
		return fmt.Sprintf("(not UTF-8: %d bytes of base64 in the structured result)", len(b64))
	}
	return text
}

func (d *daemonTools) readFile(ctx context.Context, raw json.RawMessage) (*mcp.CallToolResult, error) {
	const tool = "sandbox_read_file"
	var in SandboxReadFileInput
	if err := decodeExact(raw, d.specs[tool], &in); err != nil {
		return badArgs(tool, err), nil
	}
	p, err := sandboxPath(in.Path)
	if err != nil {
		return errorResult(tool + ": path: " + err.Error()), nil
	}
	max := int64(daemonReadDefault)
	if in.MaxBytes != 0 {
		if in.MaxBytes < 0 || in.MaxBytes > daemonReadMax {
			return errorResult(fmt.Sprintf("%s: max_bytes: %d is not within 1..%d", tool, in.MaxBytes, daemonReadMax)), nil
		}
		max = in.MaxBytes
	}
	switch in.Encoding {
	case "", "text", "base64":
	default:
		return errorResult(fmt.Sprintf("%s: encoding: %q: want text or base64", tool, in.Encoding)), nil
	}
	if _, err := d.check(ctx, in.Sandbox); err != nil {
		return errorResult(tool + ": " + err.Error()), nil
	}
	fi, err := d.c.Stat(ctx, in.Sandbox, p)
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", p, err)
	}
	if fi.Type != "file" {
		return errorResult(fmt.Sprintf("%s: %s is a %s, not a regular file", tool, p, fi.Type)), nil
	}
	data, truncated, err := d.readHead(ctx, in.Sandbox, p, int(max))
	if err != nil {
		return nil, err
	}
	out := SandboxReadFileOutput{Path: p, Size: fi.Size, Truncated: truncated}
	text, b64 := textOrBase64(data, truncated)
	switch {
	case in.Encoding == "base64" || (in.Encoding == "" && b64 != ""):
		out.Encoding, out.ContentBase64 = "base64", base64.StdEncoding.EncodeToString(data)
	case b64 != "":
		return errorResult(fmt.Sprintf("%s: %s is not valid UTF-8 text; read it with encoding base64", tool, p)), nil
	default:
		out.Encoding, out.Content = "text", text
	}
	msg := out.Content
	if out.Encoding == "base64" {
		msg = out.ContentBase64
	}
	if truncated {
		msg += fmt.Sprintf("\n(truncated: first %d of %d bytes)", len(data), fi.Size)
	}
	return toolResult(msg, out, false), nil
}

func (d *daemonTools) writeFile(ctx context.Context, raw json.RawMessage) (*mcp.CallToolResult, error) {
	const tool = "sandbox_write_file"
	var in SandboxWriteFileInput
	if err := decodeExact(raw, d.specs[tool], &in); err != nil {
		return badArgs(tool, err), nil
	}
	p, data, mode, err := writeArgs(in)
	if err != nil {
		return errorResult(tool + ": " + err.Error()), nil
	}
	if _, err := d.check(ctx, in.Sandbox); err != nil {
		return errorResult(tool + ": " + err.Error()), nil
	}
	if in.Parents {
		if err := d.c.Mkdir(ctx, in.Sandbox, path.Dir(p), 0o755, true); err != nil {
			return nil, fmt.Errorf("create the parents of %s: %w", p, err)
		}
	}
	n, err := d.c.Upload(ctx, in.Sandbox, p, bytes.NewReader(data), mode)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", p, err)
	}
	return toolResult(fmt.Sprintf("Wrote %d bytes to %s.", n, p), SandboxWriteFileOutput{Path: p, Bytes: n}, false), nil
}

// writeArgs checks sandbox_write_file's arguments. It is pure.
func writeArgs(in SandboxWriteFileInput) (string, []byte, uint32, error) {
	p, err := sandboxPath(in.Path)
	if err != nil {
		return "", nil, 0, fmt.Errorf("path: %w", err)
	}
	var data []byte
	switch {
	case in.Content != nil && in.ContentBase64 != "":
		return "", nil, 0, errors.New("give content or content_base64, not both")
	case in.Content != nil:
		data = []byte(*in.Content)
	case in.ContentBase64 != "":
		if data, err = base64.StdEncoding.DecodeString(in.ContentBase64); err != nil {
			return "", nil, 0, fmt.Errorf("content_base64: %w", err)
		}
	default:
		return "", nil, 0, errors.New("give content or content_base64")
	}
	if len(data) > daemonMaxWrite {
		return "", nil, 0, fmt.Errorf("content: %d bytes, over the limit of %d", len(data), daemonMaxWrite)
	}
	var mode uint32
	if in.Mode != "" {
		v, err := strconv.ParseUint(in.Mode, 8, 32)
		if err != nil || v == 0 || v > 0o7777 {
			return "", nil, 0, fmt.Errorf("mode: %q is not octal permissions such as 0644", in.Mode)
		}
		mode = uint32(v)
	}
	return p, data, mode, nil
}

func (d *daemonTools) destroy(ctx context.Context, raw json.RawMessage) (*mcp.CallToolResult, error) {
	const tool = "sandbox_destroy"
	var in SandboxRef
	if err := decodeExact(raw, d.specs[tool], &in); err != nil {
		return badArgs(tool, err), nil
	}
	if _, err := d.check(ctx, in.Sandbox); err != nil {
		return errorResult(tool + ": " + err.Error()), nil
	}
	if err := d.c.Destroy(ctx, in.Sandbox); err != nil {
		return nil, fmt.Errorf("destroy %s: %w", in.Sandbox, err)
	}
	d.log.Info("sandbox destroyed through the gateway", "sandbox", in.Sandbox)
	return toolResult(fmt.Sprintf("Destroyed sandbox %s.", in.Sandbox), nil, false), nil
}
