package daemon

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/vm"
)

func TestCreateOptionsValidate(t *testing.T) {
	good := CreateOptions{ID: "x", Spec: sandbox.Spec{User: sandbox.SandboxUser, Resources: sandbox.DefaultResources}, TTL: time.Minute,
		Labels: map[string]string{"a": "b"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{BackendVM, BackendAuto} {
		o := good
		o.Backend = b
		if err := o.Validate(); err != nil {
			t.Errorf("backend %s: %v", b, err)
		}
	}
	bad := map[string]func(*CreateOptions){
		"name":         func(o *CreateOptions) { o.ID = "a\nb" },
		"backend":      func(o *CreateOptions) { o.Backend = "docker" },
		"command":      func(o *CreateOptions) { o.Spec.Command = []string{"sh"} },
		"timeout":      func(o *CreateOptions) { o.Spec.Timeout = time.Second },
		"ttl":          func(o *CreateOptions) { o.TTL = -1 },
		"idle_timeout": func(o *CreateOptions) { o.IdleTimeout = -1 },
		"labels":       func(o *CreateOptions) { o.Labels = map[string]string{"a=b": "c"} },
		"memory":       func(o *CreateOptions) { o.Spec.Resources.MemoryBytes = 1 },
		"mount":        func(o *CreateOptions) { o.Spec.Mounts = []sandbox.Mount{{Source: "/a", Target: "/proc"}} },
	}
	// What a micro-VM cannot honour, named by the request's field.
	bad["mounts"] = func(o *CreateOptions) {
		o.Backend = BackendVM
		o.Spec.Mounts = []sandbox.Mount{{Source: "/tmp", Target: "/x"}}
	}
	bad["workdir"] = func(o *CreateOptions) { o.Backend = BackendVM; o.Spec.Workdir = "/tmp" }
	bad["rootfs"] = func(o *CreateOptions) { o.Backend = BackendVM; o.Spec.Rootfs = "/tmp" }
	bad["seccomp"] = func(o *CreateOptions) { o.Backend = BackendVM; o.Spec.Seccomp.Profile = "strict" }
	bad["memory"] = func(o *CreateOptions) { o.Backend = BackendVM; o.Spec.Resources.MemoryBytes = 64 << 20 }
	for field, mut := range bad {
		o := good
		o.Labels = map[string]string{}
		mut(&o)
		err := o.Validate()
		if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v, want ErrInvalid naming it", field, err)
		}
	}
}

func TestPoolClassKey(t *testing.T) {
	base := CreateOptions{Spec: sandbox.Spec{User: sandbox.SandboxUser, Resources: sandbox.DefaultResources}}
	same := base
	same.ID, same.Labels, same.TTL, same.Spec.Env = "other", map[string]string{"k": "v"}, time.Hour, []string{"A=1"}
	same.Backend, same.Spec.Seccomp.Profile, same.Spec.Network.Allow, same.Spec.Mounts = BackendJail, "default", []string{}, []sandbox.Mount{}
	if base.classKey() != same.classKey() {
		t.Error("ID, labels, TTL, env or spelled-out defaults change the pool class")
	}
	for name, mut := range map[string]func(*CreateOptions){
		"memory":  func(o *CreateOptions) { o.Spec.Resources.MemoryBytes = 1 << 30 },
		"user":    func(o *CreateOptions) { o.Spec.User = sandbox.User{} },
		"allow":   func(o *CreateOptions) { o.Spec.Network.Allow = []string{"1.2.3.4/32:80"} },
		"domains": func(o *CreateOptions) { o.Spec.Network.Allow = []string{"example.com:443"} },
		"seccomp": func(o *CreateOptions) { o.Spec.Seccomp.Profile = "strict" },
		"mounts":  func(o *CreateOptions) { o.Spec.Mounts = []sandbox.Mount{{Source: "/a", Target: "/b"}} },
		"workdir": func(o *CreateOptions) { o.Spec.Workdir = "/w" },
	} {
		o := base
		mut(&o)
		if o.classKey() == base.classKey() {
			t.Errorf("%s does not change the pool class", name)
		}
	}
}

// TestPoolShapeNetwork: a pool member takes its user's allow rules when
// claimed, so members serve every policy of their kind (address rules
// only, or with domain rules, which need the egress servers), and never
// one of another kind or a loopback-only create.
func TestPoolShapeNetwork(t *testing.T) {
	key := func(allow ...string) string {
		o := CreateOptions{Spec: sandbox.Spec{User: sandbox.SandboxUser, Resources: sandbox.DefaultResources}}
		o.Spec.Network.Allow = allow
		return o.shapeKey()
	}
	cidr, domains, none := key("203.0.113.10/32:443"), key("example.com:443"), key()
	for _, allow := range [][]string{{"198.51.100.0/24"}, {"203.0.113.10/32:443", "192.0.2.1/32:53/udp"}, {"198.51.100.7/32:1000-2000/udp"}} {
		if key(allow...) != cidr {
			t.Errorf("%v: not the class of other address rules", allow)
		}
	}
	for _, allow := range [][]string{{"*.example.org"}, {"203.0.113.10/32:443", "example.com"}} {
		if key(allow...) != domains {
			t.Errorf("%v: not the class of other domain rules", allow)
		}
	}
	if cidr == domains || cidr == none || domains == none {
		t.Error("loopback only, address rules and domain rules share a class")
	}
	if bad := key("not a rule"); bad == cidr || bad == domains || bad == none {
		t.Error("rules that do not parse share a valid class")
	}
	// The shape is the class without the rules: what else changes the
	// class changes the shape.
	base := CreateOptions{Spec: sandbox.Spec{User: sandbox.SandboxUser, Resources: sandbox.DefaultResources}}
	other := base
	other.Spec.Resources.MemoryBytes = 1 << 30
	if base.shapeKey() == other.shapeKey() || base.shapeKey() == base.classKey() {
		t.Error("the shape ignores the limits, or equals the class")
	}
	if !samePolicy([]string{"203.0.113.10/32:443", "198.51.100.0/24"}, []string{"198.51.100.0/24", "203.0.113.10/32:443"}) ||
		samePolicy([]string{"203.0.113.10/32:443"}, []string{"203.0.113.10/32:80"}) || !samePolicy(nil, []string{}) ||
		samePolicy([]string{"not a rule"}, []string{"not a rule"}) {
		t.Error("samePolicy")
	}
}

func TestValidatePath(t *testing.T) {
	for _, p := range []string{"/", "/a", "/a b/c"} {
		if err := ValidatePath(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range []string{"", "a", "/a/..", "/../a", "/a/./b", "//a", "/a/", "/a\x00"} {
		if ValidatePath(p) == nil {
			t.Errorf("%q accepted", p)
		}
	}
}

func TestExecEnvAndUser(t *testing.T) {
	spec := sandbox.Spec{User: sandbox.SandboxUser, Env: []string{"A=spec", "B=spec"}}
	env := strings.Join(execEnv(spec, "host", ExecOptions{Env: []string{"B=exec"}, TTY: true}), " ")
	for _, want := range []string{"HOME=/workspace", "USER=sandbox", "HOSTNAME=host", "A=spec", "B=exec", "TERM="} {
		if !strings.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
	if strings.Contains(env, "B=spec") {
		t.Errorf("exec env does not override the spec's: %s", env)
	}
	if env := strings.Join(execEnv(spec, "h", ExecOptions{User: "root"}), " "); !strings.Contains(env, "USER=root") {
		t.Errorf("root exec: %s", env)
	}
	if err := (&ExecOptions{Argv: []string{"x"}, User: "alice"}).Validate(); !errors.Is(err, sandbox.ErrInvalid) {
		t.Errorf("bad user: %v", err)
	}
}

func TestEventBus(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), datadir.FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := newBus(ctx, st, slog.New(slog.DiscardHandler), 50)
	if err != nil {
		t.Fatal(err)
	}
	all, one := b.subscribe(""), b.subscribe("a")
	slow := b.subscribe("")
	for i := 0; i < subBuffer+10; i++ {
		sb := "a"
		if i%2 == 1 {
			sb = "b"
		}
		b.emit(sb, EventExecStarted, Detail{Argv: []string{strings.Repeat("x", 1000)}})
		if i < 5 {
			if ev := <-all.C; ev.Seq != int64(i+1) {
				t.Fatalf("event %d has seq %d", i, ev.Seq)
			}
		}
		if i%2 == 0 && i < 10 {
			if ev := <-one.C; ev.Sandbox != "a" {
				t.Fatalf("filtered subscription got %+v", ev)
			}
		}
	}
	// The subscriber that never read was cut off, not waited for.
	n := 0
	for range slow.C {
		n++
	}
	if n != subBuffer || !slow.Overflowed() {
		t.Errorf("slow subscriber got %d events, overflowed %v", n, slow.Overflowed())
	}
	hist, err := b.history(ctx, "a", 0, 3)
	if err != nil || len(hist) != 3 || hist[2].Sandbox != "a" || len(hist[2].Argv[0]) > maxEventArgLen+4 {
		t.Fatalf("history: %+v %v", hist, err)
	}
	// The log is trimmed to about keep events.
	if all, err := st.Events(ctx, "", 0, 0); err != nil || len(all) > 50 {
		t.Errorf("stored %d events, keep is 50 (%v)", len(all), err)
	}
	// A new bus continues the sequence.
	b2, _ := newBus(ctx, st, slog.New(slog.DiscardHandler), 50)
	if ev := b2.emit("a", EventCreated, Detail{}); ev.Seq != int64(subBuffer+11) {
		t.Errorf("sequence after reopen: %d", ev.Seq)
	}
	all.Close()
	one.Close()
}

// TestResolveBackend: auto is a VM only when the daemon has the micro-VM
// backend, its KVM verdict says yes and the spec fits a VM (the verdict is
// not even asked otherwise); vm without the backend is unsupported.
func TestResolveBackend(t *testing.T) {
	spec := sandbox.Spec{User: sandbox.SandboxUser, Resources: sandbox.DefaultResources}
	asked := 0
	verdict := false
	m := &Manager{log: slog.New(slog.DiscardHandler), cfg: Config{VM: &vm.Backend{}, AutoVM: func(context.Context) (bool, string) {
		asked++
		return verdict, "test verdict"
	}}}
	resolve := func(backend string, s sandbox.Spec) (string, error) {
		o := CreateOptions{Backend: backend, Spec: s}
		err := m.resolveBackend(context.Background(), &o)
		return o.Backend, err
	}
	for _, tc := range []struct {
		backend string
		verdict bool
		want    string
	}{{"", true, BackendJail}, {BackendJail, true, BackendJail}, {BackendVM, false, BackendVM}, {BackendAuto, false, BackendJail}, {BackendAuto, true, BackendVM}} {
		verdict = tc.verdict
		if got, err := resolve(tc.backend, spec); err != nil || got != tc.want {
			t.Errorf("%q with verdict %v: %q %v, want %q", tc.backend, tc.verdict, got, err, tc.want)
		}
	}
	asked, verdict = 0, true
	withMount := spec
	withMount.Mounts = []sandbox.Mount{{Source: "/tmp", Target: "/x"}}
	if got, err := resolve(BackendAuto, withMount); err != nil || got != BackendJail || asked != 0 {
		t.Errorf("auto with a mount: %q %v (verdict asked %d times), want the jail without asking", got, err, asked)
	}
	m.cfg.VM = nil
	if got, err := resolve(BackendAuto, spec); err != nil || got != BackendJail || asked != 0 {
		t.Errorf("auto without the backend: %q %v (asked %d)", got, err, asked)
	}
	if _, err := resolve(BackendVM, spec); !errors.Is(err, sandbox.ErrUnsupported) {
		t.Errorf("vm without the backend: %v, want ErrUnsupported", err)
	}
}

// TestTakeReadyOrder: a create takes a member of its own class first, then
// one of a pool whose template has its rules spelled otherwise, then one
// of the first pool of its shape; never one of another shape.
func TestTakeReadyOrder(t *testing.T) {
	opts := func(allow ...string) CreateOptions {
		o := CreateOptions{Spec: sandbox.Spec{User: sandbox.SandboxUser, Resources: sandbox.DefaultResources}}
		o.Spec.Network.Allow = allow
		return o
	}
	m := &Manager{pools: map[string]*pool{}, shapes: map[string][]*pool{}}
	var all []*pool
	for _, pc := range []PoolClass{
		{Name: "a", Template: opts("203.0.113.10/32:443")},
		{Name: "b", Template: opts("203.0.113.20:80/tcp", "198.51.100.0/24")},
		{Name: "c", Template: opts("203.0.113.30/32:443")},
		{Name: "loopback", Template: opts()},
	} {
		p := newPool(pc)
		m.pools[p.key] = p
		m.shapes[pc.Template.shapeKey()] = append(m.shapes[pc.Template.shapeKey()], p)
		all = append(all, p)
	}
	fill := func() {
		for _, p := range all {
			p.ready = []*box{{id: "member-of-" + p.class.Name}}
		}
	}
	var retarget bool
	take := func(allow ...string) string {
		o := opts(allow...)
		var mb *box
		var p *pool
		mb, p, retarget = m.takeReady(&box{opts: o, class: o.classKey(), shape: o.shapeKey()})
		if mb == nil {
			return ""
		}
		if mb.id != "member-of-"+p.class.Name {
			t.Fatalf("member %s reported from pool %s", mb.id, p.class.Name)
		}
		return p.class.Name
	}
	fill()
	for _, c := range []struct {
		allow    []string
		want     string
		retarget bool
	}{
		{[]string{"203.0.113.30/32:443"}, "c", false},                       // its own class
		{[]string{"198.51.100.0/24", "203.0.113.20/32:80/tcp"}, "b", false}, // b's rules, spelled otherwise
		{[]string{"192.0.2.1/32:53/udp"}, "a", true},                        // the first of its shape, given these rules
		{nil, "loopback", false},                                            // its own
	} {
		if got := take(c.allow...); got != c.want || retarget != c.retarget {
			t.Errorf("%v: took from %q (retarget %v), want %q (retarget %v)", c.allow, got, retarget, c.want, c.retarget)
		}
		fill()
	}
	// Drained in order: a, then b, then c; then nothing, and a
	// loopback-only create never takes a networked member.
	for _, want := range []string{"a", "b", "c", ""} {
		if got := take("192.0.2.1/32:53/udp"); got != want {
			t.Errorf("draining: took from %q, want %q", got, want)
		}
	}
	all[3].ready = nil
	if got := take(); got != "" {
		t.Errorf("a loopback-only create took a member of pool %q", got)
	}
}
