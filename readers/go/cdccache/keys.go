package cdccache

// Cache keys rendered exactly as the daemon renders its templates
// (docs/key-rendering.md; the daemon's code is src/graph/template.rs, the
// vectors tests/vectors/keys.json). A reader that renders product:{id}
// differently from the daemon reads a version record nobody bumps.

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// Typed values for the SQL types whose canonical text a Go type alone
// cannot decide. Plain Go values render as: int and uint types as decimal
// digits; *big.Int exactly; float64 as a double precision column; float32
// as a real column; bool as true/false; string as text (escaped); nil (or
// a nil *big.Int) as SQL NULL, which names no key.
type (
	// Decimal is a numeric/decimal column's value as text, in any notation
	// BigDecimal accepts ("12.50", "1E+3", "-.5"); it renders as Java's
	// BigDecimal.toPlainString, scale kept: "1E+3" is "1000", "1.5E-2" is
	// "0.015", "12.50" stays "12.50".
	Decimal string
	// Integer is an integer column's value as decimal digits with an
	// optional sign, exact at any size ("18446744073709551616").
	Integer string
	// Date is a date column (days since 1970-01-01 of its year, month and day).
	Date time.Time
	// TimeOfDay is a time column: the time since midnight, rendered in
	// microseconds.
	TimeOfDay time.Duration
	// Timestamp is a timestamp (without time zone) column: its wall clock
	// read as UTC, rendered in microseconds since the epoch.
	Timestamp time.Time
	// Timestamptz is a timestamptz column: the instant in UTC as
	// YYYY-MM-DDTHH:MM:SS.ffffffZ, escaped as text.
	Timestamptz time.Time
	// UUID is a uuid column as text, in any letter case; rendered lowercase.
	UUID string
	// UUIDBytes is a uuid column as its 16 bytes.
	UUIDBytes [16]byte
)

// PostgreSQL numeric's own range, the daemon's bounds too: no column holds
// more, and a text such as 1E+999999999 must not become a gigabyte of zeros.
const (
	maxDecimalScale         = 16383
	maxDecimalIntegerDigits = 131072
)

// RenderValue is one value's canonical text. ok is false for SQL NULL: a
// template with a NULL value names no key. A Go type whose canonical text
// would be a guess (a time.Time, a json.Number, a struct) is refused with
// ErrInvalidOptions, as is an integer or decimal text that is not one.
func RenderValue(value any) (text string, ok bool, err error) {
	switch v := value.(type) {
	case nil:
		return "", false, nil
	case int:
		return strconv.FormatInt(int64(v), 10), true, nil
	case int8:
		return strconv.FormatInt(int64(v), 10), true, nil
	case int16:
		return strconv.FormatInt(int64(v), 10), true, nil
	case int32:
		return strconv.FormatInt(int64(v), 10), true, nil
	case int64:
		return strconv.FormatInt(v, 10), true, nil
	case uint:
		return strconv.FormatUint(uint64(v), 10), true, nil
	case uint8:
		return strconv.FormatUint(uint64(v), 10), true, nil
	case uint16:
		return strconv.FormatUint(uint64(v), 10), true, nil
	case uint32:
		return strconv.FormatUint(uint64(v), 10), true, nil
	case uint64:
		return strconv.FormatUint(v, 10), true, nil
	case *big.Int:
		if v == nil {
			return "", false, nil
		}
		return v.String(), true, nil
	case Integer:
		text, ok := canonicalInteger(string(v))
		if !ok {
			return "", false, invalidf("Integer %q is not an integer (decimal digits with an optional sign)", string(v))
		}
		return text, true, nil
	case float64:
		return floatText(v, 64), true, nil
	case float32:
		return floatText(float64(v), 32), true, nil
	case Decimal:
		text, err := plainDecimal(string(v))
		if err != nil {
			return "", false, err
		}
		return text, true, nil
	case bool:
		return strconv.FormatBool(v), true, nil
	case string:
		return Escape(v), true, nil
	case Date:
		t := time.Time(v)
		day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return strconv.FormatInt(floorDiv(day.Unix(), 86400), 10), true, nil
	case TimeOfDay:
		return strconv.FormatInt(time.Duration(v).Microseconds(), 10), true, nil
	case Timestamp:
		t := time.Time(v)
		wall := time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
		return strconv.FormatInt(wall.UnixMicro(), 10), true, nil
	case Timestamptz:
		return Escape(time.Time(v).UTC().Format("2006-01-02T15:04:05.000000Z")), true, nil
	case UUID:
		return Escape(strings.ToLower(string(v))), true, nil
	case UUIDBytes:
		b := v[:]
		return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), true, nil
	case time.Time:
		return "", false, invalidf("a time.Time has no single key text: pass Date, Timestamp or Timestamptz (the column's type decides)")
	case json.Number:
		return "", false, invalidf("json.Number %q has no single key text: pass Integer, Decimal or float64 (the column's type decides)", string(v))
	default:
		return "", false, invalidf("a %T has no key text (docs/key-rendering.md lists the types)", value)
	}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// canonicalInteger: digits without leading zeros, "-" for negatives, "-0"
