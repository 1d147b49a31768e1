package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// TestLaunchValidates: what a long-lived VM cannot start with is refused
// before anything is claimed or resolved (the image resolver fails the
// test if it is asked), naming the field.
func TestLaunchValidates(t *testing.T) {
	root, err := state.Open(testroot.New(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Root: root, Cgroups: &cgroup.Host{}, Resolve: func(context.Context) (*image.Image, bool, error) {
		t.Error("the image was resolved for a refused launch")
		return nil, false, errors.New("no image")
	}})
	if err != nil {
		t.Fatal(err)
	}
	spec := sandbox.Spec{ID: "x", User: sandbox.SandboxUser}
	good := AgentOptions{Token: []byte("0123456789abcdef0123")}
	for name, tc := range map[string]struct {
		spec sandbox.Spec
		opts AgentOptions
		want string
	}{
		"command":    {sandbox.Spec{ID: "x", Command: []string{"sh"}}, good, "command"},
		"short":      {spec, AgentOptions{Token: []byte("short")}, "agent token"},
		"spaces":     {spec, AgentOptions{Token: []byte("0123456789 abcdef0123")}, "agent token"},
		"newline":    {spec, AgentOptions{Token: []byte("0123456789abcdef0123\n")}, "agent token"},
		"mount":      {sandbox.Spec{ID: "x", Mounts: []sandbox.Mount{{Source: "/tmp", Target: "/x"}}}, good, "--mount"},
		"persistent": {sandbox.Spec{ID: "x", Network: sandbox.Network{Allow: []string{"10.0.0.1/32:80"}}}, AgentOptions{Token: good.Token, Persistent: true}, "persistent"},
	} {
		_, err := b.Launch(context.Background(), tc.spec, tc.opts)
		var se *StartError
		if !errors.As(err, &se) || se.Step != "validate" || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a validate error naming %q", name, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root.Dir(), "sandboxes")); len(ents) != 0 {
		t.Errorf("a refused launch left %v", ents)
	}
}

// TestAttachWithoutSandbox: attaching to a sandbox that has no VM record
// is ErrNotFound; to one whose record is not a persistent VM's, an error.
func TestAttachWithoutSandbox(t *testing.T) {
	root, err := state.Open(testroot.New(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Root: root, Cgroups: &cgroup.Host{}, Image: &image.Image{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Attach(context.Background(), "nothing"); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("no sandbox: %v, want ErrNotFound", err)
	}
	dir := root.SandboxDir(sandbox.KeyOf("run"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := state.WriteJSON(filepath.Join(dir, RecordFile), record{VMM: "qemu"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Attach(context.Background(), "run"); err == nil || errors.Is(err, sandbox.ErrNotFound) || !strings.Contains(err.Error(), "not a persistent") {
		t.Errorf("a run's VM: %v, want not persistent", err)
	}
	// A persistent VM's record whose cgroup is not the sandbox's (Close
	// would destroy that group) is refused before the VM is looked at, as
	// jail.Attach refuses one.
	for _, rec := range []record{
		{VMM: "qemu", Persistent: true, CgroupRel: "/system.slice"},
		{VMM: "qemu", Persistent: true, CgroupRel: cgroup.SandboxRelOf(dir) + "/.."},
		{VMM: "qemu", Persistent: true, CgroupRel: cgroup.SandboxRelOf(dir), Cgroups: []string{"/sys/fs/cgroup/pids/system.slice"}},
	} {
		if err := state.WriteJSON(filepath.Join(dir, RecordFile), rec); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Attach(context.Background(), "run"); err == nil || errors.Is(err, sandbox.ErrNotFound) || !strings.Contains(err.Error(), "cgroup") {
			t.Errorf("a record naming cgroup %q %v: %v, want a refusal", rec.CgroupRel, rec.Cgroups, err)
		}
	}
}
