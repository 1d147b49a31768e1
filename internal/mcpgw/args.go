package mcpgw

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/ironclaw/ironclaw/internal/approval"
)

// argSpec is what the gateway knows of a tool's arguments: the top-level
// property names its input schema declares, and whether it accepts only
// those.
type argSpec struct {
	props map[string]bool
	// exact refuses any key that is not a declared property. It is set for
	// the gateway's own tools, whose handlers decode with encoding/json.
	exact bool
}

// newArgSpec reads the declared properties from a tool's input schema
// (a *jsonschema.Schema, or whatever a server sent).
func newArgSpec(schema any, exact bool) (argSpec, error) {
	spec := argSpec{props: map[string]bool{}, exact: exact}
	b, err := json.Marshal(schema)
	if err != nil {
		return spec, fmt.Errorf("input schema: %w", err)
	}
	var s struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return spec, fmt.Errorf("input schema: %w", err)
	}
	for p := range s.Properties {
		spec.props[p] = true
	}
	return spec, nil
}

// maxArgDepth bounds the nesting of a call's arguments.
const maxArgDepth = 128

// parseArgs decodes a tools/call's arguments once, for the classifier, the
// card and the tool alike, so that what is classified is what runs:
//
//   - absent or JSON null is no arguments; anything else must be one JSON
//     object, with no key repeated at any depth (decoders disagree on which
//     copy wins);
//   - a key that is not a declared property but equals one under Unicode
//     case folding ("Mounts", "ALLOW", "mountſ") is refused: encoding/json
//     and other decoders match such keys to the property, while the
//     classifier, matching names exactly, would see the property as absent;
//   - with spec.exact, every key must be a declared property, exactly.
//
// It returns the arguments as the classifier sees them and their canonical
// encoding (the same map, re-encoded), which is what the gateway's own
// tools receive.
func parseArgs(raw json.RawMessage, spec argSpec) (map[string]any, json.RawMessage, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || string(trimmed) == "null" {
		return map[string]any{}, json.RawMessage(`{}`), nil
	}
	if trimmed[0] != '{' {
		return nil, nil, errors.New("arguments must be a JSON object")
	}
	if err := checkKeys(trimmed); err != nil {
		return nil, nil, err
	}
	// Numbers stay as written (json.Number): rules, cards and the audit
	// log see, and a builtin receives, what the client sent.
	var args map[string]any
	if err := approval.UnmarshalExact(trimmed, &args); err != nil || args == nil {
		return nil, nil, errors.New("arguments must be a JSON object")
	}
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if spec.props[k] {
			continue
		}
		if spec.exact {
			return nil, nil, fmt.Errorf("argument %q: unknown (known: %s)", k, strings.Join(sortedSet(spec.props), ", "))
		}
		for p := range spec.props {
			if strings.EqualFold(k, p) {
				return nil, nil, fmt.Errorf("argument %q: differs from the declared %q only in case; use the exact name", k, p)
			}
		}
	}
	canon, err := json.Marshal(args)
	if err != nil {
		return nil, nil, fmt.Errorf("re-encode arguments: %w", err)
	}
	return args, canon, nil
}

// checkKeys rejects JSON in which any object repeats a key, that nests
// deeper than maxArgDepth, or that has data after the value.
func checkKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(depth int) error
	walk = func(depth int) error {
		if depth > maxArgDepth {
			return fmt.Errorf("arguments nest deeper than %d levels", maxArgDepth)
		}
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("arguments are not valid JSON: %v", err)
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return fmt.Errorf("arguments are not valid JSON: %v", err)
				}
				k, _ := kt.(string)
				if seen[k] {
					return fmt.Errorf("argument key %q appears twice in one object", k)
				}
				seen[k] = true
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		case '[':
			for dec.More() {
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return fmt.Errorf("arguments are not valid JSON: %v", err)
		}
		return nil
	}
	if err := walk(1); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("arguments: trailing data after the JSON object")
	}
	return nil
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
