package seccomp

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Status is the seccomp-related state of one thread, as the kernel reports
// it in /proc/PID/task/TID/status.
type Status struct {
	Seccomp        int    `json:"seccomp"`         // 0 disabled, 1 strict, 2 filter
	SeccompFilters int    `json:"seccomp_filters"` // number of attached filters (-1 if not reported)
	NoNewPrivs     bool   `json:"no_new_privs"`
	CapEff         uint64 `json:"cap_eff"`
	CapBnd         uint64 `json:"cap_bnd"`
}

// ReadStatus reads the status of thread tid of process pid; tid 0 means the
// process's main thread (/proc/PID/status).
func ReadStatus(pid, tid int) (Status, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	if tid != 0 {
		path = fmt.Sprintf("/proc/%d/task/%d/status", pid, tid)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Status{}, fmt.Errorf("read seccomp status: %w", err)
	}
	st, err := parseStatus(data)
	if err != nil {
		return Status{}, fmt.Errorf("parse %s: %w", path, err)
	}
	return st, nil
}

func parseStatus(data []byte) (Status, error) {
	st := Status{Seccomp: -1, SeccompFilters: -1}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		var err error
		switch key {
		case "Seccomp":
			st.Seccomp, err = strconv.Atoi(val)
		case "Seccomp_filters":
			st.SeccompFilters, err = strconv.Atoi(val)
		case "NoNewPrivs":
			var n int
			n, err = strconv.Atoi(val)
			st.NoNewPrivs = n == 1
		case "CapEff":
			st.CapEff, err = strconv.ParseUint(val, 16, 64)
		case "CapBnd":
			st.CapBnd, err = strconv.ParseUint(val, 16, 64)
		default:
			continue
		}
		if err != nil {
			return Status{}, fmt.Errorf("field %s: %w", key, err)
		}
		seen[key] = true
	}
	if err := sc.Err(); err != nil {
		return Status{}, err
	}
	for _, k := range []string{"Seccomp", "NoNewPrivs", "CapEff", "CapBnd"} {
		if !seen[k] {
			return Status{}, fmt.Errorf("field %s: missing", k)
		}
	}
	return st, nil
}

// RequireFiltered returns an error wrapping ErrNotConfined unless s shows a
// seccomp filter (Seccomp: 2) and no_new_privs.
func (s Status) RequireFiltered() error {
	if s.Seccomp != 2 || !s.NoNewPrivs {
		return fmt.Errorf("%w: Seccomp=%d NoNewPrivs=%t (want 2 and true)", ErrNotConfined, s.Seccomp, s.NoNewPrivs)
	}
	return nil
}
