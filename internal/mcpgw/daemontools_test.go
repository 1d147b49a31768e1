package mcpgw

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// offlineDaemonTools builds the daemon tools against a socket nobody
// serves: enough for everything that happens before the daemon is asked.
func offlineDaemonTools(t testing.TB, foreign bool) (*daemonTools, []Builtin) {
	t.Helper()
	c, err := client.New(client.Config{Socket: filepath.Join(t.TempDir(), "no-daemon.sock")})
	if err != nil {
		t.Fatal(err)
	}
	tools, err := DaemonTools(DaemonOptions{Client: c, Gateway: "gw1", Foreign: foreign, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonTools{c: c, gateway: "gw1", foreign: foreign, log: testLogger(t), specs: map[string]argSpec{}}
	for _, b := range tools {
		spec, err := newArgSpec(b.Tool.InputSchema, true)
		if err != nil {
			t.Fatal(err)
		}
		d.specs[b.Tool.Name] = spec
	}
	return d, tools
}

// builtinPolicy is the policy the gateway applies to b (see addBuiltin),
// with no user rules.
func builtinPolicy(t testing.TB, b Builtin) *approval.Policy {
	t.Helper()
	pol := b.Policy
	pol.TrustHints = true
	if err := pol.Compile(); err != nil {
		t.Fatal(err)
	}
	return &pol
}

func TestDaemonToolsDefaultClassification(t *testing.T) {
	_, tools := offlineDaemonTools(t, false)
	byName := map[string]Builtin{}
	for _, b := range tools {
		byName[b.Tool.Name] = b
	}
	var names []string
	for n := range byName {
		names = append(names, n)
	}
	want := []string{"sandbox_create", "sandbox_destroy", "sandbox_exec", "sandbox_list", "sandbox_read_file", "sandbox_write_file"}
	if got := sortedSet(toSet(names)); !reflect.DeepEqual(got, want) {
		t.Fatalf("tools %v, want %v", got, want)
	}
	for _, tc := range []struct {
		tool, args string
		want       approval.Class
	}{
		{"sandbox_list", `{}`, approval.Green},
		{"sandbox_list", `{"labels":{"a":"b"}}`, approval.Green},
		{"sandbox_read_file", `{"sandbox":"s","path":"/etc/passwd"}`, approval.Green},
		{"sandbox_create", `{}`, approval.Green},
		{"sandbox_create", `{"memory":"1g","pids":64,"cpus":0.5,"ttl":"2h","env":{"A":"b"},"labels":{"x":"y"}}`, approval.Green},
		{"sandbox_create", `{"seccomp":"default"}`, approval.Green},
		{"sandbox_create", `{"seccomp":"strict"}`, approval.Green},
		{"sandbox_create", `{"seccomp":"unconfined"}`, approval.Red},
		{"sandbox_create", `{"seccomp":"Default"}`, approval.Red},
		{"sandbox_create", `{"seccomp":"default|strict"}`, approval.Red},
		{"sandbox_create", `{"seccomp":"/etc/profile.json"}`, approval.Red},
		{"sandbox_create", `{"seccomp":["default"]}`, approval.Red},
		{"sandbox_create", `{"mounts":["/:/host:rw"]}`, approval.Red},
		{"sandbox_create", `{"mounts":[]}`, approval.Red}, // present at all: red
		{"sandbox_create", `{"mounts":null}`, approval.Red},
		{"sandbox_create", `{"allow":["example.com:443"]}`, approval.Red},
		{"sandbox_exec", `{"sandbox":"s","command":["true"]}`, approval.Red},
		{"sandbox_write_file", `{"sandbox":"s","path":"a","content":"x"}`, approval.Red},
		{"sandbox_destroy", `{"sandbox":"s"}`, approval.Red},
	} {
		b := byName[tc.tool]
		args, _, err := parseArgs(json.RawMessage(tc.args), mustSpec(t, b))
		if err != nil {
			t.Fatalf("%s %s: %v", tc.tool, tc.args, err)
		}
		v := builtinPolicy(t, b).Classify(approval.Call{Server: BuiltinServer, Tool: tc.tool, Arguments: args, Annotations: b.Tool.Annotations})
		if v.Class != tc.want {
			t.Errorf("%s %s: %s (%s), want %s", tc.tool, tc.args, v.Class, v.Reason, tc.want)
		}
	}
	// Tools that name a sandbox are checked before classification, and the
	// write's card reads through the sandbox.
	for _, n := range []string{"sandbox_exec", "sandbox_read_file", "sandbox_write_file", "sandbox_destroy"} {
		if byName[n].Precheck == nil {
			t.Errorf("%s has no precheck", n)
		}
	}
	if byName["sandbox_write_file"].ReadFor == nil {
		t.Error("sandbox_write_file has no card reader")
	}
}

func toSet(l []string) map[string]bool {
	m := map[string]bool{}
	for _, s := range l {
		m[s] = true
	}
	return m
}

func mustSpec(t testing.TB, b Builtin) argSpec {
	t.Helper()
	s, err := newArgSpec(b.Tool.InputSchema, true)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDaemonToolsThroughGatewayWithoutDaemon: the tools' arguments are
// refused before classification exactly as sandbox_run's (case variants,
// repeated and unknown keys), and a call naming a sandbox cannot be
// checked without the daemon, so it is refused (blocked), never held.
func TestDaemonToolsThroughGatewayWithoutDaemon(t *testing.T) {
	_, tools := offlineDaemonTools(t, false)
	h := startGateway(t, `{"mcpServers":{}}`, func(o *Options) {
		o.Builtins = tools
		o.ApprovalTimeout = 100 * time.Millisecond
	})
	bad := []struct{ tool, args string }{
		{"sandbox_create", `{"Mounts":["/:/host:rw"]}`},
		{"sandbox_create", `{"ALLOW":["0.0.0.0/0"]}`},
		{"sandbox_create", `{"mountſ":["/:/host:rw"]}`},
		{"sandbox_create", `{"seccomp":"strict","seccomp":"unconfined"}`},
		{"sandbox_create", `{"Seccomp":"unconfined"}`},
		{"sandbox_exec", `{"sandbox":"s","command":["id"],"Sandbox":"other"}`},
		{"sandbox_write_file", `{"sandbox":"s","path":"a","content":"x","Path":"/etc/x"}`},
		{"sandbox_list", `{"foreign":true}`},
	}
	n := 0
	for _, tc := range bad {
		_, err := h.call(t, "ironclaw__"+tc.tool, json.RawMessage(tc.args))
		var jerr *jsonrpc.Error
		if !errors.As(err, &jerr) || jerr.Code != jsonrpc.CodeInvalidParams {
			t.Errorf("%s %s: got %v, want an invalid-params error", tc.tool, tc.args, err)
		}
		n++
		if r := h.audit(t, n)[n-1]; r.Decision != store.DecisionBlocked || r.Class != "" {
			t.Errorf("%s %s: audit %+v, want blocked before classification", tc.tool, tc.args, r)
		}
	}
	for _, tool := range []string{"sandbox_exec", "sandbox_write_file", "sandbox_destroy", "sandbox_read_file"} {
		args := map[string]any{"sandbox": "s"}
		switch tool {
		case "sandbox_exec":
			args["command"] = []string{"id"}
		case "sandbox_write_file":
			args["path"], args["content"] = "a", "x"
		case "sandbox_read_file":
			args["path"] = "a"
		}
		r, err := h.call(t, "ironclaw__"+tool, args)
		if err != nil || !r.IsError || !strings.Contains(text(r), "ask the daemon") {
			t.Fatalf("%s without a daemon: %v %+v", tool, err, r)
		}
		n++
		if rec := h.audit(t, n)[n-1]; rec.Decision != store.DecisionBlocked || rec.Class != "" || !strings.Contains(rec.Error, "ask the daemon") {
			t.Errorf("%s without a daemon: audit %+v", tool, rec)
		}
	}
	if l, _ := h.queue.List(); len(l) != 0 {
		t.Errorf("calls were held: %+v", l)
	}
}

func TestCreateRequest(t *testing.T) {
	d, _ := offlineDaemonTools(t, false)
	req, err := d.createRequest(SandboxCreateInput{})
	if err != nil {
		t.Fatal(err)
	}
	want := api.CreateRequest{Labels: map[string]string{OwnerLabel: "gw1"}, TTL: "1h0m0s", IdleTimeout: "30m0s"}
	if !reflect.DeepEqual(req, want) {
		t.Fatalf("defaults: %+v, want %+v", req, want)
	}
	req, err = d.createRequest(SandboxCreateInput{
		ID: "box-1", Memory: "256m", Pids: 64, CPUs: 0.5, TTL: "10m", Allow: []string{"example.com:443"},
		Mounts: []string{"/srv/data:/data:rw", "/opt/x:/x"}, Seccomp: "strict",
		Env: map[string]string{"B": "2", "A": "1=1"}, Labels: map[string]string{"team": "a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if req.ID != "box-1" || *req.Resources.MemoryBytes != 256<<20 || *req.Resources.Pids != 64 || *req.Resources.CPUs != 0.5 ||
		req.TTL != "10m0s" || req.IdleTimeout != "10m0s" || req.Network.Allow[0] != "example.com:443" ||
		!reflect.DeepEqual(req.Mounts, []api.Mount{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/opt/x", Target: "/x"}}) ||
		req.Seccomp.Profile != "strict" || !reflect.DeepEqual(req.Env, []string{"A=1=1", "B=2"}) ||
		!reflect.DeepEqual(req.Labels, map[string]string{OwnerLabel: "gw1", "team": "a"}) {
		t.Errorf("full: %+v", req)
	}
	for _, tc := range []struct {
		in   SandboxCreateInput
		want string
	}{
		{SandboxCreateInput{Labels: map[string]string{OwnerLabel: "other"}}, `labels: "ironclaw.mcp.gateway": keys under "ironclaw." are reserved`},
		{SandboxCreateInput{Labels: map[string]string{"ironclaw.x": "y"}}, `reserved`},
		{SandboxCreateInput{Memory: "0"}, `memory: "0": want a positive size`},
		{SandboxCreateInput{Memory: "lots"}, `memory:`},
		{SandboxCreateInput{Pids: -1}, `pids: -1`},
		{SandboxCreateInput{CPUs: -2}, `cpus: -2`},
		{SandboxCreateInput{TTL: "25h"}, `ttl: 25h0m0s is over the limit of 24h0m0s`},
		{SandboxCreateInput{TTL: "0s"}, `ttl: "0s": want a positive duration`},
		{SandboxCreateInput{TTL: "soon"}, `ttl: "soon"`},
		{SandboxCreateInput{TTL: "1h", IdleTimeout: "2h"}, `idle_timeout: 2h0m0s is over the limit of 1h0m0s`},
		{SandboxCreateInput{Allow: []string{" "}}, `allow[0]: empty rule`},
		{SandboxCreateInput{Mounts: []string{"relative:/x"}}, `mounts[0]`},
		{SandboxCreateInput{Seccomp: "loose"}, `seccomp: "loose": want default, strict or unconfined`},
		{SandboxCreateInput{Env: map[string]string{"A-B": "1"}}, `env: bad variable name "A-B"`},
		{SandboxCreateInput{Env: map[string]string{"A": "\x00"}}, `env.A: value contains a NUL byte`},
		{SandboxCreateInput{ID: "a\nb"}, `id:`},
	} {
		if _, err := d.createRequest(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestExecRequestAndWriteArgs(t *testing.T) {
	req, err := execRequest(SandboxExecInput{Sandbox: "s", Command: []string{"cat"}, Stdin: "in", Env: map[string]string{"X": "1"}, Dir: "/workspace/sub/../dir", User: "1000:1000"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(req, api.ExecRequest{Argv: []string{"cat"}, Stdin: []byte("in"), Env: []string{"X=1"}, Dir: "/workspace/dir", User: "1000:1000", Timeout: "1m0s"}) {
		t.Errorf("exec request %+v", req)
	}
	for _, tc := range []struct {
		in   SandboxExecInput
		want string
	}{
		{SandboxExecInput{}, "command: must name a program"},
		{SandboxExecInput{Command: []string{""}}, "command: must name a program"},
		{SandboxExecInput{Command: []string{"x"}, Timeout: "11m"}, "timeout: 11m0s is over the limit of 10m0s"},
		{SandboxExecInput{Command: []string{"x"}, Stdin: strings.Repeat("x", daemonMaxStdin+1)}, "stdin:"},
		{SandboxExecInput{Command: []string{"x"}, User: "nobody!"}, "user:"},
		{SandboxExecInput{Command: []string{"x"}, Env: map[string]string{"1A": ""}}, "bad variable name"},
		{SandboxExecInput{Command: []string{"x"}, Dir: "sub"}, `dir: "sub" is not an absolute path`},
	} {
		if _, err := execRequest(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.in, err, tc.want)
		}
	}
	empty := ""
	p, data, mode, err := writeArgs(SandboxWriteFileInput{Path: "/workspace/notes.txt", Content: &empty, Mode: "0600"})
	if err != nil || p != "/workspace/notes.txt" || len(data) != 0 || mode != 0o600 {
		t.Errorf("write args: %q %q %o %v", p, data, mode, err)
	}
	p, data, _, err = writeArgs(SandboxWriteFileInput{Path: "/tmp//x/../y", ContentBase64: "AAEC/w=="})
	if err != nil || p != "/tmp/y" || !bytes.Equal(data, []byte{0, 1, 2, 255}) {
		t.Errorf("write args base64: %q %v %v", p, data, err)
	}
	x := "x"
	for _, tc := range []struct {
		in   SandboxWriteFileInput
		want string
	}{
		{SandboxWriteFileInput{Content: &x}, "path: required"},
		{SandboxWriteFileInput{Path: "a", Content: &x}, `path: "a" is not an absolute path`},
		{SandboxWriteFileInput{Path: "/a"}, "give content or content_base64"},
		{SandboxWriteFileInput{Path: "/a", Content: &x, ContentBase64: "eA=="}, "not both"},
		{SandboxWriteFileInput{Path: "/a", ContentBase64: "!!"}, "content_base64:"},
		{SandboxWriteFileInput{Path: "/a", Content: &x, Mode: "rw"}, `mode: "rw"`},
		{SandboxWriteFileInput{Path: "/a", Content: &x, Mode: "append"}, `mode: "append"`},
		{SandboxWriteFileInput{Path: "/a", Content: &x, Mode: "17777"}, `mode: "17777"`},
		{SandboxWriteFileInput{Path: "/a\x00", Content: &x}, "NUL"},
	} {
		if _, _, _, err := writeArgs(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestTextOrBase64(t *testing.T) {
	for _, tc := range []struct {
		in        []byte
		truncated bool
		text, b64 string
	}{
		{[]byte("héllo"), false, "héllo", ""},
		{[]byte{0xff, 'a'}, false, "", "/2E="},
		{[]byte("h\xc3"), true, "h", ""},     // a rune cut by truncation
		{[]byte("h\xc3"), false, "", "aMM="}, // the whole file: not text
		{[]byte("\xe2\x82"), true, "", ""},
	} {
		text, b64 := textOrBase64(tc.in, tc.truncated)
		if text != tc.text || b64 != tc.b64 {
			t.Errorf("textOrBase64(%q, %v) = %q, %q; want %q, %q", tc.in, tc.truncated, text, b64, tc.text, tc.b64)
		}
	}
}

// FuzzDaemonToolArgs pairs the gateway's classification of each daemon
// tool's arguments with the tool's decoding of what the gateway passes it,
// as FuzzSandboxRunArgs does for sandbox_run: a green create never decodes
// to mounts, egress rules or a seccomp profile other than default or
// strict; exec, write_file and destroy are never green by default; and
// whatever the gateway accepts decodes, with plain encoding/json, to
// exactly what the classifier saw.
func FuzzDaemonToolArgs(f *testing.F) {
	seeds := []struct {
		tool byte
		args string
	}{
		{0, `{}`},
		{0, `{"Mounts":["/:/host:rw"],"ALLOW":["0.0.0.0/0"]}`},
		{0, `{"mountſ":["/:/host:rw"]}`},
		{0, `{"seccomp":"strict","Seccomp":"unconfined"}`},
		{0, `{"seccomp":"default","seccomp":"unconfined"}`},
		{0, `{"mounts":null,"allow":null}`},
		{0, `{"memory":"1g","env":{"A":"b"},"labels":{"k":"v"}}`},
		{1, `{"labels":{"ironclaw.mcp.gateway":"x"}}`},
		{2, `{"sandbox":"s","command":["sh","-c","id"],"stdin":"x"}`},
		{3, `{"sandbox":"s","path":"a","max_bytes":10,"encoding":"base64"}`},
		{4, `{"sandbox":"s","path":"a","content":"x","mode":"0644"}`},
		{4, `{"sandbox":"s","path":"a","content":"x","Content":"y"}`},
		{5, `{"sandbox":"s"}`},
		{5, `{"sandbox":"s","SANDBOX":"t"}`},
	}
	for _, s := range seeds {
		f.Add(s.tool, []byte(s.args))
	}
	_, tools := offlineDaemonTools(f, false)
	type fuzzTool struct {
		b    Builtin
		pol  *approval.Policy
		spec argSpec
		in   func() any
	}
	newIn := map[string]func() any{
		"sandbox_create":     func() any { return &SandboxCreateInput{} },
		"sandbox_list":       func() any { return &SandboxListInput{} },
		"sandbox_exec":       func() any { return &SandboxExecInput{} },
		"sandbox_read_file":  func() any { return &SandboxReadFileInput{} },
		"sandbox_write_file": func() any { return &SandboxWriteFileInput{} },
		"sandbox_destroy":    func() any { return &SandboxRef{} },
	}
	order := []string{"sandbox_create", "sandbox_list", "sandbox_exec", "sandbox_read_file", "sandbox_write_file", "sandbox_destroy"}
	var ft []fuzzTool
	for _, name := range order {
		for _, b := range tools {
			if b.Tool.Name == name {
				ft = append(ft, fuzzTool{b: b, pol: builtinPolicy(f, b), spec: mustSpec(f, b), in: newIn[name]})
			}
		}
	}
	if len(ft) != len(order) {
		f.Fatalf("found %d of %d tools", len(ft), len(order))
	}
	f.Fuzz(func(t *testing.T, which byte, raw []byte) {
		tl := ft[int(which)%len(ft)]
		name := tl.b.Tool.Name
		args, canon, err := parseArgs(raw, tl.spec)
		if err != nil {
			return
		}
		v := tl.pol.Classify(approval.Call{Server: BuiltinServer, Tool: name, Arguments: args, Annotations: tl.b.Tool.Annotations})
		in := tl.in()
		if err := decodeExact(canon, tl.spec, in); err != nil {
			return // the handler refuses it: nothing runs
		}
		switch x := in.(type) {
		case *SandboxCreateInput:
			if v.Class == approval.Green && (len(x.Mounts) > 0 || len(x.Allow) > 0 || (x.Seccomp != "" && x.Seccomp != "default" && x.Seccomp != "strict")) {
				t.Fatalf("%s: create classified green (%s) but runs with mounts %q, allow %q, seccomp %q", raw, v.Reason, x.Mounts, x.Allow, x.Seccomp)
			}
		case *SandboxExecInput, *SandboxWriteFileInput, *SandboxRef:
			if v.Class == approval.Green {
				t.Fatalf("%s: %s classified green by default (%s)", raw, name, v.Reason)
			}
		}
		plain := tl.in()
		if json.Unmarshal(raw, plain) == nil {
			a, _ := json.Marshal(plain)
			b, _ := json.Marshal(in)
			if !bytes.Equal(a, b) {
				t.Fatalf("%s: %s: encoding/json reads %s, the gateway classified %s", raw, name, a, b)
			}
		}
	})
}
