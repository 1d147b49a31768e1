package seccomp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
)

// SeccompilerFilter is one thread's filter in Firecracker's seccompiler
// JSON format (firecracker docs/seccompiler.md).
type SeccompilerFilter struct {
	DefaultAction SeccompilerAction `json:"default_action"`
	FilterAction  SeccompilerAction `json:"filter_action"`
	Filter        []SeccompilerRule `json:"filter"`
}

// SeccompilerRule matches one syscall, optionally only when all Args hold.
// Several rules for one syscall are alternatives.
type SeccompilerRule struct {
	Syscall string            `json:"syscall"`
	Args    []SeccompilerCond `json:"args,omitempty"`
	Comment string            `json:"comment,omitempty"`
}

// SeccompilerCond is one argument condition.
type SeccompilerCond struct {
	Index   uint8           `json:"index"`
	Type    string          `json:"type"` // "dword" (low 32 bits) or "qword"
	Op      json.RawMessage `json:"op"`   // "eq", "ne", "lt", "le", "gt", "ge" or {"masked_eq": mask}
	Val     uint64          `json:"val"`
	Comment string          `json:"comment,omitempty"`
}

// SeccompilerAction is "allow", "trap", "kill_thread", "kill_process",
// "log", {"errno": N} or {"trace": N}.
type SeccompilerAction struct{ Action }

// UnmarshalJSON decodes a seccompiler action.
func (a *SeccompilerAction) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		switch s {
		case "allow":
			a.Action = Action{Kind: ActAllow}
		case "trap":
			a.Action = Action{Kind: ActTrap}
		case "kill_thread":
			a.Action = Action{Kind: ActKillThread}
		case "kill_process":
			a.Action = Action{Kind: ActKillProcess}
		case "log":
			a.Action = Action{Kind: ActLog}
		default:
			return fmt.Errorf("unknown action %q", s)
		}
		return nil
	}
	var m map[string]uint16
	if err := json.Unmarshal(b, &m); err != nil || len(m) != 1 {
		return fmt.Errorf("action %s: want a name or {\"errno\": N} / {\"trace\": N}", b)
	}
	for k, v := range m {
		switch k {
		case "errno":
			a.Action = Action{Kind: ActErrno, Data: v}
		case "trace":
			a.Action = Action{Kind: ActTrace, Data: v}
		default:
			return fmt.Errorf("unknown action %q", k)
		}
	}
	return nil
}

// ParseSeccompiler decodes a seccompiler JSON file: thread name → filter.
func ParseSeccompiler(data []byte) (map[string]SeccompilerFilter, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m map[string]SeccompilerFilter
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: seccompiler JSON: %v", ErrInvalidProfile, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%w: seccompiler JSON: no threads", ErrInvalidProfile)
	}
	for thread, f := range m {
		if f.DefaultAction.Kind == 0 || f.FilterAction.Kind == 0 {
			return nil, fmt.Errorf("%w: seccompiler thread %q: default_action and filter_action are required", ErrInvalidProfile, thread)
		}
		for i, r := range f.Filter {
			if r.Syscall == "" {
				return nil, fmt.Errorf("%w: seccompiler thread %q filter[%d].syscall: missing", ErrInvalidProfile, thread, i)
			}
			for j, c := range r.Args {
				if _, err := c.cond(); err != nil {
					return nil, fmt.Errorf("%w: seccompiler thread %q filter[%d].args[%d]: %v", ErrInvalidProfile, thread, i, j, err)
				}
			}
		}
	}
	return m, nil
}

func (c SeccompilerCond) cond() (Cond, error) {
	if c.Index > 5 {
		return Cond{}, fmt.Errorf("index %d is not an argument index (0..5)", c.Index)
	}
	out := Cond{Arg: c.Index, Value: c.Val}
	switch c.Type {
	case "dword":
		out.Low32 = true
	case "qword":
	default:
		return Cond{}, fmt.Errorf("type %q (want dword or qword)", c.Type)
	}
	var op string
	if err := json.Unmarshal(c.Op, &op); err == nil {
		ops := map[string]Op{"eq": OpEQ, "ne": OpNE, "lt": OpLT, "le": OpLE, "gt": OpGT, "ge": OpGE}
		o, ok := ops[op]
		if !ok {
			return Cond{}, fmt.Errorf("op %q", op)
		}
		out.Op = o
		return out, nil
	}
	var masked struct {
		Mask *uint64 `json:"masked_eq"`
	}
	dec := json.NewDecoder(bytes.NewReader(c.Op))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&masked); err != nil || masked.Mask == nil {
		return Cond{}, fmt.Errorf("op %s (want eq, ne, lt, le, gt, ge or {\"masked_eq\": mask})", c.Op)
	}
	out.Op, out.Mask = OpMaskedEQ, *masked.Mask
	return out, nil
}

// Rules returns f's rules as Policy rules for arch (unknown syscall names
// are an error: these files are written per architecture).
func (f SeccompilerFilter) Rules(arch Arch) ([]Rule, error) {
	var out []Rule
	for i, r := range f.Filter {
		if _, ok := arch.SyscallNumber(r.Syscall); !ok {
			return nil, fmt.Errorf("%w: filter[%d]: syscall %q unknown on %s", ErrInvalidProfile, i, r.Syscall, arch)
		}
		rule := Rule{Syscall: r.Syscall, Action: f.FilterAction.Action}
		for _, c := range r.Args {
			cd, err := c.cond()
			if err != nil {
				return nil, err
			}
			rule.Conds = append(rule.Conds, cd)
		}
		out = append(out, rule)
	}
	return out, nil
}

// Policy returns f as a Policy for one thread.
func (f SeccompilerFilter) Policy(arch Arch) (*Policy, error) {
	rules, err := f.Rules(arch)
	if err != nil {
		return nil, err
	}
	return &Policy{Default: f.DefaultAction.Action, Rules: rules}, nil
}

// threadNames returns m's thread names, sorted (for deterministic output).
func threadNames(m map[string]SeccompilerFilter) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