// as "0" (the daemon's canonical_number for an integer literal).
func canonicalInteger(text string) (string, bool) {
	negative := strings.HasPrefix(text, "-")
	digits := strings.TrimPrefix(text, "-")
	if digits == "" || strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return "", false
	}
	digits = strings.TrimLeft(digits, "0")
	switch {
	case digits == "":
		return "0", true
	case negative:
		return "-" + digits, true
	default:
		return digits, true
	}
}

// floatText: the shortest decimal digits that round-trip the value at its
// width, plain notation, integral values without a fraction, -0 as 0, and
// the special values as Java spells them (Debezium's, so the daemon's).
func floatText(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		return "0"
	}
	return strconv.FormatFloat(f, 'f', -1, bits)
}

// plainDecimal renders decimal text as Java's BigDecimal.toPlainString:
// the unscaled digits and the scale of new BigDecimal(text), in plain
// notation. That is the text Debezium sends in decimal.handling.mode=string,
// so the text the daemon renders.
func plainDecimal(text string) (string, error) {
	bad := func() (string, error) {
		return "", invalidf("Decimal %q is not a decimal number", text)
	}
	s := text
	negative := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		negative = s[0] == '-'
		s = s[1:]
	}
	mantissa, exponent := s, ""
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mantissa, exponent = s[:i], s[i+1:]
	}
	whole, fraction := mantissa, ""
	if i := strings.IndexByte(mantissa, '.'); i >= 0 {
		whole, fraction = mantissa[:i], mantissa[i+1:]
	}
	isDigits := func(d string) bool {
		return strings.IndexFunc(d, func(r rune) bool { return r < '0' || r > '9' }) < 0
	}
	if whole+fraction == "" || !isDigits(whole) || !isDigits(fraction) {
		return bad()
	}
	exp := int64(0)
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		digits := strings.TrimPrefix(strings.TrimPrefix(exponent, "+"), "-")
		if digits == "" || !isDigits(digits) {
			return bad()
		}
		n, err := strconv.ParseInt(exponent, 10, 64)
		if err != nil {
			// Beyond int64 is beyond numeric's range as well.
			return "", invalidf("Decimal %q is beyond PostgreSQL numeric's range", text)
		}
		exp = n
	}
	unscaled := strings.TrimLeft(whole+fraction, "0")
	scale := int64(len(fraction)) - exp
	if scale > maxDecimalScale || scale < -maxDecimalScale || int64(len(unscaled))-scale > maxDecimalIntegerDigits {
		return "", invalidf("Decimal %q is beyond PostgreSQL numeric's range (scale within ±%d, %d integer digits)", text, maxDecimalScale, maxDecimalIntegerDigits)
	}
	if unscaled == "" {
		// Zero has no sign; a negative scale prints as "0" (toPlainString).
		if scale <= 0 {
			return "0", nil
		}
		return "0." + strings.Repeat("0", int(scale)), nil
	}
	sign := ""
	if negative {
		sign = "-"
	}
	if scale <= 0 {
		return sign + unscaled + strings.Repeat("0", int(-scale)), nil
	}
	if int64(len(unscaled)) <= scale {
		unscaled = strings.Repeat("0", int(scale)-len(unscaled)+1) + unscaled
	}
	point := len(unscaled) - int(scale)
	return sign + unscaled[:point] + "." + unscaled[point:], nil
}

