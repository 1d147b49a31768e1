package mcpgw

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestLauncherBackends(t *testing.T) {
	l := &Launcher{Binary: "/bin/echo", Logger: testLogger(t)}
	vm := &ServerConfig{Name: "v", Transport: TransportStdio, Command: "x", Sandbox: SandboxConfig{Backend: BackendVM}}
	if _, _, err := l.Command(context.Background(), vm, "id"); !errors.Is(err, ErrBackendUnavailable) {
		t.Errorf("vm backend: %v", err)
	}
	// The jail launch passes env through a pipe on fd 3, read here back.
	s := &ServerConfig{Name: "j", Transport: TransportStdio, Command: "srv", Env: map[string]string{"TOKEN": "abc"}, Sandbox: SandboxConfig{Backend: BackendJail}}
	cmd, done, err := l.Command(context.Background(), s, "id-1")
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if len(cmd.ExtraFiles) != 1 {
		t.Fatalf("extra files %v", cmd.ExtraFiles)
	}
	data, err := io.ReadAll(cmd.ExtraFiles[0])
	if err != nil || string(data) != "TOKEN=abc\n" {
		t.Fatalf("env pipe: %q %v", data, err)
	}
	if strings.Contains(strings.Join(cmd.Args, " "), "abc") {
		t.Errorf("secret on the command line: %q", cmd.Args)
	}
	for _, e := range cmd.Env {
		if strings.HasPrefix(e, "TOKEN=") {
			t.Errorf("secret in the ironclaw run environment")
		}
	}
	// Unsandboxed: explicit, minimal environment plus the server's.
	os.Setenv("IRONCLAW_TEST_LEAK", "1")
	defer os.Unsetenv("IRONCLAW_TEST_LEAK")
	s.Sandbox.Backend = BackendNone
	cmd, _, err = l.Command(context.Background(), s, "id-2")
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(cmd.Env, "\n")
	if !strings.Contains(env, "TOKEN=abc") || strings.Contains(env, "IRONCLAW_TEST_LEAK") || cmd.Path != "srv" && !strings.HasSuffix(cmd.Path, "/srv") {
		t.Errorf("none backend env/cmd: %q %q", cmd.Env, cmd.Path)
	}
}

func TestSandboxRunArgv(t *testing.T) {
	r := &sandboxRunner{binary: "ic", root: "/r"}
	got, timeout, err := r.argv(SandboxRunInput{Code: "print(1)", Language: "python", Mounts: []string{"/h:/g:rw"}, Allow: []string{"example.com:443"}, Timeout: "30s", Memory: "64m", Pids: 10, Seccomp: "strict"}, "sbx")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ic", "--root", "/r", "run", "--name", "sbx", "--timeout", "30s", "--mount", "/h:/g:rw", "--allow", "example.com:443",
		"--memory", "64m", "--pids", "10", "--seccomp", "strict", "--", "python3", "-c", "print(1)"}
	if !reflect.DeepEqual(got, want) || timeout.Seconds() != 30 {
		t.Errorf("argv %q", got)
	}
	for _, bad := range []SandboxRunInput{
		{}, {Command: []string{"x"}, Code: "y"}, {Code: "x", Language: "cobol"}, {Command: []string{"x"}, Timeout: "soon"},
		{Command: []string{"x"}, Mounts: []string{"rel:/x"}}, {Command: []string{"x"}, Seccomp: "unconfined"}, {Command: []string{"x"}, Pids: 1},
	} {
		if _, _, err := r.argv(bad, "sbx"); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
	_, timeout, _ = r.argv(SandboxRunInput{Command: []string{"x"}, Timeout: "100h"}, "sbx")
	if timeout != sandboxRunMaxTimeout {
		t.Errorf("timeout not capped: %s", timeout)
	}
}

// TestUnsandboxedWarning: starting a backend "none" server says loudly
// that it runs as the gateway's uid, so it can reach the approvals socket
// and approve held calls (its own and other servers'); so do the server
// instructions every client sees.
func TestUnsandboxedWarning(t *testing.T) {
	var buf strings.Builder
	l := &Launcher{Logger: slog.New(slog.NewTextHandler(&buf, nil))}
	s := &ServerConfig{Name: "raw", Transport: TransportStdio, Command: "srv", Sandbox: SandboxConfig{Backend: BackendNone}}
	if _, _, err := l.Command(context.Background(), s, "id"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"UNSANDBOXED", "uid", "approvals socket", "approve"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log line lacks %q: %s", want, buf.String())
		}
	}
	cfg, err := ParseConfig([]byte(`{"mcpServers":{"raw":{"command":"srv","ironclaw":{"backend":"none"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Config: cfg, Launcher: l, Queue: newQueue(), Store: openStore(t), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if in := g.instructions(); !strings.Contains(in, "UNSANDBOXED") || !strings.Contains(in, "approve") {
		t.Errorf("instructions: %s", in)
	}
}
