package approval

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Class is the classification of a tool call.
type Class string

const (
	// Green calls run without asking.
	Green Class = "green"
	// Red calls are held until a person approves them.
	Red Class = "red"
)

// DefaultTimeout is how long a red call waits for a decision before it is
// denied.
const DefaultTimeout = 5 * time.Minute

// ErrPolicy marks an invalid approval policy.
var ErrPolicy = errors.New("invalid approval policy")

// Policy is the user's approval policy: ordered rules, the first match wins;
// then the server's hints (the tool's annotations, then its name), which
// make a call green only if the server's hints are trusted; then red.
type Policy struct {
	// Rules are tried in order; the first that matches decides.
	Rules []Rule `json:"rules,omitempty"`
	// TrustHints lets the server's hints make a call green: readOnlyHint,
	// destructiveHint and openWorldHint both false, or a read verb leading
	// the tool's name. Without it (the default) hints can only make a call
	// red: the MCP specification says annotations from untrusted servers
	// must be treated as untrusted, and a malicious server can mark any
	// tool read-only or name it get_x. It is not part of the policy JSON:
	// the caller sets it from the server's own config ("trust_hints").
	TrustHints bool `json:"-"`
	// Timeout is how long a red call waits before it is denied ("5m").
	Timeout Duration `json:"timeout,omitempty"`
}

// Duration is a time.Duration written as a Go duration string in JSON.
type Duration time.Duration

// MarshalJSON writes d as "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "90s", "5m" and the like.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"5m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	if v <= 0 {
		return fmt.Errorf("duration %q: must be positive", s)
	}
	*d = Duration(v)
	return nil
}

// Rule classifies the calls it matches.
type Rule struct {
	// Server is a glob on the server name; empty matches every server. It
	// is meaningful in gateway-wide rules; per-server rules leave it empty.
	Server string `json:"server,omitempty"`
	// Tool is a glob on the whole tool name, as the server names it
	// (without the "server__" prefix). Required.
	Tool string `json:"tool"`
	// Args are matchers on argument values, by top-level argument name; the
	// name "*" matches if any string anywhere in the arguments matches. All
	// matchers must match.
	Args map[string]Matcher `json:"args,omitempty"`
	// Class is what a matching call is: green or red.
	Class Class `json:"class"`
}

// Matcher tests one argument value. Every field that is set must match.
// Absent arguments match only Absent.
type Matcher struct {
	// Equals matches a value equal to this JSON value.
	Equals json.RawMessage `json:"equals,omitempty"`
	// Glob matches the whole string value against a glob ('*' spans '/').
	Glob string `json:"glob,omitempty"`
	// Regex matches the whole string value (it is anchored at both ends).
	Regex string `json:"regex,omitempty"`
	// Under matches a path equal to or below this absolute directory,
	// after cleaning (so "/data/../etc" is not under "/data").
	Under string `json:"under,omitempty"`
	// AnyWord matches a string with a word token equal to one of these
	// (see Words): never a substring inside a word.
	AnyWord []string `json:"any_word,omitempty"`
	// Absent matches when the argument is missing (true) or present (false).
	Absent *bool `json:"absent,omitempty"`

	re       *regexp.Regexp
	words    map[string]bool
	compiled bool // set by Policy.Compile; Classify refuses to trust a matcher without it
}

