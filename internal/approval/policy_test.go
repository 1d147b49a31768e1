package approval

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func TestWords(t *testing.T) {
	for in, want := range map[string][]string{
		"delete all targets": {"delete", "all", "targets"},
		"getFile":            {"get", "file"},
		"HTTPServer_start":   {"http", "server", "start"},
		"read-text.file2":    {"read", "text", "file", "2"},
		"GITHUB_TOKEN":       {"github", "token"},
		"":                   nil,
		"__":                 nil,
		"Ünïcode wörds":      {"ünïcode", "wörds"},
	} {
		if got := Words(in); !reflect.DeepEqual(got, want) {
			t.Errorf("Words(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGlobMatchesWholeNamesOnly(t *testing.T) {
	for _, tc := range []struct {
		pat, name string
		want      bool
	}{
		{"get", "get", true},
		{"get", "targets", false}, // no substring matching
		{"get", "get_file", false},
		{"get*", "get_file", true},
		{"get*", "targets", false},
		{"*_file", "read_file", true},
		{"*", "", true},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"/data/*", "/data/x/y", true},
		{`a\*`, "a*", true},
		{`a\*`, "ab", false},
		{"*a*b", "xaxxb", true},
		{"*a*b", "xaxxbc", false},
	} {
		if got := Glob(tc.pat, tc.name); got != tc.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tc.pat, tc.name, got, tc.want)
		}
	}
}

func bp(b bool) *bool { return &b }

func TestClassify(t *testing.T) {
	pol, err := ParsePolicy([]byte(`{
		"rules": [
			{"tool": "write_file", "args": {"path": {"under": "/data/scratch"}}, "class": "green"},
			{"tool": "run", "args": {"command": {"any_word": ["get"]}}, "class": "green"},
			{"tool": "search_*", "args": {"*": {"any_word": ["password"]}}, "class": "red"},
			{"tool": "wipe", "args": {"confirm": {"equals": true}}, "class": "red"},
			{"tool": "wipe", "args": {"confirm": {"absent": true}}, "class": "green"},
			{"tool": "pay", "args": {"amount": {"equals": 9007199254740993}}, "class": "green"},
			{"tool": "pay", "args": {"amount": {"glob": "1000"}}, "class": "green"},
			{"tool": "pay", "args": {"to": {"equals": {"id": 12, "tags": [1.5, "x"]}}}, "class": "green"}
		]}`))
	if err != nil {
		t.Fatal(err)
	}
	pol.TrustHints = true // see TestHintsUntrustedByDefault for the default
	for _, tc := range []struct {
		name string
		call Call
		want Class
	}{
		// The prototype's bug: "delete all targets" contains "get".
		{"delete all targets as a tool name", Call{Tool: "delete all targets"}, Red},
		{"delete all targets as a command", Call{Tool: "run", Arguments: map[string]any{"command": "delete all targets"}}, Red},
		{"get as a whole word in a command", Call{Tool: "run", Arguments: map[string]any{"command": "git get status"}}, Green},
		{"targets_delete", Call{Tool: "targets_delete"}, Red},
		{"get then delete", Call{Tool: "get_and_delete"}, Red},
		{"getAndDelete camel case", Call{Tool: "getAndDelete"}, Red},
		{"forget is not get", Call{Tool: "forget_everything"}, Red},
		{"budget is not get", Call{Tool: "budget"}, Red},
		{"get_file by verb", Call{Tool: "get_file"}, Green},
		{"listFiles by verb", Call{Tool: "listFiles"}, Green},
		{"unknown", Call{Tool: "frobnicate"}, Red},
		{"empty name", Call{Tool: ""}, Red},
		{"fetch is open world", Call{Tool: "fetch"}, Red},
		{"readOnlyHint wins over a scary name", Call{Tool: "delete_preview", Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}}, Green},
		{"annotations present but not read-only", Call{Tool: "get_thing", Annotations: &mcp.ToolAnnotations{}}, Red},
		{"additive closed world", Call{Tool: "add_note", Annotations: &mcp.ToolAnnotations{DestructiveHint: bp(false), OpenWorldHint: bp(false)}}, Green},
		{"additive open world", Call{Tool: "add_note", Annotations: &mcp.ToolAnnotations{DestructiveHint: bp(false)}}, Red},
		{"destructive", Call{Tool: "get_x", Annotations: &mcp.ToolAnnotations{DestructiveHint: bp(true), OpenWorldHint: bp(false)}}, Red},
		{"rule: write under scratch", Call{Tool: "write_file", Arguments: map[string]any{"path": "/data/scratch/a.txt"}}, Green},
		{"rule: dot-dot escapes scratch", Call{Tool: "write_file", Arguments: map[string]any{"path": "/data/scratch/../../etc/passwd"}}, Red},
		{"rule: sibling prefix is not under", Call{Tool: "write_file", Arguments: map[string]any{"path": "/data/scratchpad/a"}}, Red},
		{"rule: relative path is not under", Call{Tool: "write_file", Arguments: map[string]any{"path": "scratch/a"}}, Red},
		{"rule: any argument, nested", Call{Tool: "search_files", Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}, Arguments: map[string]any{"q": []any{"x", map[string]any{"k": "my Password here"}}}}, Red},
		{"rule: any argument, word inside a word", Call{Tool: "search_files", Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}, Arguments: map[string]any{"q": "passwords"}}, Green},
		{"rule: equals true", Call{Tool: "wipe", Arguments: map[string]any{"confirm": true}}, Red},
		{"rule: absent", Call{Tool: "wipe", Arguments: map[string]any{}}, Green},
		{"rule: present but false falls through", Call{Tool: "wipe", Arguments: map[string]any{"confirm": false}}, Red},
		// Numbers compare by exact value: 2^53 is not 2^53+1 (float64
		// cannot tell them apart), and a respelled number is the same one.
		{"rule: equals 2^53+1 exactly", Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number("9007199254740993")}}, Green},
		{"rule: equals 2^53+1, respelled", Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number("9.007199254740993e15")}}, Green},
		{"rule: 2^53 is not 2^53+1", Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number("9007199254740992")}}, Red},
		{"rule: glob over a respelled number", Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number("1e3")}}, Green},
		{"rule: glob over 1000.0", Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number("1000.0")}}, Green},
		{"rule: glob over 1001", Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number("1001")}}, Red},
		{"rule: equals a nested object", Call{Tool: "pay", Arguments: map[string]any{"to": map[string]any{"tags": []any{json.Number("15e-1"), "x"}, "id": json.Number("12.0")}}}, Green},
		{"rule: nested object differs", Call{Tool: "pay", Arguments: map[string]any{"to": map[string]any{"tags": []any{json.Number("1.5"), "x"}, "id": json.Number("13")}}}, Red},
		{"rule: a number is not its string", Call{Tool: "pay", Arguments: map[string]any{"amount": "9007199254740993"}}, Red},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := pol.Classify(tc.call)
			if v.Class != tc.want {
				t.Errorf("Classify(%+v) = %s (%s), want %s", tc.call, v.Class, v.Reason, tc.want)
			}
			if v.Reason == "" {
				t.Error("verdict without a reason")
			}
		})
	}
}

