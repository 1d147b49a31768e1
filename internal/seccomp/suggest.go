package seccomp

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	mseccomp "github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Suggest returns base extended so that every syscall named in report is
// allowed: the names are removed from base's rules that do not allow, and
// one allow rule listing them is appended. The allow is unconditional, so a
// syscall that base allowed only for some arguments (socket, clone,
// personality) becomes allowed for all: review the output. Unknown syscall
// numbers in the report cannot be named and are left out (the count is in
// the rule's comment).
func Suggest(report Report, base *mseccomp.Seccomp) (*mseccomp.Seccomp, error) {
	if report.Version != ReportVersion {
		return nil, fmt.Errorf("audit report version %d (want %d): %w", report.Version, ReportVersion, ErrUnsupported)
	}
	if base == nil {
		return nil, fmt.Errorf("suggest: no base profile")
	}
	// Deep copy through JSON: base stays untouched.
	data, err := json.Marshal(base)
	if err != nil {
		return nil, fmt.Errorf("suggest: copy base profile: %w", err)
	}
	var out mseccomp.Seccomp
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("suggest: copy base profile: %w", err)
	}
	var names []string
	var calls uint64
	for _, s := range report.Syscalls {
		if s.Name == "" {
			continue
		}
		if !slices.Contains(names, s.Name) {
			names = append(names, s.Name)
		}
		calls += s.Count
	}
	sort.Strings(names)
	if len(names) == 0 {
		return &out, nil
	}
	kept := out.Syscalls[:0]
	for _, sc := range out.Syscalls {
		if sc.Action != specs.ActAllow {
			if sc.Name != "" && slices.Contains(names, sc.Name) {
				continue
			}
			sc.Names = slices.DeleteFunc(sc.Names, func(n string) bool { return slices.Contains(names, n) })
			if sc.Name == "" && len(sc.Names) == 0 {
				continue
			}
		}
		kept = append(kept, sc)
	}
	comment := fmt.Sprintf("ironclaw seccomp suggest: used by the workload in audit mode (%d calls to %s)", calls, strings.Join(names, ", "))
	if report.Unknown > 0 {
		comment += fmt.Sprintf("; %d calls to syscall numbers IronClaw cannot name were left out", report.Unknown)
	}
	out.Syscalls = append(kept, &mseccomp.Syscall{
		LinuxSyscall: specs.LinuxSyscall{Names: names, Action: specs.ActAllow},
		Comment:      comment,
	})
	return &out, nil
}
