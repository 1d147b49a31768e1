package config

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

const fullConfig = `{
  "mcpServers": {
    "fs": {
      "command": "node",
      "args": ["/opt/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", "/data"],
      "env": {"API_TOKEN": "s3cr3t-token-value", "MODE": "x"},
      "ironclaw": {
        "backend": "jail",
        "mounts": ["/srv/data:/data:rw", "/opt/nm:/opt/mcp/node_modules"],
        "allow": ["registry.npmjs.org:443"],
        "seccomp": "strict",
        "user": "1000:1000",
        "resources": {"memory": "512m", "pids": 128, "cpus": 0.5},
        "tools": {"allow": ["read_*", "write_file"], "deny": ["read_media_file"]},
        "approval": {"timeout": "30s", "rules": [{"tool": "write_file", "args": {"path": {"under": "/data/tmp"}}, "class": "green"}]}
      }
    },
    "remote": {"url": "https://mcp.example.invalid/mcp", "headers": {"Authorization": "Bearer abcdefgh12345"}, "ironclaw": {"trust_hints": true}},
    "legacy": {"type": "sse", "url": "http://127.0.0.1:1/sse", "disabled": true}
  },
  "ironclaw": {
    "approval": {"rules": [{"server": "remote", "tool": "*", "class": "red"}]},
    "daemon": {"socket": "/run/other/ironclaw.sock", "foreign_sandboxes": true}
  }
}`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Names(), ","); got != "fs,legacy,remote" {
		t.Fatalf("names %s", got)
	}
	fs := c.Servers["fs"]
	if fs.Transport != TransportStdio || fs.Sandbox.Backend != BackendJail || len(fs.Sandbox.Mounts) != 2 ||
		!fs.Sandbox.Mounts[0].Writable || fs.Sandbox.Mounts[1].Writable || fs.Sandbox.Pids != 128 ||
		fs.Sandbox.CPUs != 0.5 || fs.Sandbox.Memory != "512m" || fs.Sandbox.Seccomp != "strict" {
		t.Errorf("fs: %+v", fs.Sandbox)
	}
	if !fs.Tools.Permits("read_text_file") || fs.Tools.Permits("read_media_file") || fs.Tools.Permits("move_file") || !fs.Tools.Permits("write_file") {
		t.Error("tool filter")
	}
	if fs.Approval.TimeoutOr(0).Seconds() != 30 || len(fs.Approval.Rules) != 1 {
		t.Errorf("approval %+v", fs.Approval)
	}
	if fs.TrustHints {
		t.Error("fs trusts its hints without trust_hints")
	}
	r := c.Servers["remote"]
	if r.Transport != TransportStreamable || !r.AutoFallback || r.Sandbox.Backend != BackendJail || !r.TrustHints {
		t.Errorf("remote %+v", r)
	}
	if l := c.Servers["legacy"]; l.Transport != TransportSSE || l.AutoFallback || !l.Disabled {
		t.Errorf("legacy %+v", l)
	}
	if len(c.Approval.Rules) != 1 || c.Approval.Rules[0].Server != "remote" {
		t.Errorf("global approval %+v", c.Approval)
	}
	if d := c.Daemon; d.Socket != "/run/other/ironclaw.sock" || !d.ForeignSandboxes || d.Disabled {
		t.Errorf("daemon %+v", d)
	}
	if c, err := Parse([]byte(`{"mcpServers":{}}`)); err != nil || c.Daemon != (DaemonConfig{}) {
		t.Errorf("default daemon config %+v %v", c.Daemon, err)
	}
}

