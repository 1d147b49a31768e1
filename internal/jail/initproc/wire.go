package initproc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// The body of a control frame is a compact binary encoding of a HostMsg or
// an InitMsg, written and checked by hand here. A fresh init decodes one
// config per sandbox; with encoding/json that cost a cold reflection cache
// and a JSON array of ~330 BPF instruction objects in every init. The
// encoding:
//
//   - integers are varints (encoding/binary), unsigned ones as uvarints;
//   - strings and byte strings are a uvarint length and the bytes;
//   - lists and maps are a uvarint count and the elements, maps in key
//     order, each key once;
//   - a message starts with one byte of flags saying which parts follow;
//   - a config starts with its protocol version, so that init can name a
//     mismatch before it reads anything else;
//   - the seccomp filter is a byte string of 8-byte sock_filter records
//     (seccomp.AppendInstructions).
//
// Frames come from another process: every length is checked against what
// is left of the frame before anything is allocated, unknown flags and
// trailing bytes are errors, and an error names the field.

// ErrProtocol reports a config from a host that speaks another protocol
// version.
var ErrProtocol = errors.New("control protocol version mismatch")

// HostMsg flags.
const (
	hostConfig = 1 << iota
	hostPlaced
	hostGo
	hostKnown = hostConfig | hostPlaced | hostGo
)

// InitMsg flags.
const (
	initReady = 1 << iota
	initStarted
	initExited
	initError
	initKnown = initReady | initStarted | initExited | initError
)

// Config flags.
const (
	cfgTTY = 1 << iota
	cfgLoopback
	cfgTrace
	cfgPersistent
	cfgSeccomp
	cfgAgent
	cfgKnown = cfgTTY | cfgLoopback | cfgTrace | cfgPersistent | cfgSeccomp | cfgAgent
)

// BindSource flags.
const (
	srcWritable = 1 << iota
	srcDir
	srcSystem
	srcKnown = srcWritable | srcDir | srcSystem
)

// AppendWire appends m's encoding to b.
func (m HostMsg) AppendWire(b []byte) []byte {
	var f byte
	if m.Config != nil {
		f |= hostConfig
	}
	if m.Placed {
		f |= hostPlaced
	}
	if m.Go {
		f |= hostGo
	}
	b = append(b, f)
	if m.Config != nil {
		b = m.Config.appendWire(b)
	}
	return b
}

// DecodeWire sets m from its encoding, all of b.
func (m *HostMsg) DecodeWire(b []byte) error {
	if len(b) > 0 && b[0] == '{' {
		return fmt.Errorf("a JSON body, as protocol 1 sent: %w", ErrProtocol)
	}
	d := decoder{b: b}
	f := d.flags("host message", hostKnown)
	*m = HostMsg{Placed: f&hostPlaced != 0, Go: f&hostGo != 0}
	if f&hostConfig != 0 {
		m.Config = &Config{}
		m.Config.decodeWire(&d)
	}
	return d.finish()
}

func (c *Config) appendWire(b []byte) []byte {
	e := encoder{b: b}
	e.uint(uint64(c.Protocol))
	var f uint64
	for _, x := range []struct {
		set  bool
		flag uint64
	}{
		{c.TTY, cfgTTY}, {c.Loopback, cfgLoopback}, {c.Trace, cfgTrace},
		{c.Persistent, cfgPersistent}, {c.Seccomp != nil, cfgSeccomp}, {c.Agent != nil, cfgAgent},
	} {
		if x.set {
			f |= x.flag
		}
	}
	e.uint(f)
	e.int(int64(c.ExeFD))
	e.int(int64(c.LockFD))
	e.int(c.Epoch)
	e.str(c.Hostname)
	e.str(c.NewRoot)
	e.uint(uint64(len(c.Sources)))
	for _, s := range c.Sources {
		var sf byte
		if s.Writable {
			sf |= srcWritable
		}
		if s.Dir {
			sf |= srcDir
		}
		if s.System {
			sf |= srcSystem
		}
		e.int(int64(s.FD))
		e.str(s.Target)
		e.b = append(e.b, sf)
	}
	e.strMap(c.Etc)
	e.strMap(c.Symlinks)
	e.strs(c.Command)
	e.strs(c.Env)
	e.uint(uint64(c.User.UID))
	e.uint(uint64(c.User.GID))
	e.str(c.Cwd)
	e.uint(uint64(len(c.Rlimits)))
	for _, r := range c.Rlimits {
		e.int(int64(r.Resource))
		e.uint(r.Cur)
		e.uint(r.Max)
	}
	if p := c.Seccomp; p != nil {
		e.str(p.Profile)
		e.str(string(p.Arch))
		e.str(string(p.Mode))
		e.bool(p.Unconfined)
		e.uint(uint64(len(p.Instructions) * seccomp.InstructionSize))
		e.b = seccomp.AppendInstructions(e.b, p.Instructions)
	}
	if a := c.Agent; a != nil {
		e.int(int64(a.ListenFD))
		e.bytes(a.Token)
		e.int(a.MaxFileSize)
		e.int(int64(a.WorkTasksFD))
	}
	return e.b
}

