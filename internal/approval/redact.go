package approval

import (
	"encoding/json"
	"sort"
	"strings"
)

// Redacted replaces a secret wherever IronClaw prints or stores arguments.
const Redacted = "[REDACTED]"

// Redactor hides secrets in tool arguments before they are logged, stored in
// the audit log or shown on a card: values under secret-looking keys
// (password, token, api_key, Authorization, ...: matched on word tokens, so
// "monkey" is not "key") and any occurrence of a known secret value (the
// env and header values of the gateway's configuration).
type Redactor struct {
	values []string // longest first, so overlapping secrets are fully hidden
}

// minSecretLen is the shortest configured value treated as a secret to
// hide inside other strings; shorter ones ("1", "on") would shred output.
const minSecretLen = 4

// NewRedactor returns a Redactor that also hides each of values.
func NewRedactor(values ...string) *Redactor {
	r := &Redactor{}
	seen := map[string]bool{}
	for _, v := range values {
		if len(v) >= minSecretLen && !seen[v] {
			seen[v] = true
			r.values = append(r.values, v)
		}
	}
	sort.Slice(r.values, func(i, j int) bool { return len(r.values[i]) > len(r.values[j]) })
	return r
}

// String hides known secret values inside s.
func (r *Redactor) String(s string) string {
	if r == nil {
		return s
	}
	for _, v := range r.values {
		if strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, Redacted)
		}
	}
	return s
}

// Value returns a copy of v (decoded JSON) with secrets hidden.
func (r *Redactor) Value(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			if SecretKey(k) {
				out[k] = Redacted
				continue
			}
			out[k] = r.Value(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = r.Value(e)
		}
		return out
	case string:
		return r.String(x)
	}
	return v
}

// JSON returns raw with secrets hidden. Input that is not valid JSON is
// replaced by a JSON string saying so, never passed through.
func (r *Redactor) JSON(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return json.RawMessage("{}")
	}
	var v any
	if err := UnmarshalExact(raw, &v); err != nil {
		b, _ := json.Marshal("[invalid JSON arguments, not recorded]")
		return b
	}
	b, err := json.Marshal(r.Value(v))
	if err != nil {
		b, _ = json.Marshal("[unencodable arguments, not recorded]")
	}
	return b
}

var secretWords = wordSet("password", "passwd", "passphrase", "pwd", "secret", "secrets", "token", "tokens",
	"apikey", "authorization", "auth", "credential", "credentials", "cookie", "cookies", "bearer", "jwt",
	"privatekey", "otp", "totp", "sessionkey")

// secretPairs are adjacent word pairs that name a secret ("api key").
var secretPairs = map[[2]string]bool{
	{"api", "key"}: true, {"private", "key"}: true, {"access", "key"}: true, {"secret", "key"}: true,
	{"client", "secret"}: true, {"session", "key"}: true, {"signing", "key"}: true, {"encryption", "key"}: true,
}

// SecretKey reports whether a JSON key, env variable or header name names a
// secret, by word tokens: "GITHUB_TOKEN", "apiKey", "x-api-key" and
// "Authorization" do; "monkey", "keyboard" and "path" do not.
func SecretKey(name string) bool {
	ws := Words(name)
	if _, ok := hasWord(ws, secretWords); ok {
		return true
	}
	for i := 0; i+1 < len(ws); i++ {
		if secretPairs[[2]string{ws[i], ws[i+1]}] {
			return true
		}
	}
	return false
}
