// Package config parses an MCP gateway configuration: the mcpServers JSON
// that Claude Desktop, Cursor and others use, plus IronClaw's keys, strictly
// (an unknown or repeated key is an error naming the server and the key),
// and builds the pure `ironclaw run` argv that sandboxes a stdio server.
//
// It is its own package, apart from the gateway, so that fuzzing it does
// not drag the SQLite store into the coverage-instrumented binary.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// ErrConfig marks an invalid gateway configuration.
var ErrConfig = errors.New("invalid MCP gateway config")

// Sandbox backends of a stdio server.
const (
	// BackendJail runs the server in a namespace jail (`ironclaw run`). The default.
	BackendJail = "jail"
	// BackendVM runs the server in a micro-VM. Not available yet.
	BackendVM = "vm"
	// BackendNone runs the server directly on the host, unsandboxed.
	BackendNone = "none"
)

// Transports of a server.
const (
	TransportStdio      = "stdio"
	TransportStreamable = "http"
	TransportSSE        = "sse"
)

// BuiltinServer is the namespace of the gateway's own tools; no configured
// server may take the name.
const BuiltinServer = "ironclaw"

// Separator joins a server name and a tool name.
const Separator = "__"

// Config is a parsed gateway configuration.
type Config struct {
	// Servers by name.
	Servers map[string]*ServerConfig
	// Approval is the gateway-wide policy (rules may name servers); it is
	// consulted after each server's own rules.
	Approval approval.Policy
	// Daemon configures the tools for the daemon's long-lived sandboxes
	// ("ironclaw": {"daemon": {...}}).
	Daemon DaemonConfig
}

// DaemonConfig configures the gateway's tools for long-lived sandboxes,
// which it offers when a daemon (`ironclaw serve`) answers on its socket.
type DaemonConfig struct {
	// Socket is the daemon's Unix socket; empty means the state root's
	// (ROOT/ironclaw.sock, or $IRONCLAW_SOCKET as for the CLI).
	Socket string
	// Disabled turns the tools off even when a daemon runs.
	Disabled bool
	// ForeignSandboxes lets the tools list, exec in, read, write and
	// destroy sandboxes this gateway did not create. By default they
	// reach only sandboxes labelled with this gateway's name.
	ForeignSandboxes bool
}

// Names returns the server names, sorted.
func (c *Config) Names() []string {
	names := make([]string, 0, len(c.Servers))
	for n := range c.Servers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ServerConfig is one entry of mcpServers.
type ServerConfig struct {
	Name string
	// Transport is TransportStdio, TransportStreamable or TransportSSE.
	// For a url with no "type", it is TransportStreamable with a fallback
	// to SSE (AutoFallback).
	Transport    string
	AutoFallback bool
	Command      string
	Args         []string
	// Env is secret: it is never logged (see LogValue).
	Env map[string]string
	URL string
	// Headers are secret: they are never logged.
	Headers  map[string]string
	Disabled bool
	Sandbox  SandboxConfig
	Tools    ToolFilter
	Approval approval.Policy
	// TrustHints ("trust_hints") lets this server's tool annotations and
	// tool names make calls green; by default they can only make calls
	// red (see approval.Policy.TrustHints).
	TrustHints bool
}

// SandboxConfig is how a stdio server is sandboxed (its "ironclaw" keys).
type SandboxConfig struct {
	Backend string
	Mounts  []sandbox.Mount
	Workdir string
	Allow   []string
	Seccomp string
	User    string
	Rootfs  string
	Memory  string
	Pids    int64
	CPUs    float64
}

// ToolFilter hides tools: a tool is exposed if it matches an Allow glob (or
// Allow is empty) and no Deny glob. Globs match whole tool names.
type ToolFilter struct {
	Allow []string
	Deny  []string
}

// Permits reports whether the filter exposes the tool name.
func (f ToolFilter) Permits(name string) bool {
	for _, d := range f.Deny {
		if approval.Glob(d, name) {
			return false
		}
	}
	if len(f.Allow) == 0 {
		return true
	}
	for _, a := range f.Allow {
		if approval.Glob(a, name) {
			return true
		}
	}
	return false
}

// LogValue keeps env and header values out of every log: only their names
// are shown.
func (s *ServerConfig) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("name", s.Name), slog.String("transport", s.Transport)}
	if s.Transport == TransportStdio {
		attrs = append(attrs, slog.String("command", s.Command), slog.String("backend", s.Sandbox.Backend))
		attrs = append(attrs, slog.Any("env", SortedKeys(s.Env)))
	} else {
		attrs = append(attrs, slog.String("url", redactURL(s.URL)), slog.Any("headers", SortedKeys(s.Headers)))
	}
	return slog.GroupValue(attrs...)
}