func (c *Config) decodeWire(d *decoder) {
	c.Protocol = int(d.uint("config.protocol", math.MaxInt32))
	if d.err == nil && c.Protocol != ProtocolVersion {
		d.err = fmt.Errorf("config.protocol: the host speaks protocol %d, this init %d: %w", c.Protocol, ProtocolVersion, ErrProtocol)
		return
	}
	f := d.uint("config.flags", math.MaxUint64)
	if d.err == nil && f&^cfgKnown != 0 {
		d.fail("config.flags", fmt.Sprintf("unknown flags %#x", f&^cfgKnown))
	}
	c.TTY, c.Loopback, c.Trace = f&cfgTTY != 0, f&cfgLoopback != 0, f&cfgTrace != 0
	c.Persistent = f&cfgPersistent != 0
	c.ExeFD = d.fd("config.exe_fd")
	c.LockFD = d.fd("config.lock_fd")
	c.Epoch = d.int("config.epoch")
	c.Hostname = d.str("config.hostname")
	c.NewRoot = d.str("config.new_root")
	// A source is at least 3 bytes: fd, target length, flags.
	if n := d.count("config.sources", 3); n > 0 {
		c.Sources = make([]BindSource, n)
		for i := range c.Sources {
			s := &c.Sources[i]
			s.FD = d.fd("config.sources[].fd")
			s.Target = d.str("config.sources[].target")
			sf := d.byte("config.sources[].flags")
			if sf&^srcKnown != 0 {
				d.fail("config.sources[].flags", fmt.Sprintf("unknown flags %#x", sf&^srcKnown))
			}
			s.Writable, s.Dir, s.System = sf&srcWritable != 0, sf&srcDir != 0, sf&srcSystem != 0
		}
	}
	c.Etc = d.strMap("config.etc")
	c.Symlinks = d.strMap("config.symlinks")
	c.Command = d.strs("config.command")
	c.Env = d.strs("config.env")
	c.User = sandbox.User{
		UID: uint32(d.uint("config.user.uid", math.MaxUint32)),
		GID: uint32(d.uint("config.user.gid", math.MaxUint32)),
	}
	c.Cwd = d.str("config.cwd")
	if n := d.count("config.rlimits", 3); n > 0 {
		c.Rlimits = make([]Rlimit, n)
		for i := range c.Rlimits {
			r := &c.Rlimits[i]
			r.Resource = int(d.intIn("config.rlimits[].resource", 0, math.MaxInt32))
			r.Cur = d.uint("config.rlimits[].cur", math.MaxUint64)
			r.Max = d.uint("config.rlimits[].max", math.MaxUint64)
		}
	}
	if f&cfgSeccomp != 0 {
		p := &seccomp.Program{}
		p.Profile = d.str("config.seccomp.profile")
		p.Arch = seccomp.Arch(d.str("config.seccomp.arch"))
		p.Mode = seccomp.Mode(d.str("config.seccomp.mode"))
		p.Unconfined = d.bool("config.seccomp.unconfined")
		if raw := d.bytes("config.seccomp.instructions"); d.err == nil {
			ins, err := seccomp.DecodeInstructions(raw)
			if err != nil {
				d.err = fmt.Errorf("config.seccomp.instructions: %w", err)
			}
			p.Instructions = ins
		}
		c.Seccomp = p
	}
	if f&cfgAgent != 0 {
		a := &AgentInit{}
		a.ListenFD = d.fd("config.agent.listen_fd")
		if tok := d.bytes("config.agent.token"); len(tok) > 0 {
			a.Token = slices.Clone(tok)
		}
		a.MaxFileSize = d.intIn("config.agent.max_file_size", 0, math.MaxInt64)
		a.WorkTasksFD = d.fd("config.agent.work_tasks_fd")
		c.Agent = a
	}
}

// AppendWire appends m's encoding to b.
func (m InitMsg) AppendWire(b []byte) []byte {
	var f byte
	if m.Ready != nil {
		f |= initReady
	}
	if m.Started != nil {
		f |= initStarted
	}
	if m.Exited != nil {
		f |= initExited
	}
	if m.Error != nil {
		f |= initError
	}
	e := encoder{b: append(b, f)}
	if r := m.Ready; r != nil {
		e.int(int64(r.TID))
		e.strs(r.Steps)
	}
	if s := m.Started; s != nil {
		e.int(int64(s.PID))
	}
	if x := m.Exited; x != nil {
		e.int(int64(x.Code))
		e.int(int64(x.Signal))
	}
	if x := m.Error; x != nil {
		e.str(x.Step)
		e.str(x.Message)
		e.int(int64(x.Errno))
	}
	return e.b
}