// Escape percent-escapes text where it could be mistaken for key structure:
// '%', ':', '{', '}' and the control characters U+0000 to U+001F and U+007F,
// each as %XX. Everything else, non-ASCII included, is kept.
func Escape(text string) string {
	reserved := func(c byte) bool {
		return c == '%' || c == ':' || c == '{' || c == '}' || c < 0x20 || c == 0x7f
	}
	i := 0
	for i < len(text) && !reserved(text[i]) {
		i++
	}
	if i == len(text) {
		return text
	}
	var b strings.Builder
	b.Grow(len(text) + 8)
	b.WriteString(text[:i])
	for ; i < len(text); i++ {
		// Reserved characters are all ASCII; the bytes of a multi-byte
		// UTF-8 character are all >= 0x80, so a byte-wise scan is exact.
		if c := text[i]; reserved(c) {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

type templatePart struct {
	literal string
	column  string // empty for a literal
}

// Template is a key template such as "category:{category_id}:products";
// "{{" and "}}" are literal braces, and a column name is trimmed of spaces.
type Template struct {
	text  string
	parts []templatePart
}

// ParseTemplate parses a template as the daemon does.
func ParseTemplate(text string) (*Template, error) {
	fail := func(at int, what string) (*Template, error) {
		return nil, invalidf("template %q: %s at byte %d", text, what, at)
	}
	var parts []templatePart
	var literal strings.Builder
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case c == '{' && i+1 < len(text) && text[i+1] == '{':
			literal.WriteByte('{')
			i++
		case c == '}' && i+1 < len(text) && text[i+1] == '}':
			literal.WriteByte('}')
			i++
		case c == '{':
			end := strings.IndexAny(text[i+1:], "{}")
			if end < 0 || text[i+1+end] == '{' {
				return fail(i, "unclosed '{'")
			}
			column := strings.TrimSpace(text[i+1 : i+1+end])
			if column == "" {
				return fail(i, "empty '{}'")
			}
			if literal.Len() > 0 {
				parts = append(parts, templatePart{literal: literal.String()})
				literal.Reset()
			}
			parts = append(parts, templatePart{column: column})
			i += end + 1
		case c == '}':
			return fail(i, "unmatched '}' (write '}}' for a literal brace)")
		default:
			literal.WriteByte(c)
		}
	}
	if literal.Len() > 0 {
		parts = append(parts, templatePart{literal: literal.String()})
	}
	return &Template{text: text, parts: parts}, nil
}

// MustParseTemplate is ParseTemplate for templates fixed in code; it panics
// on a malformed one.
func MustParseTemplate(text string) *Template {
	t, err := ParseTemplate(text)
	if err != nil {
		panic(err)
	}
	return t
}

func (t *Template) String() string { return t.text }

// Render renders the template with the named values. ok is false when a
// value is NULL: the template names no key, as in the daemon.
func (t *Template) Render(values map[string]any) (key string, ok bool, err error) {
	var b strings.Builder
	b.Grow(len(t.text) + 16)
	for _, part := range t.parts {
		if part.column == "" {
			b.WriteString(part.literal)
			continue
		}
		value, present := values[part.column]
		if !present {
			return "", false, invalidf("template %q: no value for column %q", t.text, part.column)
		}
		text, ok, err := RenderValue(value)
		if err != nil {
			return "", false, fmt.Errorf("template %q, column %q: %w", t.text, part.column, err)
		}
		if !ok {
			return "", false, nil
		}
		b.WriteString(text)
	}
	return b.String(), true, nil
}

// Key parses and renders in one call:
// Key("product:{id}", map[string]any{"id": 42}) is "product:42".
func Key(template string, values map[string]any) (key string, ok bool, err error) {
	t, err := ParseTemplate(template)
	if err != nil {
		return "", false, err
	}
	return t.Render(values)
}