func TestConfigSecretsNeverLogged(t *testing.T) {
	c, err := Parse([]byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	for _, n := range c.Names() {
		log.Info("server", "server", c.Servers[n])
	}
	out := buf.String()
	for _, secret := range []string{"s3cr3t-token-value", "abcdefgh12345"} {
		if strings.Contains(out, secret) {
			t.Errorf("secret %q in log: %s", secret, out)
		}
	}
	if !strings.Contains(out, "API_TOKEN") || !strings.Contains(out, "Authorization") {
		t.Errorf("names of env and headers missing from log: %s", out)
	}
	red := approval.NewRedactor(append(c.Servers["fs"].SecretValues(), c.Servers["remote"].SecretValues()...)...)
	if s := red.String("token=s3cr3t-token-value, auth abcdefgh12345"); strings.Contains(s, "s3cr3t") || strings.Contains(s, "abcdefgh12345") {
		t.Errorf("redactor missed a configured secret: %s", s)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"mcpServers":{"fs":{"command":"x","bogus":1}}}`, `server "fs": unknown key "bogus"`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"mount":[]}}}}`, `server "fs": ironclaw: unknown key "mount"`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"resources":{"mem":"1g"}}}}}`, `ironclaw.resources: unknown key "mem"`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"tools":{"allow":["a"],"block":[]}}}}}`, `ironclaw.tools: unknown key "block"`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"approval":{"rule":[]}}}}}`, `unknown field "rule"`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"trust_hints":"yes"}}}}`, `ironclaw.trust_hints: got a JSON string, want true or false`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"approval":{"trust_hints":true}}}}}`, `unknown field "trust_hints"`},
		{`{"mcpServers":{},"ironclaw":{"approval":{"trust_hints":true}}}`, `unknown field "trust_hints"`},
		{`{"mcpServers":{},"extra":1}`, `config: unknown key "extra"`},
		{`{}`, `missing "mcpServers"`},
		{`[]`, `want a JSON object`},
		{`{"mcpServers":{"fs":{"command":"x","command":"y"}}}`, `key "command" appears twice`},
		{`{"mcpServers":{"fs":{"command":"x"}}} trailing`, `trailing data`},
		{`{"mcpServers":{"fs":{"command":"x"}}} {}`, `trailing data`},
		{`{"mcpServers":{"fs":{"command":""}}}`, `command: must name a program`},
		{`{"mcpServers":{"fs":{"command":1}}}`, `server "fs".command: got a JSON number, want a string`},
		{`{"mcpServers":{"fs":{"command":"x","args":"a b"}}}`, `args: got a JSON string, want an array of strings`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"A":1}}}}`, `env: got a JSON number`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"A":"a\nb"}}}}`, `env.A: value contains a carriage return, newline or NUL byte`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"A=B":"v"}}}}`, `bad variable name "A=B"`},
		// Each of these would be lost or changed on the way through
		// --env-file (sandbox.ParseEnvFile skips '#' lines, strips leading
		// blanks and "export ", and reads lines without a trailing \r).
		{`{"mcpServers":{"fs":{"command":"x","env":{"#A":"v"}}}}`, `server "fs": env: bad variable name "#A"`},
		{`{"mcpServers":{"fs":{"command":"x","env":{" A":"v"}}}}`, `server "fs": env: bad variable name " A"`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"export A":"v"}}}}`, `server "fs": env: bad variable name "export A"`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"1A":"v"}}}}`, `bad variable name "1A"`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"A-B":"v"}}}}`, `bad variable name "A-B"`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"":"v"}}}}`, `bad variable name ""`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"A":"v\r"}}}}`, `server "fs": env.A: value contains a carriage return, newline or NUL byte`},
		{`{"mcpServers":{"fs":{"command":"x","env":{"A":"v\u0000"}}}}`, `env.A: value contains a carriage return, newline or NUL byte`},
		{`{"mcpServers":{"fs":{"command":"x","args":null}}}`, `args: null is not allowed`},
		{`{"mcpServers":{"fs":{"command":"x","url":"http://h"}}}`, `both "command" and "url"`},
		{`{"mcpServers":{"fs":{}}}`, `needs "command" (stdio) or "url"`},
		{`{"mcpServers":{"fs":{"type":"ws","url":"http://h"}}}`, `type: "ws" is not stdio, http or sse`},
		{`{"mcpServers":{"r":{"url":"ftp://h"}}}`, `url: want an http:// or https:// URL`},
		{`{"mcpServers":{"r":{"url":"http://h","headers":{"Bad Name":"v"}}}}`, `bad header name "Bad Name"`},
		{`{"mcpServers":{"r":{"url":"http://h","headers":{"X":"a\r\nInjected: 1"}}}}`, `headers.X: value contains a line break`},
		{`{"mcpServers":{"r":{"url":"http://h","ironclaw":{"mounts":["/a:/b"]}}}}`, `ironclaw.mounts: only stdio servers run in a sandbox`},
		{`{"mcpServers":{"r":{"url":"http://h","env":{}}}}`, `a remote server takes no "command", "args" or "env"`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"backend":"docker"}}}}`, `backend: "docker" is not jail, vm or none`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"mounts":["relative:/x"]}}}}`, `mounts[0]`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"mounts":["/a:/x","/b:/x:rw"]}}}}`, `mounts[1]: sandbox path /x is mounted twice`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"mounts":["/a:/proc"]}}}}`, `reserved`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"seccomp":"loose"}}}}`, `seccomp: "loose"`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"user":"nobody"}}}}`, `ironclaw.user`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"workdir":"rel"}}}}`, `workdir: "rel" is not an absolute path`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"resources":{"memory":"lots"}}}}}`, `memory`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"resources":{"pids":1}}}}}`, `pids: 1 is below the minimum`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"resources":{"cpus":-1}}}}}`, `cpus`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"allow":[""]}}}}`, `allow[0]: empty`},
		{`{"mcpServers":{"fs":{"command":"x","ironclaw":{"approval":{"rules":[{"server":"x","tool":"*","class":"red"}]}}}}}`, `rules[0].server`},
		{`{"mcpServers":{"a__b":{"command":"x"}}}`, `contains "__"`},
		{`{"mcpServers":{"ironclaw":{"command":"x"}}}`, `reserved`},
		{`{"mcpServers":{"a b":{"command":"x"}}}`, `character ' ' not allowed`},
		{`{"mcpServers":{"":{"command":"x"}}}`, `empty server name`},
		{`{"ironclaw":{"approval":{"rules":[{"tool":"x","class":"maybe"}]}},"mcpServers":{}}`, `ironclaw.approval`},
		{`{"ironclaw":{"daemon":{"sock":"/x"}},"mcpServers":{}}`, `ironclaw.daemon: unknown key "sock"`},
		{`{"ironclaw":{"daemon":{"socket":"rel.sock"}},"mcpServers":{}}`, `ironclaw.daemon.socket: "rel.sock" is not an absolute path`},
		{`{"ironclaw":{"daemon":{"foreign_sandboxes":"yes"}},"mcpServers":{}}`, `ironclaw.daemon.foreign_sandboxes: got a JSON string, want true or false`},
		{`{"ironclaw":{"daemon":{"disabled":null}},"mcpServers":{}}`, `ironclaw.daemon.disabled: null is not allowed`},
		{`{"ironclaw":{"daemon":[]},"mcpServers":{}}`, `ironclaw.daemon: want a JSON object`},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s)\n  = %v\n  want ErrConfig containing %q", tc.in, err, tc.want)
		}
	}
}

// FuzzParseConfig: any input either parses into a config whose every
// server passes the checks the launcher relies on, or fails with ErrConfig;
// it never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullConfig))
	f.Add([]byte(`{"mcpServers":{}}`))
	f.Add([]byte(`{"mcpServers":{"a":{"command":"x","args":["-y"],"env":{"K":"V"}}}}`))
	f.Add([]byte(`{"mcpServers":{"a":{"url":"http://127.0.0.1:9/mcp","type":"sse"}}}`))
	f.Add([]byte(`{"mcpServers":{"a":{"command":"x","ironclaw":{"mounts":["/a:/b:rw"],"resources":{"memory":"1g"}}}}}`))
	f.Add([]byte(`{"mcpServers":{"a":{"command":"x","command":"y"}}}`))
	f.Add([]byte(`{"mcpServers":{"a":{"command":"x","ironclaw":{"approval":{"rules":[{"tool":"*","args":{"*":{"any_word":["rm"]}},"class":"red"}]}}}}}`))
	f.Add([]byte(`{"mcpServers":{},"ironclaw":{"daemon":{"socket":"/run/x.sock","disabled":false,"foreign_sandboxes":true}}}`))
	f.Add([]byte(`[[[[[[[[[[`))
	f.Add([]byte(`{"mcpServers":{"a":{"command":"x","env":{"#A":"v","B":"v\r"," C":"v"}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error without ErrConfig: %v", err)
			}
			return
		}
		for name, s := range c.Servers {
			if ValidServerName(name) != nil || s.Name != name {
				t.Fatalf("accepted bad server name %q", name)
			}
			switch s.Transport {
			case TransportStdio:
				if s.Command == "" {
					t.Fatal("stdio server without command")
				}
				if _, err := RunArgv(RunParams{Binary: "/ironclaw", ID: "x", EnvFile: "/dev/fd/3"}, s); err != nil && s.Sandbox.Backend == BackendJail {
					t.Fatalf("accepted config the launcher rejects: %v", err)
				}
				checkEnvRoundTrip(t, s.Env)
			case TransportStreamable, TransportSSE:
				if s.URL == "" {
					t.Fatal("remote server without url")
				}
			default:
				t.Fatalf("transport %q", s.Transport)
			}
		}
	})
}

// checkEnvRoundTrip fails unless env survives --env-file unchanged: what
// `ironclaw run` reads back (sandbox.ParseEnvFile) from EnvLines is
// exactly env.
func checkEnvRoundTrip(t *testing.T, env map[string]string) {
	t.Helper()
	got, err := sandbox.ParseEnvFile(bytes.NewReader(EnvLines(env)), "env")
	if err != nil {
		t.Fatalf("accepted env that --env-file rejects: %v", err)
	}
	back := map[string]string{}
	for _, kv := range got {
		k, v, _ := strings.Cut(kv, "=")
		back[k] = v
	}
	if len(back) != len(env) {
		t.Fatalf("env %q came back from --env-file as %q", env, got)
	}
	for k, v := range env {
		if back[k] != v {
			t.Fatalf("env %s=%q came back from --env-file as %q", k, v, back[k])
		}
	}
}

func TestEnvSurvivesEnvFile(t *testing.T) {
	c, err := Parse([]byte(`{"mcpServers":{"a":{"command":"x","env":{"_A1":" lead and trail ","B":"x=y#z","C":"","D":"'q' \\"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	checkEnvRoundTrip(t, c.Servers["a"].Env)
}