// DecodeWire sets m from its encoding, all of b.
func (m *InitMsg) DecodeWire(b []byte) error {
	d := decoder{b: b}
	f := d.flags("init message", initKnown)
	*m = InitMsg{}
	if f&initReady != 0 {
		m.Ready = &ReadyMsg{
			TID:   int(d.intIn("ready.tid", 0, math.MaxInt32)),
			Steps: d.strs("ready.steps"),
		}
	}
	if f&initStarted != 0 {
		m.Started = &StartedMsg{PID: int(d.intIn("started.pid", 0, math.MaxInt32))}
	}
	if f&initExited != 0 {
		m.Exited = &ExitStatus{
			Code:   int(d.intIn("exited.code", math.MinInt32, math.MaxInt32)),
			Signal: int(d.intIn("exited.signal", 0, math.MaxInt32)),
		}
	}
	if f&initError != 0 {
		m.Error = &StepError{
			Step:    d.str("error.step"),
			Message: d.str("error.message"),
			Errno:   int(d.intIn("error.errno", 0, math.MaxInt32)),
		}
	}
	return d.finish()
}

// encoder appends the primitives of the encoding.
type encoder struct{ b []byte }

func (e *encoder) uint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) int(v int64)   { e.b = binary.AppendVarint(e.b, v) }

func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) str(s string) {
	e.uint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) bytes(v []byte) {
	e.uint(uint64(len(v)))
	e.b = append(e.b, v...)
}

func (e *encoder) strs(l []string) {
	e.uint(uint64(len(l)))
	for _, s := range l {
		e.str(s)
	}
}

func (e *encoder) strMap(m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	e.uint(uint64(len(keys)))
	for _, k := range keys {
		e.str(k)
		e.str(m[k])
	}
}

// decoder reads the primitives of the encoding from b. The first error
// sticks: later reads return zero values, and finish reports it.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: %s", field, why)
	}
}

func (d *decoder) finish() error {
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%d trailing bytes", len(d.b))
	}
	return nil
}

func (d *decoder) byte(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail(field, "truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) flags(field string, known byte) byte {
	f := d.byte(field)
	if f&^known != 0 {
		d.fail(field, fmt.Sprintf("unknown flags %#x", f&^known))
	}
	return f
}

func (d *decoder) bool(field string) bool {
	switch d.byte(field) {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail(field, "not a boolean")
	return false
}

// uint reads a uvarint no larger than max.
func (d *decoder) uint(field string, max uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(field, "truncated or overlong integer")
		return 0
	}
	d.b = d.b[n:]
	if v > max {
		d.fail(field, fmt.Sprintf("%d exceeds %d", v, max))
		return 0
	}
	return v
}

// int reads a varint.
func (d *decoder) int(field string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(field, "truncated or overlong integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// intIn reads a varint within [lo, hi].
func (d *decoder) intIn(field string, lo, hi int64) int64 {
	v := d.int(field)
	if v < lo || v > hi {
		d.fail(field, fmt.Sprintf("%d is outside %d..%d", v, lo, hi))
		return 0
	}
	return v
}

// fd reads a descriptor number (0 for none).
func (d *decoder) fd(field string) int {
	return int(d.intIn(field, 0, math.MaxInt32))
}

// count reads the length of a list whose elements take at least min bytes
// each, so that a forged count cannot allocate more than the frame holds.
func (d *decoder) count(field string, min int) int {
	n := d.uint(field, math.MaxInt32)
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.fail(field, fmt.Sprintf("%d elements do not fit in the %d bytes left", n, len(d.b)))
		return 0
	}
	return int(n)
}

// bytes reads a byte string; the result aliases the frame.
func (d *decoder) bytes(field string) []byte {
	n := d.uint(field, math.MaxInt32)
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(field, fmt.Sprintf("%d bytes do not fit in the %d left", n, len(d.b)))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str(field string) string { return string(d.bytes(field)) }

func (d *decoder) strs(field string) []string {
	n := d.count(field, 1)
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = d.str(field)
	}
	return out
}

// strMap reads a map written in key order; a key out of order or repeated
// is an error.
func (d *decoder) strMap(field string) map[string]string {
	n := d.count(field, 2)
	if n == 0 {
		return nil
	}
	m := make(map[string]string, n)
	prev := ""
	for i := 0; i < n && d.err == nil; i++ {
		k := d.str(field)
		if i > 0 && k <= prev {
			d.fail(field, fmt.Sprintf("key %q out of order or repeated", k))
			break
		}
		m[k] = d.str(field)
		prev = k
	}
	return m
}
