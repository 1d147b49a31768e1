package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestRunArgv(t *testing.T) {
	cfg, err := Parse([]byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	got, err := RunArgv(RunParams{Binary: "/usr/bin/ironclaw", Root: "/run/ic", ID: "mcp-fs-1", EnvFile: "/dev/fd/3"}, cfg.Servers["fs"])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/usr/bin/ironclaw", "--root", "/run/ic", "run", "--name", "mcp-fs-1",
		"--mount", "/srv/data:/data:rw", "--mount", "/opt/nm:/opt/mcp/node_modules:ro",
		"--allow", "registry.npmjs.org:443", "--seccomp", "strict", "--user", "1000:1000",
		"--memory", "512m", "--pids", "128", "--cpus", "0.5", "--env-file", "/dev/fd/3",
		"--", "node", "/opt/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", "/data"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("argv\n got %q\nwant %q", got, want)
	}
	// Secrets never reach the command line.
	if s := strings.Join(got, " "); strings.Contains(s, "s3cr3t") || strings.Contains(s, "API_TOKEN") {
		t.Errorf("env on the command line: %s", s)
	}
	// Minimal server: nothing but the command.
	min := &ServerConfig{Name: "m", Transport: TransportStdio, Command: "srv", Args: []string{"--", "-x"}, Sandbox: SandboxConfig{Backend: BackendJail}}
	got, _ = RunArgv(RunParams{Binary: "ic", ID: "i"}, min)
	if want := []string{"ic", "run", "--name", "i", "--", "srv", "--", "-x"}; !reflect.DeepEqual(got, want) {
		t.Errorf("minimal argv %q", got)
	}
	min.Env = map[string]string{"K": "V"}
	if _, err := RunArgv(RunParams{Binary: "ic", ID: "i"}, min); err == nil {
		t.Error("env without an env file accepted")
	}
	if _, err := RunArgv(RunParams{Binary: "ic", ID: ""}, min); err == nil {
		t.Error("empty id accepted")
	}
	if _, err := RunArgv(RunParams{Binary: "ic", ID: "i"}, cfg.Servers["remote"]); err == nil {
		t.Error("remote server launched")
	}
}

func TestEnvLines(t *testing.T) {
	if got := string(EnvLines(map[string]string{"B": "2", "A": "x=y"})); got != "A=x=y\nB=2\n" {
		t.Errorf("%q", got)
	}
}