// SecretValues returns the values the audit log and cards must never show:
// every header value, env values under secret-looking names, and any env
// value long enough to be a credential.
func (s *ServerConfig) SecretValues() []string {
	var out []string
	for _, v := range s.Headers {
		out = append(out, v)
		if _, tok, ok := strings.Cut(v, " "); ok { // "Bearer TOKEN": the token alone too
			out = append(out, tok)
		}
	}
	for k, v := range s.Env {
		if approval.SecretKey(k) || len(v) >= 16 {
			out = append(out, v)
		}
	}
	if u, err := url.Parse(s.URL); err == nil {
		if u.User != nil {
			if p, ok := u.User.Password(); ok {
				out = append(out, p)
			}
		}
		// Query values often carry API keys (?key=...).
		for _, vs := range u.Query() {
			out = append(out, vs...)
		}
	}
	return out
}

// SortedKeys returns the keys of m in sorted order: env and header names
// for logs (never their values) and the order of EnvLines.
func SortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	return u.String()
}

// Parse parses a gateway configuration: the mcpServers JSON that
// Claude Desktop, Cursor and others use, with IronClaw's keys under
// "ironclaw" per server and at the top level. Parsing is strict: an unknown
// or duplicated key is an error naming the server and the key.
func Parse(data []byte) (*Config, error) {
	if err := checkDuplicateKeys(data); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	top, err := object(data, "config", "mcpServers", "ironclaw")
	if err != nil {
		return nil, err
	}
	cfg := &Config{Servers: map[string]*ServerConfig{}}
	rawServers, ok := top["mcpServers"]
	if !ok {
		return nil, fmt.Errorf("%w: config: missing \"mcpServers\"", ErrConfig)
	}
	servers, err := object(rawServers, "mcpServers")
	if err != nil {
		return nil, err
	}
	for name, raw := range servers {
		s, err := parseServer(name, raw)
		if err != nil {
			return nil, err
		}
		cfg.Servers[name] = s
	}
	if raw, ok := top["ironclaw"]; ok {
		g, err := object(raw, "ironclaw", "approval", "daemon")
		if err != nil {
			return nil, err
		}
		if raw, ok := g["daemon"]; ok {
			if err := parseDaemon(&cfg.Daemon, raw); err != nil {
				return nil, err
			}
		}
		if raw, ok := g["approval"]; ok {
			p, err := approval.ParsePolicy(raw)
			if err != nil {
				return nil, fmt.Errorf("%w: ironclaw.approval: %v", ErrConfig, err)
			}
			cfg.Approval = p
		}
	}
	return cfg, nil
}

func parseDaemon(d *DaemonConfig, raw json.RawMessage) error {
	const where = "ironclaw.daemon"
	m, err := object(raw, where, "socket", "disabled", "foreign_sandboxes")
	if err != nil {
		return err
	}
	for _, f := range []struct {
		key string
		dst any
	}{{"socket", &d.Socket}, {"disabled", &d.Disabled}, {"foreign_sandboxes", &d.ForeignSandboxes}} {
		if err := field(m, f.key, f.dst, where); err != nil {
			return err
		}
	}
	if _, ok := m["socket"]; ok && (!path.IsAbs(d.Socket) || strings.IndexByte(d.Socket, 0) >= 0) {
		return fmt.Errorf("%w: %s.socket: %q is not an absolute path", ErrConfig, where, d.Socket)
	}
	return nil
}