// TestHintsUntrustedByDefault: a server's hints (annotations, name verbs)
// can make a call red but never green unless its config trusts them;
// rules always apply.
func TestHintsUntrustedByDefault(t *testing.T) {
	pol, err := ParsePolicy([]byte(`{"rules":[{"tool":"list_*","class":"green"},{"tool":"get_secret","class":"red"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	ro := &mcp.ToolAnnotations{ReadOnlyHint: true}
	closed := &mcp.ToolAnnotations{DestructiveHint: bp(false), OpenWorldHint: bp(false)}
	for _, tc := range []struct {
		name             string
		call             Call
		untrusted, trust Class
	}{
		{"readOnlyHint on a destructive tool", Call{Tool: "wipe_disk", Annotations: ro}, Red, Green},
		{"not destructive, closed world", Call{Tool: "add_note", Annotations: closed}, Red, Green},
		{"read verb", Call{Tool: "get_x"}, Red, Green},
		{"camel-case read verb (the rule list_* is a glob: no match)", Call{Tool: "listFiles"}, Red, Green},
		{"destructiveHint", Call{Tool: "get_x", Annotations: &mcp.ToolAnnotations{DestructiveHint: bp(true), OpenWorldHint: bp(false)}}, Red, Red},
		{"openWorldHint", Call{Tool: "get_x", Annotations: &mcp.ToolAnnotations{DestructiveHint: bp(false), OpenWorldHint: bp(true)}}, Red, Red},
		{"delete all targets", Call{Tool: "delete all targets"}, Red, Red},
		{"write verb", Call{Tool: "get_and_delete"}, Red, Red},
		{"unknown", Call{Tool: "frobnicate"}, Red, Red},
		{"rule green beats hints", Call{Tool: "list_files", Annotations: &mcp.ToolAnnotations{DestructiveHint: bp(true)}}, Green, Green},
		{"rule red beats readOnlyHint", Call{Tool: "get_secret", Annotations: ro}, Red, Red},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pol
			for _, trust := range []bool{false, true} {
				p.TrustHints = trust
				want := tc.untrusted
				if trust {
					want = tc.trust
				}
				if v := p.Classify(tc.call); v.Class != want || v.Reason == "" {
					t.Errorf("trust_hints=%v: Classify(%+v) = %s (%s), want %s", trust, tc.call, v.Class, v.Reason, want)
				}
			}
		})
	}
}

func TestParsePolicyErrors(t *testing.T) {
	for in, want := range map[string]string{
		`{"rules":[{"tool":"x","class":"blue"}]}`:                                          `class: "blue"`,
		`{"rules":[{"class":"green"}]}`:                                                    "tool: must be",
		`{"rules":[{"tool":"x","class":"green","args":{"a":{}}}]}`:                         "args.a: matcher tests nothing",
		`{"rules":[{"tool":"x","class":"green","args":{"a":{"regex":"("}}}]}`:              "args.a: regex",
		`{"rules":[{"tool":"x","class":"green","args":{"a":{"under":"rel"}}}]}`:            "not an absolute path",
		`{"rules":[{"tool":"x","class":"green","args":{"a":{"any_word":["two words"]}}}]}`: "not a single word",
		`{"rules":[{"tool":"x","class":"green","extra":1}]}`:                               `unknown field "extra"`,
		`{"timeout":"-1s"}`: "must be positive",
		`{"timeout":5}`:     "duration",
		`{"rules":[{"tool":"x\\","class":"green"}]}`: "dangling",
		`{} {}`: "trailing",
	} {
		_, err := ParsePolicy([]byte(in))
		if err == nil || !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePolicy(%s) = %v, want an ErrPolicy mentioning %q", in, err, want)
		}
	}
	p, err := ParsePolicy([]byte(`{"timeout":"90s"}`))
	if err != nil || p.TimeoutOr(0).Seconds() != 90 {
		t.Fatalf("timeout: %v %v", p.Timeout, err)
	}
	b, _ := json.Marshal(p)
	if !strings.Contains(string(b), `"1m30s"`) {
		t.Errorf("marshal: %s", b)
	}
}

func TestRedactor(t *testing.T) {
	r := NewRedactor("sk-live-123456", "abc", "")
	in := json.RawMessage(`{"path":"/x","apiKey":"k","nested":{"GITHUB_TOKEN":"t","monkey":"banana","note":"use sk-live-123456 now"},"list":["Bearer sk-live-123456"],"key":"s3/object","password":"p"}`)
	var got map[string]any
	if err := json.Unmarshal(r.JSON(in), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"path": "/x", "apiKey": Redacted, "key": "s3/object", "password": Redacted,
		"nested": map[string]any{"GITHUB_TOKEN": Redacted, "monkey": "banana", "note": "use " + Redacted + " now"},
		"list":   []any{"Bearer " + Redacted},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("redacted:\n got %v\nwant %v", got, want)
	}
	// Short configured values are not hunted inside other strings.
	if s := r.String("abcdef"); s != "abcdef" {
		t.Errorf("short secret redacted inside a word: %q", s)
	}
	if s := string(r.JSON(json.RawMessage(`{bad`))); strings.Contains(s, "bad") {
		t.Errorf("invalid JSON passed through: %s", s)
	}
	for k, want := range map[string]bool{"Authorization": true, "x-api-key": true, "client_secret": true, "monkey": false, "keyboard": false, "tokenizer": false, "path": false} {
		if SecretKey(k) != want {
			t.Errorf("SecretKey(%q) = %v, want %v", k, !want, want)
		}
	}
}

// TestUncompiledPolicyIsRed: a policy built in code and never compiled
// used to match anything with a regex or any_word matcher (they had no
// compiled form to test against). Classify now holds every call until
// Compile has run.
func TestUncompiledPolicyIsRed(t *testing.T) {
	for name, m := range map[string]Matcher{
		"regex":    {Regex: "safe"},
		"any_word": {AnyWord: []string{"safe"}},
	} {
		p := Policy{Rules: []Rule{{Tool: "run", Args: map[string]Matcher{"cmd": m}, Class: Green}}, TrustHints: true}
		c := Call{Tool: "run", Arguments: map[string]any{"cmd": "rm -rf /"}}
		if v := p.Classify(c); v.Class != Red || !strings.Contains(v.Reason, "not compiled") {
			t.Errorf("%s: uncompiled policy classified %s (%s)", name, v.Class, v.Reason)
		}
		if err := p.Compile(); err != nil {
			t.Fatal(err)
		}
		if v := p.Classify(c); v.Class != Red || strings.Contains(v.Reason, "not compiled") {
			t.Errorf("%s: compiled policy: %s (%s)", name, v.Class, v.Reason)
		}
		if v := p.Classify(Call{Tool: "run", Arguments: map[string]any{"cmd": "safe"}}); v.Class != Green {
			t.Errorf("%s: compiled policy did not match: %s (%s)", name, v.Class, v.Reason)
		}
	}
}