// ParsePolicy decodes a policy strictly (unknown keys are errors) and
// validates it.
func ParsePolicy(raw []byte) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	if dec.More() {
		return Policy{}, fmt.Errorf("%w: trailing data after the policy object", ErrPolicy)
	}
	if err := p.Compile(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// Compile validates p and prepares its matchers. It must be called before
// Classify (ParsePolicy does), and before p is used concurrently: a policy
// with an uncompiled matcher classifies every call red.
func (p *Policy) Compile() error {
	for i := range p.Rules {
		r := &p.Rules[i]
		where := fmt.Sprintf("rules[%d]", i)
		switch {
		case r.Tool == "":
			return fmt.Errorf("%w: %s: tool: must be a tool name or glob", ErrPolicy, where)
		case !validGlob(r.Tool) || !validGlob(r.Server):
			return fmt.Errorf("%w: %s: glob ends in a dangling '\\'", ErrPolicy, where)
		case r.Class != Green && r.Class != Red:
			return fmt.Errorf("%w: %s: class: %q is not \"green\" or \"red\"", ErrPolicy, where, r.Class)
		}
		for name, m := range r.Args {
			if err := m.compile(); err != nil {
				return fmt.Errorf("%w: %s: args.%s: %v", ErrPolicy, where, name, err)
			}
			r.Args[name] = m
		}
	}
	return nil
}

func (m *Matcher) compile() error {
	set := 0
	if len(m.Equals) > 0 {
		set++
		if !json.Valid(m.Equals) {
			return errors.New("equals: not valid JSON")
		}
	}
	if m.Glob != "" {
		set++
		if !validGlob(m.Glob) {
			return errors.New("glob: dangling '\\'")
		}
	}
	if m.Regex != "" {
		set++
		re, err := regexp.Compile(`^(?:` + m.Regex + `)$`)
		if err != nil {
			return fmt.Errorf("regex: %v", err)
		}
		m.re = re
	}
	if m.Under != "" {
		set++
		if !path.IsAbs(m.Under) {
			return fmt.Errorf("under: %q is not an absolute path", m.Under)
		}
		m.Under = path.Clean(m.Under)
	}
	if len(m.AnyWord) > 0 {
		set++
		m.words = map[string]bool{}
		for _, w := range m.AnyWord {
			ws := Words(w)
			if len(ws) != 1 {
				return fmt.Errorf("any_word: %q is not a single word", w)
			}
			m.words[ws[0]] = true
		}
	}
	if m.Absent != nil {
		set++
	}
	if set == 0 {
		return errors.New("matcher tests nothing (use equals, glob, regex, under, any_word or absent)")
	}
	m.compiled = true
	return nil
}

// compiled reports whether every matcher of p went through Compile.
func (p *Policy) compiled() bool {
	for _, r := range p.Rules {
		for _, m := range r.Args {
			if !m.compiled {
				return false
			}
		}
	}
	return true
}

// Call is what the classifier sees of a tools/call.
type Call struct {
	Server      string
	Tool        string // the tool's name on its server, without the prefix
	Arguments   map[string]any
	Annotations *mcp.ToolAnnotations
}

// Verdict is a classification and the reason for it, for the audit log and
// the card.
type Verdict struct {
	Class  Class  `json:"class"`
	Reason string `json:"reason"`
}

// Classify classifies c: the first matching rule; else the server's hints
// (see hints), where a green hint counts only with TrustHints; else red.
func (p *Policy) Classify(c Call) Verdict {
	if !p.compiled() {
		// An uncompiled regex or any_word matcher would match anything;
		// fail closed rather than guess.
		return Verdict{Red, "the approval policy was not compiled (Policy.Compile): every call is held"}
	}
	for i, r := range p.Rules {
		if r.matches(c) {
			return Verdict{r.Class, fmt.Sprintf("policy rule %d (tool %q)", i, r.Tool)}
		}
	}
	v := hints(c)
	if v.Class == Green && !p.TrustHints {
		return Verdict{Red, fmt.Sprintf("no rule matched; the server's hints say green (%s) but this server's hints are not trusted", v.Reason)}
	}
	return v
}

// hints classifies c by what its server says alone: the annotations
// (readOnlyHint, or destructiveHint and openWorldHint both explicitly
// false, are green; anything else red); without annotations, the tool
// name's verb (a read verb first and no write verb anywhere is green);
// else red.
func hints(c Call) Verdict {
	if a := c.Annotations; a != nil {
		switch {
		case a.ReadOnlyHint:
			return Verdict{Green, "annotation readOnlyHint"}
		case a.DestructiveHint != nil && !*a.DestructiveHint && a.OpenWorldHint != nil && !*a.OpenWorldHint:
			return Verdict{Green, "annotations: not destructive, closed world"}
		case a.DestructiveHint == nil || *a.DestructiveHint:
			return Verdict{Red, "annotations: may be destructive (destructiveHint true or unset)"}
		default:
			return Verdict{Red, "annotations: open world (openWorldHint true or unset)"}
		}
	}
	words := Words(c.Tool)
	if w, ok := hasWord(words, writeVerbs); ok {
		return Verdict{Red, fmt.Sprintf("tool name has the word %q", w)}
	}
	if len(words) > 0 && readVerbs[words[0]] {
		return Verdict{Green, fmt.Sprintf("tool name starts with the read verb %q", words[0])}
	}
	return Verdict{Red, "unknown: no rule, no annotations, no read verb"}
}

// readVerbs start the names of tools that only look. "fetch" is missing on
// purpose: fetching a URL reaches the open world.
var readVerbs = wordSet("get", "list", "read", "search", "find", "describe", "show", "view",
	"query", "lookup", "inspect", "stat", "count", "head", "tail", "grep", "status", "info", "echo", "ping")

// writeVerbs anywhere in a name make it red, whatever it starts with.
var writeVerbs = wordSet("delete", "del", "remove", "rm", "rmdir", "unlink", "write", "create", "update",
	"set", "put", "post", "patch", "move", "mv", "rename", "copy", "cp", "exec", "execute", "run", "kill",
	"drop", "truncate", "send", "push", "deploy", "install", "uninstall", "edit", "modify", "insert",
	"upload", "reset", "destroy", "purge", "apply", "commit", "merge", "overwrite", "append", "save",
	"chmod", "chown", "mkdir", "format", "wipe", "clear", "shutdown", "reboot", "restart", "stop", "start",
	"approve", "pay", "transfer", "sign", "publish", "invoke", "call", "eval", "shell", "sudo")

func (r *Rule) matches(c Call) bool {
	if r.Server != "" && !Glob(r.Server, c.Server) {
		return false
	}
	if !Glob(r.Tool, c.Tool) {
		return false
	}
	// Deterministic order for readability; all must match anyway.
	names := make([]string, 0, len(r.Args))
	for n := range r.Args {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m := r.Args[n]
		if n == "*" {
			if !anyString(c.Arguments, m.matchString) {
				return false
			}
			continue
		}
		v, ok := c.Arguments[n]
		if !m.match(v, ok) {
			return false
		}
	}
	return true
}

func (m *Matcher) match(v any, present bool) bool {
	if m.Absent != nil {
		if *m.Absent == present {
			return false
		}
		if !present {
			return true
		}
	}
	if !present {
		return false
	}
	if len(m.Equals) > 0 {
		var want any
		if UnmarshalExact(m.Equals, &want) != nil || !jsonEqual(want, v) {
			return false
		}
	}
	if m.Glob == "" && m.re == nil && m.Under == "" && m.words == nil {
		return true
	}
	s, ok := scalarString(v)
	if !ok {
		return false
	}
	return m.matchString(s)
}

func (m *Matcher) matchString(s string) bool {
	if m.Glob != "" && !Glob(m.Glob, s) {
		return false
	}
	if m.re != nil && !m.re.MatchString(s) {
		return false
	}
	if m.Under != "" {
		if !path.IsAbs(s) {
			return false
		}
		c := path.Clean(s)
		if c != m.Under && !strings.HasPrefix(c, strings.TrimSuffix(m.Under, "/")+"/") {
			return false
		}
	}
	if m.words != nil {
		if _, ok := hasWord(Words(s), m.words); !ok {
			return false
		}
	}
	if len(m.Equals) > 0 || m.Absent != nil {
		// Only string tests apply to "*"; equals/absent were handled by match.
		return m.Glob != "" || m.re != nil || m.Under != "" || m.words != nil
	}
	return true
}

func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case float64:
		return canonicalNumber(strconv.FormatFloat(x, 'g', -1, 64))
	case json.Number:
		// Canonical, so that a pattern over 1000 matches 1e3 and 1000.0
		// too: a client cannot step around a rule by respelling a number.
		return canonicalNumber(x.String())
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

// anyString reports whether f holds for any string in v, at any depth.
func anyString(v any, f func(string) bool) bool {
	switch x := v.(type) {
	case string:
		return f(x)
	case map[string]any:
		for _, e := range x {
			if anyString(e, f) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if anyString(e, f) {
				return true
			}
		}
	}
	return false
}

// jsonEqual reports whether the decoded JSON values a and b are equal, numbers by
// their exact value (1e3 equals 1000, 2^53 does not equal 2^53+1).
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !jsonEqual(xv, yv) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case json.Number, float64:
		xs, ok1 := numberString(a)
		ys, ok2 := numberString(b)
		return ok1 && ok2 && xs == ys
	}
	switch b.(type) {
	case map[string]any, []any, json.Number, float64:
		return false
	}
	return a == b // strings, booleans, null
}

// numberString is the canonical spelling of the number v, if it is one.
func numberString(v any) (string, bool) {
	switch v.(type) {
	case json.Number, float64:
		return scalarString(v)
	}
	return "", false
}

// TimeoutOr returns the policy's timeout or def when it sets none.
func (p *Policy) TimeoutOr(def time.Duration) time.Duration {
	if p.Timeout > 0 {
		return time.Duration(p.Timeout)
	}
	return def
}
