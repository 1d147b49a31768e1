package initproc

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// sampleConfig is a config as the jail sends it for `ironclaw run`: the
// host's system view, the curated /etc, the default seccomp profile.
func sampleConfig(t testing.TB) *Config {
	t.Helper()
	arch, err := seccomp.NativeArch()
	if err != nil {
		t.Fatal(err)
	}
	prog, err := seccomp.Compile(seccomp.ProfileDefault, seccomp.Enforce, arch)
	if err != nil {
		t.Fatal(err)
	}
	c := &Config{
		Protocol: ProtocolVersion, ExeFD: 28, LockFD: 27, Epoch: 1732665600123456789,
		Hostname: "ic-xy4kwqv2vuii", NewRoot: "/run/ironclaw/sandboxes/jph5hdhndmifom2knb2wyf24fs/root",
		Etc: map[string]string{
			"passwd": "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/workspace:/bin/sh\n",
			"group":  "root:x:0:\ntty:x:5:\nsandbox:x:1000:\nnogroup:x:65534:\n", "hostname": "ic-xy4kwqv2vuii\n",
			"hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tic-xy4kwqv2vuii\n",
			"resolv.conf": "# This sandbox has no network access beyond loopback.\n", "nsswitch.conf": "passwd: files\ngroup: files\n",
		},
		Symlinks: map[string]string{"/bin": "usr/bin", "/lib": "usr/lib", "/lib64": "usr/lib64", "/sbin": "usr/sbin", "/etc/localtime": "/usr/share/zoneinfo/Etc/UTC"},
		Command:  []string{"python3", "-c", "print(1)"},
		Env:      []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/workspace", "USER=sandbox", "LANG=C.UTF-8"},
		User:     sandbox.User{UID: 1000, GID: 1000}, Cwd: "/workspace", TTY: true, Loopback: true,
		Rlimits: []Rlimit{{Resource: 4}, {Resource: 7, Cur: 1024, Max: 1024}, {Resource: 1, Cur: 1 << 40, Max: 1 << 40}},
		Seccomp: prog,
	}
	for i, p := range []string{"/usr", "/etc/alternatives", "/etc/ca-certificates", "/etc/ld.so.cache", "/etc/ssl/certs", "/workspace"} {
		c.Sources = append(c.Sources, BindSource{FD: 4 + i, Target: p, Dir: !strings.Contains(p, "."), Writable: p == "/workspace", System: p == "/usr"})
	}
	return c
}

func roundTripHost(t *testing.T, m HostMsg) HostMsg {
	t.Helper()
	var got HostMsg
	if err := got.DecodeWire(m.AppendWire(nil)); err != nil {
		t.Fatalf("decode %+v: %v", m, err)
	}
	return got
}

func TestHostMsgRoundTrip(t *testing.T) {
	c := sampleConfig(t)
	if got := roundTripHost(t, HostMsg{Config: c}); !reflect.DeepEqual(got.Config, c) {
		t.Fatalf("config changed in transit:\n got %+v\nwant %+v", got.Config, c)
	}
	c.Agent = &AgentInit{ListenFD: 30, Token: []byte("0123456789abcdef"), MaxFileSize: 1 << 30, WorkTasksFD: 31}
	c.Persistent, c.Trace, c.TTY, c.Loopback = true, true, false, false
	c.Seccomp.Mode, c.Seccomp.Unconfined = seccomp.Audit, true
	if got := roundTripHost(t, HostMsg{Config: c}); !reflect.DeepEqual(got.Config, c) {
		t.Fatalf("agent config changed in transit:\n got %+v\nwant %+v", got.Config, c)
	}
	for _, m := range []HostMsg{{Placed: true}, {Go: true}, {Placed: true, Go: true}, {}} {
		if got := roundTripHost(t, m); !reflect.DeepEqual(got, m) {
			t.Fatalf("%+v became %+v", m, got)
		}
	}
}

func TestInitMsgRoundTrip(t *testing.T) {
	for _, m := range []InitMsg{
		{Ready: &ReadyMsg{TID: 5}},
		{Ready: &ReadyMsg{TID: 5, Steps: []string{"config=1ms", "root=2ms"}}},
		{Started: &StartedMsg{PID: 7}},
		{Exited: &ExitStatus{Code: 137, Signal: 9}},
		{Exited: &ExitStatus{Code: 0}},
		{Error: &StepError{Step: "exec", Message: "nope: command not found", Errno: 2}},
	} {
		var got InitMsg
		if err := got.DecodeWire(m.AppendWire(nil)); err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%+v became %+v", m, got)
		}
	}
}

