package approval

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
)

// UnmarshalExact is json.Unmarshal that keeps every number as the
// json.Number the client wrote instead of rounding it to a float64: 2^53+1
// stays 2^53+1 and 1e400 is a number, not an error. Tool arguments are
// decoded with it, so that rules, cards and the audit log see the values
// the tool receives.
func UnmarshalExact(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("invalid JSON: data after the value")
	}
	return nil
}

// canonicalNumber returns the one spelling of the JSON number s that every
// equal number shares: "1e3", "1000.0" and "1000" are all "1000", "0.50"
// is "0.5". Numbers of up to 30 digits either side of the point are
// written out in full; others as D.DDDe±N. It reports false for a string
// that is not a JSON number.
func canonicalNumber(s string) (string, bool) {
	neg, digits, exp, ok := parseNumber(s)
	if !ok {
		return "", false
	}
	if digits == "" {
		return "0", true
	}
	sign := ""
	if neg {
		sign = "-"
	}
	n := int64(len(digits))
	switch {
	case exp >= 0 && n+exp <= 30:
		return sign + digits + strings.Repeat("0", int(exp)), true
	case exp < 0 && -exp < n:
		point := n + exp
		return sign + digits[:point] + "." + digits[point:], true
	case exp < 0 && -exp-n < 30:
		return sign + "0." + strings.Repeat("0", int(-exp-n)) + digits, true
	}
	mant := digits[:1]
	if n > 1 {
		mant += "." + digits[1:]
	}
	return sign + mant + "e" + strconv.FormatInt(exp+n-1, 10), true
}

// parseNumber splits the JSON number s into its sign, its significant
// digits without leading or trailing zeros ("" for zero) and the power of
// ten they are scaled by. It reports false for anything else, and for an
// exponent beyond ±10^15.
func parseNumber(s string) (neg bool, digits string, exp int64, ok bool) {
	if strings.HasPrefix(s, "-") {
		neg, s = true, s[1:]
	}
	mant, e, hasExp := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, hasPoint := strings.Cut(mant, ".")
	if intPart == "" || !allDigits(intPart) || (len(intPart) > 1 && intPart[0] == '0') ||
		(hasPoint && (frac == "" || !allDigits(frac))) {
		return false, "", 0, false
	}
	if hasExp {
		e = strings.TrimPrefix(e, "+")
		if len(strings.TrimPrefix(e, "-")) == 0 || len(strings.TrimPrefix(e, "-")) > 15 || !allDigits(strings.TrimPrefix(e, "-")) {
			return false, "", 0, false
		}
		exp, _ = strconv.ParseInt(e, 10, 64)
	}
	digits = strings.TrimLeft(intPart+frac, "0")
	exp -= int64(len(frac))
	trimmed := strings.TrimRight(digits, "0")
	exp += int64(len(digits) - len(trimmed))
	if trimmed == "" {
		return false, "", 0, true
	}
	return neg, trimmed, exp, true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