// ValidServerName checks a server name: letters, digits, '-' and '_' (no "__"), so that
// "server__tool" is a valid MCP tool name and splits unambiguously.
func ValidServerName(name string) error {
	switch {
	case name == "":
		return errors.New("empty server name")
	case len(name) > 64:
		return fmt.Errorf("server name %.20q...: longer than 64 characters", name)
	case name == BuiltinServer:
		return fmt.Errorf("server name %q is reserved for the gateway's own tools", name)
	case strings.Contains(name, Separator):
		return fmt.Errorf("server name %q contains %q, the namespace separator", name, Separator)
	case strings.HasPrefix(name, "_") || strings.HasSuffix(name, "_"):
		return fmt.Errorf("server name %q starts or ends with '_'", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("server name %q: character %q not allowed (use letters, digits, '-' and '_')", name, r)
		}
	}
	return nil
}

func parseServer(name string, raw json.RawMessage) (*ServerConfig, error) {
	if err := ValidServerName(name); err != nil {
		return nil, fmt.Errorf("%w: mcpServers: %v", ErrConfig, err)
	}
	where := fmt.Sprintf("server %q", name)
	m, err := object(raw, where, "command", "args", "env", "url", "headers", "type", "disabled", "ironclaw")
	if err != nil {
		return nil, err
	}
	s := &ServerConfig{Name: name, Sandbox: SandboxConfig{Backend: BackendJail}}
	var typ string
	for _, f := range []struct {
		key string
		dst any
	}{
		{"command", &s.Command}, {"args", &s.Args}, {"env", &s.Env}, {"url", &s.URL},
		{"headers", &s.Headers}, {"type", &typ}, {"disabled", &s.Disabled},
	} {
		if err := field(m, f.key, f.dst, where); err != nil {
			return nil, err
		}
	}
	_, hasCommand := m["command"]
	_, hasURL := m["url"]
	switch typ {
	case "":
		switch {
		case hasCommand && hasURL:
			return nil, fmt.Errorf("%w: %s: has both \"command\" and \"url\"; give one", ErrConfig, where)
		case hasCommand:
			s.Transport = TransportStdio
		case hasURL:
			s.Transport, s.AutoFallback = TransportStreamable, true
		default:
			return nil, fmt.Errorf("%w: %s: needs \"command\" (stdio) or \"url\" (remote)", ErrConfig, where)
		}
	case "stdio":
		s.Transport = TransportStdio
	case "http", "streamable-http", "streamableHttp", "streamable_http":
		s.Transport = TransportStreamable
	case "sse":
		s.Transport = TransportSSE
	default:
		return nil, fmt.Errorf("%w: %s: type: %q is not stdio, http or sse", ErrConfig, where, typ)
	}
	if s.Transport == TransportStdio {
		if hasURL || m["headers"] != nil {
			return nil, fmt.Errorf("%w: %s: a stdio server takes no \"url\" or \"headers\"", ErrConfig, where)
		}
		if strings.TrimSpace(s.Command) == "" {
			return nil, fmt.Errorf("%w: %s: command: must name a program", ErrConfig, where)
		}
		for i, a := range append([]string{s.Command}, s.Args...) {
			if strings.IndexByte(a, 0) >= 0 {
				return nil, fmt.Errorf("%w: %s: args[%d]: contains a NUL byte", ErrConfig, where, i-1)
			}
		}
		// The env travels as KEY=VALUE lines (--env-file), which
		// `ironclaw run` reads skipping '#' lines, stripping leading blanks
		// and "export ", and cutting lines at \n or \r\n: anything that
		// would not come back unchanged is refused here.
		for _, k := range SortedKeys(s.Env) {
			if !validEnvName(k) {
				return nil, fmt.Errorf("%w: %s: env: bad variable name %q (want letters, digits and '_', not starting with a digit)", ErrConfig, where, k)
			}
			if strings.ContainsAny(s.Env[k], "\r\n\x00") {
				return nil, fmt.Errorf("%w: %s: env.%s: value contains a carriage return, newline or NUL byte", ErrConfig, where, k)
			}
		}
	} else {
		if hasCommand || m["args"] != nil || m["env"] != nil {
			return nil, fmt.Errorf("%w: %s: a remote server takes no \"command\", \"args\" or \"env\"", ErrConfig, where)
		}
		u, err := url.Parse(s.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%w: %s: url: want an http:// or https:// URL", ErrConfig, where)
		}
		for k, v := range s.Headers {
			if !validHeaderName(k) {
				return nil, fmt.Errorf("%w: %s: headers: bad header name %q", ErrConfig, where, k)
			}
			if strings.ContainsAny(v, "\r\n\x00") {
				return nil, fmt.Errorf("%w: %s: headers.%s: value contains a line break or NUL byte", ErrConfig, where, k)
			}
		}
	}
	if raw, ok := m["ironclaw"]; ok {
		if err := parseIronClaw(s, raw, where+": ironclaw"); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func parseIronClaw(s *ServerConfig, raw json.RawMessage, where string) error {
	m, err := object(raw, where, "backend", "mounts", "workdir", "allow", "seccomp", "user", "rootfs", "resources", "tools", "approval", "trust_hints")
	if err != nil {
		return err
	}
	sb := &s.Sandbox
	var mounts []string
	for _, f := range []struct {
		key string
		dst any
	}{
		{"backend", &sb.Backend}, {"mounts", &mounts}, {"workdir", &sb.Workdir}, {"allow", &sb.Allow},
		{"seccomp", &sb.Seccomp}, {"user", &sb.User}, {"rootfs", &sb.Rootfs}, {"trust_hints", &s.TrustHints},
	} {
		if err := field(m, f.key, f.dst, where); err != nil {
			return err
		}
	}
	if s.Transport != TransportStdio {
		for _, k := range []string{"backend", "mounts", "workdir", "allow", "seccomp", "user", "rootfs", "resources"} {
			if _, ok := m[k]; ok {
				return fmt.Errorf("%w: %s.%s: only stdio servers run in a sandbox; a remote server takes tools and approval only", ErrConfig, where, k)
			}
		}
	}
	switch sb.Backend {
	case BackendJail, BackendVM, BackendNone:
	default:
		return fmt.Errorf("%w: %s.backend: %q is not jail, vm or none", ErrConfig, where, sb.Backend)
	}
	targets := map[string]bool{}
	for i, ms := range mounts {
		mt, err := sandbox.ParseMount(ms)
		if err != nil {
			return fmt.Errorf("%w: %s.mounts[%d]: %v", ErrConfig, where, i, err)
		}
		if targets[mt.Target] {
			return fmt.Errorf("%w: %s.mounts[%d]: sandbox path %s is mounted twice", ErrConfig, where, i, mt.Target)
		}
		targets[mt.Target] = true
		sb.Mounts = append(sb.Mounts, mt)
	}
	for _, p := range []struct{ key, val string }{{"workdir", sb.Workdir}, {"rootfs", sb.Rootfs}} {
		if p.val != "" && !path.IsAbs(p.val) {
			return fmt.Errorf("%w: %s.%s: %q is not an absolute path", ErrConfig, where, p.key, p.val)
		}
	}
	for i, a := range sb.Allow {
		if strings.TrimSpace(a) == "" || strings.ContainsAny(a, "\x00\n") {
			return fmt.Errorf("%w: %s.allow[%d]: empty or malformed rule", ErrConfig, where, i)
		}
	}
	switch {
	case sb.Seccomp == "", sb.Seccomp == "default", sb.Seccomp == "strict":
	case path.IsAbs(sb.Seccomp):
	default:
		return fmt.Errorf("%w: %s.seccomp: %q is not default, strict or an absolute profile path", ErrConfig, where, sb.Seccomp)
	}
	if sb.User != "" {
		if _, err := sandbox.ParseUser(sb.User); err != nil {
			return fmt.Errorf("%w: %s.user: %v", ErrConfig, where, err)
		}
	}
	if raw, ok := m["resources"]; ok {
		rw := where + ".resources"
		rm, err := object(raw, rw, "memory", "pids", "cpus")
		if err != nil {
			return err
		}
		for _, f := range []struct {
			key string
			dst any
		}{{"memory", &sb.Memory}, {"pids", &sb.Pids}, {"cpus", &sb.CPUs}} {
			if err := field(rm, f.key, f.dst, rw); err != nil {
				return err
			}
		}
		if sb.Memory != "" {
			if _, err := sandbox.ParseSize(sb.Memory); err != nil {
				return fmt.Errorf("%w: %s.memory: %v", ErrConfig, rw, err)
			}
		}
		res := sandbox.Resources{Pids: sb.Pids, CPUs: sb.CPUs}
		if sb.Memory != "" {
			res.MemoryBytes, _ = sandbox.ParseSize(sb.Memory)
		}
		spec := sandbox.Spec{ID: "x", Command: []string{"x"}, Resources: res}
		if err := spec.Validate(); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrConfig, rw, err)
		}
	}
	if raw, ok := m["tools"]; ok {
		tw := where + ".tools"
		tm, err := object(raw, tw, "allow", "deny")
		if err != nil {
			return err
		}
		if err := field(tm, "allow", &s.Tools.Allow, tw); err != nil {
			return err
		}
		if err := field(tm, "deny", &s.Tools.Deny, tw); err != nil {
			return err
		}
		for _, g := range append(slices.Clone(s.Tools.Allow), s.Tools.Deny...) {
			if g == "" || strings.HasSuffix(g, `\`) {
				return fmt.Errorf("%w: %s: empty or malformed glob %q", ErrConfig, tw, g)
			}
		}
	}
	if raw, ok := m["approval"]; ok {
		p, err := approval.ParsePolicy(raw)
		if err != nil {
			return fmt.Errorf("%w: %s.approval: %v", ErrConfig, where, err)
		}
		for i, r := range p.Rules {
			if r.Server != "" {
				return fmt.Errorf("%w: %s.approval: rules[%d].server: a server's own rules apply to it only; put cross-server rules in the top-level ironclaw.approval", ErrConfig, where, i)
			}
		}
		s.Approval = p
	}
	return nil
}

// validEnvName reports whether k is a portable environment variable
// name: [A-Za-z_][A-Za-z0-9_]*.
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

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if r > 0x7e || r <= 0x20 || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

// object decodes raw as a JSON object and checks its keys against known
// (none given: any key). The error names where and the key.
func object(raw json.RawMessage, where string, known ...string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%w: %s: want a JSON object", ErrConfig, where)
	}
	if len(known) > 0 {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !slices.Contains(known, k) {
				return nil, fmt.Errorf("%w: %s: unknown key %q (known keys: %s)", ErrConfig, where, k, strings.Join(known, ", "))
			}
		}
	}
	return m, nil
}

// field decodes m[key] into dst if present; JSON null is rejected.
func field(m map[string]json.RawMessage, key string, dst any, where string) error {
	raw, ok := m[key]
	if !ok {
		return nil
	}
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return fmt.Errorf("%w: %s.%s: null is not allowed", ErrConfig, where, key)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("%w: %s.%s: %s", ErrConfig, where, key, typeError(err))
	}
	return nil
}

func typeError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("got a JSON %s, want %s", te.Value, goTypeName(te.Type.String()))
	}
	return err.Error()
}

func goTypeName(t string) string {
	switch t {
	case "string":
		return "a string"
	case "[]string":
		return "an array of strings"
	case "map[string]string":
		return "an object of strings"
	case "bool":
		return "true or false"
	case "int64":
		return "an integer"
	case "float64":
		return "a number"
	}
	return t
}

// checkDuplicateKeys rejects any JSON object, at any depth, that repeats a
// key: encoding/json would silently keep the last one.
func checkDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(path string, depth int) error
	walk = func(p string, depth int) error {
		if depth > 64 {
			return errors.New("config nests deeper than 64 levels")
		}
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("not valid JSON: %v", err)
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return fmt.Errorf("not valid JSON: %v", err)
				}
				k, _ := kt.(string)
				if seen[k] {
					return fmt.Errorf("%s: key %q appears twice", p, k)
				}
				seen[k] = true
				if err := walk(p+"."+k, depth+1); err != nil {
					return err
				}
			}
		case '[':
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", p, i), depth+1); err != nil {
					return err
				}
			}
		}
		_, err = dec.Token() // closing delimiter
		if err != nil {
			return fmt.Errorf("not valid JSON: %v", err)
		}
		return nil
	}
	if err := walk("config", 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("config: trailing data after the JSON object")
	}
	return nil
}
