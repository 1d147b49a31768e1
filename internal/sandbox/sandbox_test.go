package sandbox

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestKeyDistinctAndFits(t *testing.T) {
	ids := []string{"vm-1", "vm_1", "vm.1", "VM-1", "vm-1 ", strings.Repeat("x", MaxIDLen),
		strings.Repeat("x", MaxIDLen-1) + "y", "sandbox-ünïcödé-🦀", "沙箱"}
	seen := map[Key]string{}
	for _, id := range ids {
		k := KeyOf(id)
		if !k.Valid() {
			t.Errorf("KeyOf(%q) = %q is not a valid key", id, k)
		}
		if len(k) != KeyLen {
			t.Errorf("KeyOf(%q) has length %d, want %d", id, len(k), KeyLen)
		}
		if prev, ok := seen[k]; ok {
			t.Errorf("KeyOf(%q) == KeyOf(%q) == %q", id, prev, k)
		}
		seen[k] = id
		if s := k.Short(12); len(s) != 12 || !strings.HasPrefix(string(k), s) {
			t.Errorf("Short(12) of %q = %q", k, s)
		}
	}
	if KeyOf("vm-1") != KeyOf("vm-1") {
		t.Error("KeyOf is not deterministic")
	}
}

func TestKeyValid(t *testing.T) {
	for _, bad := range []Key{"", "..", "../../etc/passwd", Key(strings.Repeat("a", KeyLen-1)), Key(strings.Repeat("A", KeyLen)), Key(strings.Repeat("a", KeyLen-1) + "/")} {
		if bad.Valid() {
			t.Errorf("Key(%q).Valid() = true", bad)
		}
	}
}

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"a", "vm-1", "with space", "ünïcode 🦀", strings.Repeat("z", MaxIDLen)} {
		if err := ValidateID(ok); err != nil {
			t.Errorf("ValidateID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a\x00b", "new\nline", "\x1b[31mred", string([]byte{0xff, 0xfe}), strings.Repeat("z", MaxIDLen+1)} {
		err := ValidateID(bad)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "name") {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalid naming the field", bad, err)
		}
	}
	a, b := NewID(), NewID()
	if a == b || ValidateID(a) != nil || !strings.HasPrefix(a, "ic-") {
		t.Errorf("NewID gave %q and %q", a, b)
	}
}

func TestHostname(t *testing.T) {
	if got := Hostname("web-1"); got != "web-1" {
		t.Errorf("Hostname(web-1) = %q", got)
	}
	for _, id := range []string{"vm_1", "-x", strings.Repeat("a", 64), "ü"} {
		got := Hostname(id)
		if !isDNSLabel(got) || !strings.HasPrefix(got, "ic-") {
			t.Errorf("Hostname(%q) = %q, want an ic- label", id, got)
		}
	}
}

