package grammar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// jval is a parsed JSON value that keeps object keys in document order (the
// order properties are generated in).
type jval struct {
	kind  byte // '{' object, '[' array, 's' string, 'n' number, 'b' boolean, 'z' null
	keys  []string
	vals  []*jval // object values, parallel to keys
	items []*jval // array elements
	str   string
	num   string // the number as written
	b     bool
}

func (v *jval) get(key string) *jval {
	for i, k := range v.keys {
		if k == key {
			return v.vals[i]
		}
	}
	return nil
}

const maxJSONDepth = 512

// parseJSON parses one JSON value; duplicate object keys are an error unless
// allowDup.
func parseJSON(data []byte, allowDup bool) (*jval, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseValue(dec, 0, allowDup)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the schema")
	}
	return v, nil
}

func parseValue(dec *json.Decoder, depth int, allowDup bool) (*jval, error) {
	if depth > maxJSONDepth {
		return nil, errors.New("schema nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			v := &jval{kind: '{'}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k := kt.(string)
				if !allowDup && v.get(k) != nil {
					return nil, fmt.Errorf("duplicate key %q", k)
				}
				val, err := parseValue(dec, depth+1, allowDup)
				if err != nil {
					return nil, err
				}
				v.keys, v.vals = append(v.keys, k), append(v.vals, val)
			}
			_, err := dec.Token()
			return v, err
		case '[':
			v := &jval{kind: '['}
			for dec.More() {
				val, err := parseValue(dec, depth+1, allowDup)
				if err != nil {
					return nil, err
				}
				v.items = append(v.items, val)
			}
			_, err := dec.Token()
			return v, err
		}
	case string:
		return &jval{kind: 's', str: t}, nil
	case json.Number:
		return &jval{kind: 'n', num: t.String()}, nil
	case bool:
		return &jval{kind: 'b', b: t}, nil
	case nil:
		return &jval{kind: 'z'}, nil
	}
	return nil, fmt.Errorf("unexpected %v", tok)
}

// appendCompact appends the compact JSON encoding of v: no whitespace, keys in
// document order, strings with only the escapes JSON requires, numbers as
// written. It is the one form enum and const values are generated in.
func appendCompact(dst []byte, v *jval) []byte {
	switch v.kind {
	case '{':
		dst = append(dst, '{')
		for i, k := range v.keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendCompact(dst, v.vals[i])
		}
		return append(dst, '}')
	case '[':
		dst = append(dst, '[')
		for i, it := range v.items {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendCompact(dst, it)
		}
		return append(dst, ']')
	case 's':
		return appendString(dst, v.str)
	case 'n':
		return append(dst, v.num...)
	case 'b':
		return strconv.AppendBool(dst, v.b)
	}
	return append(dst, "null"...)
}

// appendString appends s as a JSON string: '"', '\\' and control characters
// escaped, everything else (valid UTF-8) as is.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				dst = append(dst, "\ufffd"...)
			} else {
				dst = append(dst, s[i:i+n]...)
			}
			i += n
			continue
		}
		switch {
		case c == '"':
			dst = append(dst, '\\', '"')
		case c == '\\':
			dst = append(dst, '\\', '\\')
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		default:
			dst = append(dst, c)
		}
		i++
	}
	return append(dst, '"')
}

// jsonEqual is equality of JSON values (numbers by value, objects regardless
// of key order).
func jsonEqual(a, b *jval) bool {
	if a.kind != b.kind {
		return false
	}
	switch a.kind {
	case '{':
		if len(a.keys) != len(b.keys) {
			return false
		}
		for i, k := range a.keys {
			bv := b.get(k)
			if bv == nil || !jsonEqual(a.vals[i], bv) {
				return false
			}
		}
		return true
	case '[':
		if len(a.items) != len(b.items) {
			return false
		}
		for i := range a.items {
			if !jsonEqual(a.items[i], b.items[i]) {
				return false
			}
		}
		return true
	case 's':
		return a.str == b.str
	case 'n':
		return decEqual(parseDecimal(a.num), parseDecimal(b.num))
	case 'b':
		return a.b == b.b
	}
	return true
}

// decimal is a JSON number as ±0.digits × 10^exp, digits without leading or
// trailing zeros (empty for zero).
type decimal struct {
	neg    bool
	digits string
	exp    int64
}

func parseDecimal(s string) decimal {
	var d decimal
	if strings.HasPrefix(s, "-") {
		d.neg, s = true, s[1:]
	}
	mant, expPart, _ := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := intPart + frac
	point := int64(len(intPart))
	for len(digits) > 0 && digits[0] == '0' {
		digits, point = digits[1:], point-1
	}
	digits = strings.TrimRight(digits, "0")
	if digits == "" {
		return decimal{}
	}
	var e int64
	if expPart != "" {
		neg := false
		switch expPart[0] {
		case '-':
			neg, expPart = true, expPart[1:]
		case '+':
			expPart = expPart[1:]
		}
		for _, c := range expPart {
			if e < 1<<40 {
				e = e*10 + int64(c-'0')
			}
		}
		if neg {
			e = -e
		}
	}
	d.digits, d.exp = digits, point+e
	return d
}

func decEqual(a, b decimal) bool {
	if a.digits == "" || b.digits == "" {
		return a.digits == b.digits
	}
	return a == b
}

// isInteger reports whether the JSON number s has an integral value (JSON
// Schema's "integer" accepts 1.0).
func isInteger(s string) bool {
	d := parseDecimal(s)
	return d.digits == "" || d.exp >= int64(len(d.digits))
}