// TestDecodeRejects: every malformed body is an error naming what is
// wrong, never a panic or a partly applied config.
func TestDecodeRejects(t *testing.T) {
	good := HostMsg{Config: sampleConfig(t)}.AppendWire(nil)
	wrongProto := sampleConfig(t)
	wrongProto.Protocol = 1
	cases := map[string]struct {
		body []byte
		want string
	}{
		"empty":          {nil, "host message: truncated"},
		"unknown flag":   {[]byte{0x80}, "host message: unknown flags 0x80"},
		"json body":      {[]byte(`{"config":{"protocol":1}}`), "protocol 1"},
		"old protocol":   {HostMsg{Config: wrongProto}.AppendWire(nil), "the host speaks protocol 1, this init 2"},
		"truncated":      {good[:3], "config.exe_fd: truncated"},
		"cut short":      {good[:len(good)/2], "do not fit"},
		"trailing":       {append(append([]byte(nil), good...), 0), "1 trailing bytes"},
		"huge count":     {[]byte{hostConfig, ProtocolVersion, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07}, "config.sources: 2147483647 elements do not fit"},
		"huge string":    {[]byte{hostConfig, ProtocolVersion, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f}, "config.hostname: 268435455 bytes do not fit"},
		"negative fd":    {[]byte{hostConfig, ProtocolVersion, 0, 1}, "config.exe_fd: -1 is outside 0..2147483647"},
		"unknown cfg":    {[]byte{hostConfig, ProtocolVersion, 0x80, 0x01}, "config.flags: unknown flags 0x80"},
		"bad bool":       {seccompBody(t, []byte{2}), "config.seccomp.unconfined: not a boolean"},
		"partial insn":   {seccompBody(t, []byte{0, 7, 1, 2, 3, 4, 5, 6, 7}), "not a whole number of 8-byte instructions"},
		"no insns":       {seccompBody(t, []byte{0, 0}), "0 instructions (want 1..4096)"},
		"too many insns": {seccompBody(t, append([]byte{0, 0x88, 0x80, 0x02}, make([]byte, 4097*8)...)), "4097 instructions (want 1..4096)"},
	}
	for name, tc := range cases {
		var m HostMsg
		err := m.DecodeWire(tc.body)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, tc.want)
		}
	}
	var m HostMsg
	if err := m.DecodeWire(HostMsg{Config: wrongProto}.AppendWire(nil)); !errors.Is(err, ErrProtocol) {
		t.Errorf("protocol mismatch: %v is not ErrProtocol", err)
	}
}

// seccompBody is a config body with every field empty and the seccomp
// flag set, followed by tail (from the unconfined byte on).
func seccompBody(t *testing.T, tail []byte) []byte {
	t.Helper()
	b := []byte{hostConfig, ProtocolVersion, cfgSeccomp}
	b = append(b, make([]byte, 14+3)...) // the other fields, the profile, arch and mode
	return append(b, tail...)
}

// checkCanonical decodes body with dec and, when it decodes, requires the
// re-encoding to decode to the same message and to encode to itself.
func checkCanonical[M any, P interface {
	*M
	Decoder
	Message
}](t *testing.T, body []byte) {
	var m1 M
	if err := P(&m1).DecodeWire(body); err != nil {
		return
	}
	b2 := P(&m1).AppendWire(nil)
	var m2 M
	if err := P(&m2).DecodeWire(b2); err != nil {
		t.Fatalf("re-encoding of %x does not decode: %v", body, err)
	}
	if !reflect.DeepEqual(m1, m2) {
		t.Fatalf("%x: decoded %+v, then %+v", body, m1, m2)
	}
	if b3 := P(&m2).AppendWire(nil); !bytes.Equal(b2, b3) {
		t.Fatalf("%x: encoding is not stable: %x then %x", body, b2, b3)
	}
}

// FuzzHostMsg: no body panics the decoder or allocates beyond its size,
// and whatever decodes survives a re-encoding unchanged.
func FuzzHostMsg(f *testing.F) {
	c := sampleConfig(f)
	f.Add(HostMsg{Config: c}.AppendWire(nil))
	c.Agent = &AgentInit{ListenFD: 30, Token: []byte("0123456789abcdef"), WorkTasksFD: 31}
	f.Add(HostMsg{Config: c}.AppendWire(nil))
	f.Add(HostMsg{Placed: true}.AppendWire(nil))
	f.Add(HostMsg{Go: true}.AppendWire(nil))
	f.Add([]byte(`{"config":{}}`))
	f.Add([]byte{hostConfig, ProtocolVersion, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, body []byte) {
		checkCanonical[HostMsg](t, body)
	})
}

// FuzzInitMsg is FuzzHostMsg for the messages init sends.
func FuzzInitMsg(f *testing.F) {
	f.Add(InitMsg{Ready: &ReadyMsg{TID: 5, Steps: []string{"root=1ms"}}}.AppendWire(nil))
	f.Add(InitMsg{Started: &StartedMsg{PID: 7}}.AppendWire(nil))
	f.Add(InitMsg{Exited: &ExitStatus{Code: 130, Signal: 2}}.AppendWire(nil))
	f.Add(InitMsg{Error: &StepError{Step: "exec", Message: "x", Errno: 2}}.AppendWire(nil))
	f.Add([]byte{initKnown, 1, 1, 'a', 2, 4, 6, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		checkCanonical[InitMsg](t, body)
	})
}

// BenchmarkConfigWire measures encoding (host) and decoding (init) of a
// run config, in the binary encoding of protocol 2 and, as the peer, the
// JSON of protocol 1. The decoder's reflection caches are warm here; in a
// fresh init they are not, which only JSON pays for.
func BenchmarkConfigWire(b *testing.B) {
	m := HostMsg{Config: sampleConfig(b)}
	bin := m.AppendWire(nil)
	js, err := json.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode=binary", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			_ = m.AppendWire(nil)
		}
		b.ReportMetric(float64(len(bin)), "frame-bytes")
	})
	b.Run("encode=json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := json.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(js)), "frame-bytes")
	})
	b.Run("decode=binary", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var got HostMsg
			if err := got.DecodeWire(bin); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode=json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var got HostMsg
			if err := json.Unmarshal(js, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