func TestParseSize(t *testing.T) {
	cases := map[string]int64{
		"0": 0, "1024": 1024, "1k": 1024, "1K": 1024, "1KiB": 1024, "2m": 2 << 20, "1.5g": 3 << 29,
		"1GiB": 1 << 30, "1gb": 1e9, "10MB": 10e6, " 64 M ": 64 << 20, "1t": 1 << 40, "512b": 512,
	}
	for in, want := range cases {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "m", "-1", "1x", "1.2.3g", "0.5b", "1e3", "99999999999999t", "nan"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) succeeded", bad)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{1 << 30: "1GiB", 3 << 20: "3MiB", 1536: "1536B", 1 << 10: "1KiB", 7: "7B"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParseMount(t *testing.T) {
	cases := []struct {
		in   string
		want Mount
	}{
		{"/src:/dst", Mount{Source: "/src", Target: "/dst"}},
		{"/src:/dst:ro", Mount{Source: "/src", Target: "/dst"}},
		{"/src:/dst:rw", Mount{Source: "/src", Target: "/dst", Writable: true}},
		{"/a:b:/dst", Mount{Source: "/a:b", Target: "/dst"}},
		{"/data:/workspace/data:rw", Mount{Source: "/data", Target: "/workspace/data", Writable: true}},
	}
	for _, c := range cases {
		got, err := ParseMount(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseMount(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "/src", "src:/dst", "/src:dst", "/src:/", "/src:/proc", "/src:/proc/x",
		"/src:/dev/sda", "/src:/etc", "/src:/workspace", "/src:/tmp", "/src:/a/../b", "/src:/a/", ":/dst"} {
		_, err := ParseMount(bad)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "mount") {
			t.Errorf("ParseMount(%q) = %v, want ErrInvalid naming mount", bad, err)
		}
	}
}

func TestParseUser(t *testing.T) {
	cases := map[string]User{"": SandboxUser, "sandbox": SandboxUser, "root": {}, "0": {}, "33": {33, 33}, "100:200": {100, 200}}
	for in, want := range cases {
		got, err := ParseUser(in)
		if err != nil || got != want {
			t.Errorf("ParseUser(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"alice", "-1", "65536", "1:x", "1:65536", "1:2:3"} {
		if _, err := ParseUser(bad); err == nil {
			t.Errorf("ParseUser(%q) succeeded", bad)
		}
	}
}

func TestParseEnvFile(t *testing.T) {
	in := "# comment\n\nA=1\nexport B=two words\n  C==x=\n"
	env, err := ParseEnvFile(strings.NewReader(in), "f")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A=1", "B=two words", "C==x="}
	if strings.Join(env, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", env, want)
	}
	if _, err := ParseEnvFile(strings.NewReader("A=1\nnot a pair\n"), "f"); err == nil || !strings.Contains(err.Error(), "f:2") {
		t.Errorf("bad line: err = %v, want one naming f:2", err)
	}
}

func TestMergeEnv(t *testing.T) {
	got := MergeEnv([]string{"A=1", "B=2"}, "B=3", "C=4", "A=5")
	if want := "A=5|B=3|C=4"; strings.Join(got, "|") != want {
		t.Errorf("MergeEnv = %q, want %s", got, want)
	}
}

func TestSpecValidate(t *testing.T) {
	good := Spec{ID: "x", Command: []string{"true"}, User: SandboxUser, Resources: DefaultResources}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(good) = %v", err)
	}
	bad := map[string]func(*Spec){
		"command":   func(s *Spec) { s.Command = []string{""} },
		"argument":  func(s *Spec) { s.Command = []string{"a", "b\x00"} },
		"env":       func(s *Spec) { s.Env = []string{"NOEQUALS"} },
		"user":      func(s *Spec) { s.User = User{UID: 70000} },
		"workdir":   func(s *Spec) { s.Workdir = "rel" },
		"rootfs":    func(s *Spec) { s.Rootfs = "rel" },
		"memory":    func(s *Spec) { s.Resources.MemoryBytes = 1 },
		"pids":      func(s *Spec) { s.Resources.Pids = -1 },
		"cpus":      func(s *Spec) { s.Resources.CPUs = -0.5 },
		"timeout":   func(s *Spec) { s.Timeout = -1 },
		"twice":     func(s *Spec) { s.Mounts = []Mount{{"/a", "/x", false}, {"/b", "/x", true}} },
		"file size": func(s *Spec) { s.Resources.FileSize = -3 },
	}
	for field, mutate := range bad {
		s := good
		mutate(&s)
		err := s.Validate()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: Validate = %v, want ErrInvalid naming %q", field, err, field)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1k", "1.5GiB", "0", "", "9e99", "1.0000000001m", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d < 0", s, n)
		}
	})
}

func FuzzParseMount(f *testing.F) {
	for _, s := range []string{"/a:/b", "/a:/b:rw", "a", "::", "/a:/../b", "/x:/y:ro:rw"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMount(s)
		if err != nil {
			return
		}
		if err := m.validate(); err != nil {
			t.Fatalf("ParseMount(%q) accepted an invalid mount: %v", s, err)
		}
		again, err := ParseMount(m.String())
		if err != nil || again != m {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}

func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"vm-1", "", "\x00", "ü", strings.Repeat("a", 2000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateID(id) != nil {
			return
		}
		if !utf8.ValidString(id) || len(id) > MaxIDLen {
			t.Fatalf("ValidateID accepted %q", id)
		}
		if k := KeyOf(id); !k.Valid() {
			t.Fatalf("KeyOf(%q) = %q invalid", id, k)
		}
		if h := Hostname(id); !isDNSLabel(h) {
			t.Fatalf("Hostname(%q) = %q is not a DNS label", id, h)
		}
	})
}
