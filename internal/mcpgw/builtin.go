package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// SandboxRunInput are the arguments of the sandbox_run tool.
type SandboxRunInput struct {
	Command  []string `json:"command,omitempty" jsonschema:"program and arguments to run (give command or code)"`
	Code     string   `json:"code,omitempty" jsonschema:"source code to run with language"`
	Language string   `json:"language,omitempty" jsonschema:"language of code: sh, bash, python or node (default sh)"`
	Stdin    string   `json:"stdin,omitempty" jsonschema:"data written to the command's standard input"`
	Mounts   []string `json:"mounts,omitempty" jsonschema:"host paths to grant, HOST:GUEST[:ro|rw]; any mount needs approval"`
	Allow    []string `json:"allow,omitempty" jsonschema:"network egress allow rules; any rule needs approval"`
	Timeout  string   `json:"timeout,omitempty" jsonschema:"wall-clock limit such as 30s (default 60s, at most 10m)"`
	Memory   string   `json:"memory,omitempty" jsonschema:"memory limit such as 256m"`
	Pids     int64    `json:"pids,omitempty" jsonschema:"process limit"`
	Seccomp  string   `json:"seccomp,omitempty" jsonschema:"seccomp profile: default or strict"`
}

// SandboxRunOutput is the structured result of sandbox_run.
type SandboxRunOutput struct {
	ExitCode        int    `json:"exit_code"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
}

const (
	sandboxRunDefaultTimeout = 60 * time.Second
	sandboxRunMaxTimeout     = 10 * time.Minute
	sandboxRunMaxOutput      = 1 << 20
)

var languages = map[string][]string{
	"sh": {"sh", "-c"}, "bash": {"bash", "-c"}, "python": {"python3", "-c"}, "node": {"node", "-e"},
}

// SandboxRun is the builtin tool that runs code or a command in a fresh
// jail with the policy the caller asks for. It always uses the jail: there
// is no unsandboxed path. By default a call without mounts and without
// egress rules is green; anything else is red.
//
// The daemon's tools for long-lived sandboxes (create, exec, read, write)
// plug in beside it as more Builtins in Options.Builtins.
func SandboxRun(binary, root string) (Builtin, error) {
	schema, err := jsonschema.For[SandboxRunInput](nil)
	if err != nil {
		return Builtin{}, fmt.Errorf("sandbox_run schema: %w", err)
	}
	outSchema, err := jsonschema.For[SandboxRunOutput](nil)
	if err != nil {
		return Builtin{}, fmt.Errorf("sandbox_run schema: %w", err)
	}
	f := false
	tool := &mcp.Tool{
		Name:  "sandbox_run",
		Title: "Run in a fresh sandbox",
		Description: "Runs a command, or code in sh/bash/python/node, in a fresh disposable IronClaw sandbox " +
			"(namespace jail: no host files, loopback-only network unless granted) and returns its exit code and output.",
		InputSchema:  schema,
		OutputSchema: outSchema,
		Annotations:  &mcp.ToolAnnotations{DestructiveHint: &f, OpenWorldHint: &f},
	}
	yes := true
	pol := approval.Policy{Rules: []approval.Rule{{
		Tool:  "sandbox_run",
		Args:  map[string]approval.Matcher{"mounts": {Absent: &yes}, "allow": {Absent: &yes}},
		Class: approval.Green,
	}, {Tool: "sandbox_run", Class: approval.Red}}}
	spec, err := newArgSpec(schema, true)
	if err != nil {
		return Builtin{}, fmt.Errorf("sandbox_run schema: %w", err)
	}
	r := &sandboxRunner{binary: binary, root: root, args: spec}
	return Builtin{Tool: tool, Handler: r.handle, Policy: pol}, nil
}

type sandboxRunner struct {
	binary, root string
	args         argSpec
}

// decode reads sandbox_run's arguments. The gateway has already refused
// anything but the exact property names; decode checks again, so that the
// handler can never read a field (such as "Mounts") that the classifier
// did not see under its exact name.
func (r *sandboxRunner) decode(raw json.RawMessage) (SandboxRunInput, error) {
	var in SandboxRunInput
	_, canon, err := parseArgs(raw, r.args)
	if err != nil {
		return in, err
	}
	dec := json.NewDecoder(bytes.NewReader(canon))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return in, err
	}
	return in, nil
}

// argv builds the `ironclaw run` command line for in. It is pure.
func (r *sandboxRunner) argv(in SandboxRunInput, id string) ([]string, time.Duration, error) {
	var cmd []string
	switch {
	case len(in.Command) > 0 && in.Code != "":
		return nil, 0, errors.New("give command or code, not both")
	case len(in.Command) > 0:
		cmd = in.Command
	case in.Code != "":
		lang := in.Language
		if lang == "" {
			lang = "sh"
		}
		pre, ok := languages[lang]
		if !ok {
			return nil, 0, fmt.Errorf("language %q: want sh, bash, python or node", lang)
		}
		cmd = append(append([]string{}, pre...), in.Code)
	default:
		return nil, 0, errors.New("give command or code")
	}
	timeout := sandboxRunDefaultTimeout
	if in.Timeout != "" {
		d, err := time.ParseDuration(in.Timeout)
		if err != nil || d <= 0 {
			return nil, 0, fmt.Errorf("timeout %q: want a positive duration such as 30s", in.Timeout)
		}
		timeout = min(d, sandboxRunMaxTimeout)
	}
	argv := []string{r.binary}
	if r.root != "" {
		argv = append(argv, "--root", r.root)
	}
	argv = append(argv, "run", "--name", id, "--timeout", timeout.String())
	for i, m := range in.Mounts {
		mt, err := sandbox.ParseMount(m)
		if err != nil {
			return nil, 0, fmt.Errorf("mounts[%d]: %w", i, err)
		}
		argv = append(argv, "--mount", mt.String())
	}
	for i, a := range in.Allow {
		if strings.TrimSpace(a) == "" {
			return nil, 0, fmt.Errorf("allow[%d]: empty rule", i)
		}
		argv = append(argv, "--allow", a)
	}
	if in.Memory != "" {
		if _, err := sandbox.ParseSize(in.Memory); err != nil {
			return nil, 0, fmt.Errorf("memory: %w", err)
		}
		argv = append(argv, "--memory", in.Memory)
	}
	if in.Pids != 0 {
		if in.Pids < 2 {
			return nil, 0, errors.New("pids: at least 2")
		}
		argv = append(argv, "--pids", strconv.FormatInt(in.Pids, 10))
	}
	switch in.Seccomp {
	case "":
	case "default", "strict":
		argv = append(argv, "--seccomp", in.Seccomp)
	default:
		return nil, 0, fmt.Errorf("seccomp %q: want default or strict", in.Seccomp)
	}
	argv = append(argv, "--")
	return append(argv, cmd...), timeout, nil
}

func (r *sandboxRunner) handle(ctx context.Context, raw json.RawMessage) (*mcp.CallToolResult, error) {
	in, err := r.decode(raw)
	if err != nil {
		return errorResult("sandbox_run: bad arguments: " + err.Error()), nil
	}
	argv, timeout, err := r.argv(in, "mcp-sbx-"+randomHex(6))
	if err != nil {
		return errorResult("sandbox_run: " + err.Error()), nil
	}
	// The jail enforces the timeout; the extra grace lets it report it.
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Stdin = strings.NewReader(in.Stdin)
	stdout := &cappedBuffer{max: sandboxRunMaxOutput}
	stderr := &cappedBuffer{max: sandboxRunMaxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Run()
	out := SandboxRunOutput{Stdout: stdout.String(), Stderr: stderr.String(), StdoutTruncated: stdout.over, StderrTruncated: stderr.over}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		out.ExitCode = ee.ExitCode()
	default:
		return nil, fmt.Errorf("sandbox_run: start ironclaw run: %w", err)
	}
	text := fmt.Sprintf("exit code %d\n--- stdout ---\n%s\n--- stderr ---\n%s", out.ExitCode, out.Stdout, out.Stderr)
	return &mcp.CallToolResult{
		Content:           []mcp.Content{&mcp.TextContent{Text: text}},
		StructuredContent: out,
		IsError:           out.ExitCode != 0,
	}, nil
}

// cappedBuffer keeps the first max bytes written and notes the overflow.
type cappedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room < len(p) {
		b.over = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}
