package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode"
)

// ParseSize parses a size such as "512m", "1.5GiB", "64KB" or "1048576".
// k, m, g and t (with or without "i" and "b") are powers of 1024; "kb",
// "mb", "gb" and "tb" are powers of 1000; a bare number is bytes. "0" means
// unlimited where the caller allows it.
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	i := strings.IndexFunc(in, func(r rune) bool { return !(unicode.IsDigit(r) || r == '.') })
	num, unit := in, ""
	if i >= 0 {
		num, unit = in[:i], strings.ToLower(strings.TrimSpace(in[i:]))
	}
	if num == "" {
		return 0, fmt.Errorf("size %q: no number", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: bad number", s)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (use b, k, m, g, t, KiB..TiB or kB..TB)", s, unit)
	}
	bytes := v * mult
	if bytes > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	if bytes != math.Trunc(bytes) {
		return 0, fmt.Errorf("size %q: not a whole number of bytes", s)
	}
	return int64(bytes), nil
}

var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
}

// FormatSize renders n bytes with the largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		s string
		v int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.s
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// ParseMount parses HOST:GUEST[:ro|rw]. Mounts are read-only unless rw is
// given. The host path may itself contain colons; the guest path may not.
func ParseMount(s string) (Mount, error) {
	rest, m := s, Mount{}
	switch {
	case strings.HasSuffix(rest, ":rw"):
		rest, m.Writable = strings.TrimSuffix(rest, ":rw"), true
	case strings.HasSuffix(rest, ":ro"):
		rest = strings.TrimSuffix(rest, ":ro")
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return Mount{}, fmt.Errorf("%w: mount %q: want HOST:GUEST[:ro|rw]", ErrInvalid, s)
	}
	m.Source, m.Target = rest[:i], rest[i+1:]
	if err := m.validate(); err != nil {
		return Mount{}, err
	}
	return m, nil
}

// ParseUser parses "sandbox", "root", "UID" or "UID:GID".
func ParseUser(s string) (User, error) {
	switch s {
	case "", "sandbox":
		return SandboxUser, nil
	case "root":
		return User{}, nil
	}
	us, gs, hasGID := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(us, 10, 32)
	if err != nil || uid >= MappedIDs {
		return User{}, fmt.Errorf("%w: user %q: want sandbox, root, UID or UID:GID with ids below %d", ErrInvalid, s, MappedIDs)
	}
	gid := uid
	if hasGID {
		gid, err = strconv.ParseUint(gs, 10, 32)
		if err != nil || gid >= MappedIDs {
			return User{}, fmt.Errorf("%w: user %q: bad gid %q", ErrInvalid, s, gs)
		}
	}
	return User{UID: uint32(uid), GID: uint32(gid)}, nil
}

// ParseEnvFile reads KEY=VALUE lines. Blank lines and lines starting with #
// are skipped; an "export " prefix is allowed. Values are taken verbatim.
func ParseEnvFile(r io.Reader, name string) ([]string, error) {
	var env []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimPrefix(strings.TrimLeft(sc.Text(), " \t"), "export ")
		if line == "" || line[0] == '#' {
			continue
		}
		if err := validateEnv(line); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		env = append(env, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return env, nil
}

// MergeEnv returns base with each K=V of over replacing the same key, in
// order, the last setting of a key winning.
func MergeEnv(base []string, over ...string) []string {
	idx := map[string]int{}
	out := make([]string, 0, len(base)+len(over))
	for _, kv := range append(append([]string{}, base...), over...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}
