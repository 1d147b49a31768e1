package approval

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/big"
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
// equal number shares: "1e3", "1000.0", "1e0003" and "1000" are all
// "1000", "0.50" is "0.5". Numbers of up to 30 digits either side of the
// point are written out in full; others as D.DDDe±N, whatever the size of
// the exponent. It reports false for a string that is not a JSON number,
// and only then: a rule that could not read a number would not apply to
// it, and a client could step around the rule by respelling the number.
func canonicalNumber(s string) (string, bool) {
	neg, digits, bigExp, ok := parseNumber(s)
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
	mant := digits[:1]
	if len(digits) > 1 {
		mant += "." + digits[1:]
	}
	n := int64(len(digits))
	if !bigExp.IsInt64() || bigExp.Int64() > 1<<40 || bigExp.Int64() < -1<<40 {
		// Far beyond 30 digits either side of the point.
		return sign + mant + "e" + new(big.Int).Add(bigExp, big.NewInt(n-1)).String(), true
	}
	exp := bigExp.Int64()
	switch {
	case exp >= 0 && n+exp <= 30:
		return sign + digits + strings.Repeat("0", int(exp)), true
	case exp < 0 && -exp < n:
		point := n + exp
		return sign + digits[:point] + "." + digits[point:], true
	case exp < 0 && -exp-n < 30:
		return sign + "0." + strings.Repeat("0", int(-exp-n)) + digits, true
	}
	return sign + mant + "e" + strconv.FormatInt(exp+n-1, 10), true
}

// parseNumber splits the JSON number s into its sign, its significant
// digits without leading or trailing zeros ("" for zero) and the power of
// ten they are scaled by, of any size (JSON bounds neither the digits of
// an exponent nor its leading zeros). It reports false for anything else.
func parseNumber(s string) (neg bool, digits string, exp *big.Int, ok bool) {
	if strings.HasPrefix(s, "-") {
		neg, s = true, s[1:]
	}
	mant, e, hasExp := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, hasPoint := strings.Cut(mant, ".")
	if intPart == "" || !allDigits(intPart) || (len(intPart) > 1 && intPart[0] == '0') ||
		(hasPoint && (frac == "" || !allDigits(frac))) {
		return false, "", nil, false
	}
	exp = new(big.Int)
	if hasExp {
		expNeg := false
		if e != "" && (e[0] == '+' || e[0] == '-') {
			expNeg, e = e[0] == '-', e[1:]
		}
		if e == "" || !allDigits(e) {
			return false, "", nil, false
		}
		if e = strings.TrimLeft(e, "0"); e != "" {
			if _, ok := exp.SetString(e, 10); !ok {
				return false, "", nil, false
			}
			if expNeg {
				exp.Neg(exp)
			}
		}
	}
	digits = strings.TrimLeft(intPart+frac, "0")
	trimmed := strings.TrimRight(digits, "0")
	if trimmed == "" {
		return false, "", exp.SetInt64(0), true
	}
	exp.Add(exp, big.NewInt(int64(len(digits)-len(trimmed))-int64(len(frac))))
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
