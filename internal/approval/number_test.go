package approval

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

func TestCanonicalNumber(t *testing.T) {
	for in, want := range map[string]string{
		"1000": "1000", "1e3": "1000", "1E+3": "1000", "10e2": "1000", "1000.0": "1000", "100000e-2": "1000",
		"0": "0", "-0": "0", "0.0": "0", "0e10": "0", "-0.000": "0",
		"0.50": "0.5", "5e-2": "0.05", "-12.5": "-12.5", "123.456e1": "1234.56",
		"9007199254740993": "9007199254740993",
		"1e30":             "1e30", "1e29": "100000000000000000000000000000",
		"1e400": "1e400", "1.5e40": "1.5e40", "-25e-40": "-2.5e-39", "1e-30": "0.000000000000000000000000000001", "1e-31": "1e-31",
		"123456789012345678901234567890123": "1.23456789012345678901234567890123e32",
		// JSON bounds neither an exponent's digits nor its leading zeros.
		"1e0000000000000003": "1000", "1E+00000000000000000000000003": "1000", "25e-0000000000000000001": "2.5",
		"1e000": "1", "-0e-99999999999999999999": "0",
		"1e1234567890123456": "1e1234567890123456", "-12e-99999999999999999999": "-1.2e-99999999999999999998",
		"1e99999999999999999999999999": "1e99999999999999999999999999",
	} {
		got, ok := canonicalNumber(in)
		if !ok || got != want {
			t.Errorf("canonicalNumber(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"", "-", "01", "1.", ".5", "+1", "1e", "1e+", "0x10", "1_000", "NaN", "Infinity", "1e+-3", "1e-+3", "1e--3", "1ee3", "1e3.5", "--1", "1.2.3"} {
		if got, ok := canonicalNumber(bad); ok {
			t.Errorf("canonicalNumber(%q) = %q, want not a number", bad, got)
		}
	}
}

func TestUnmarshalExact(t *testing.T) {
	var v map[string]any
	if err := UnmarshalExact([]byte(`{"n":9007199254740993,"big":1e400}`), &v); err != nil {
		t.Fatal(err)
	}
	if v["n"] != json.Number("9007199254740993") || v["big"] != json.Number("1e400") {
		t.Errorf("UnmarshalExact = %#v, want the numbers as written", v)
	}
	if err := UnmarshalExact([]byte(`{} {}`), &v); err == nil {
		t.Error("UnmarshalExact accepted data after the value")
	}
}

// TestCardAndAuditKeepNumbers: what an approver reads and what the audit
// log keeps are the numbers the tool receives.
func TestCardAndAuditKeepNumbers(t *testing.T) {
	raw := json.RawMessage(`{"amount":9007199254740993,"huge":1e400}`)
	red := NewRedactor()
	if got := string(red.JSON(raw)); got != string(raw) {
		t.Errorf("Redactor.JSON = %s, want %s", got, raw)
	}
	text := Card{Kind: CardArguments, Title: "t", Arguments: raw}.Render()
	if !strings.Contains(text, "9007199254740993") || !strings.Contains(text, "1e400") {
		t.Errorf("card text lost the numbers:\n%s", text)
	}
}

// FuzzCanonicalNumber: the canonical spelling is a fixed point, keeps the
// value, and never panics.
func FuzzCanonicalNumber(f *testing.F) {
	for _, s := range []string{"1000", "1e3", "-0.50", "9007199254740993", "1e400", "1.5e-40", "01", "1e99999", "1e0000000000000003", "1e-99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := canonicalNumber(s)
		if !ok {
			return
		}
		if again, ok := canonicalNumber(c); !ok || again != c {
			t.Fatalf("canonicalNumber(%q) = %q, whose own is %q, %v", s, c, again, ok)
		}
		a, errA := strconv.ParseFloat(s, 64)
		b, errB := strconv.ParseFloat(c, 64)
		if errA == nil && errB == nil && a != b {
			t.Fatalf("canonicalNumber(%q) = %q changes the value (%v vs %v)", s, c, a, b)
		}
	})
}

// TestRespelledNumberMeetsRule: no spelling of a number JSON allows steps
// around a rule over it. A red rule over large amounts holds for 1000
// written with a long exponent, which a tool reads as 1000.
func TestRespelledNumberMeetsRule(t *testing.T) {
	pol, err := ParsePolicy([]byte(`{"rules": [
		{"tool": "pay", "args": {"amount": {"regex": "^[0-9]{4,}$"}}, "class": "red"},
		{"tool": "pay", "args": {"amount": {"equals": 1e400}}, "class": "red"},
		{"tool": "pay", "class": "green"}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, amount := range []string{"1000", "1e3", "1e0000000000000003", "1E+000000000000000000000003", "10000e-0000000000000000000000001",
		"1e400", "1e0000000000000000400", "10e399"} {
		call := Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number(amount)}}
		if v := pol.Classify(call); v.Class != Red {
			t.Errorf("amount %s: %s (%s), want red", amount, v.Class, v.Reason)
		}
	}
	if v := pol.Classify(Call{Tool: "pay", Arguments: map[string]any{"amount": json.Number("999")}}); v.Class != Green {
		t.Errorf("amount 999: %s (%s), want green", v.Class, v.Reason)
	}
}
