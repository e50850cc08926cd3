package cdccache

// The conformance vectors (readers/spec.md section 12): key rendering
// (tests/vectors/keys.json, shared with the daemon), version text and data
// key naming (readers/vectors/). No Redis.

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// repoFile is a file of the repository, from this package's directory
// (readers/go/cdccache).
func repoFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", path))
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return data
}

// typedValue turns a key vector's JSON value into the Go value an
// application holding a column of that type passes.
func typedValue(t *testing.T, kind string, raw json.RawMessage) any {
	t.Helper()
	var text string
	isString := json.Unmarshal(raw, &text) == nil
	number := string(raw)
	switch kind {
	case "integer":
		if isString {
			return Integer(text)
		}
		if n, err := strconv.ParseInt(number, 10, 64); err == nil {
			return n
		}
		n, ok := new(big.Int).SetString(number, 10)
		if !ok {
			t.Fatalf("integer vector %s", raw)
		}
		return n
	case "float64":
		f, err := strconv.ParseFloat(number, 64)
		if err != nil {
			t.Fatalf("float64 vector %s: %v", raw, err)
		}
		return f
	case "float32":
		f, err := strconv.ParseFloat(number, 32)
		if err != nil {
			t.Fatalf("float32 vector %s: %v", raw, err)
		}
		return float32(f)
	case "decimal":
		return Decimal(text)
	case "boolean":
		return string(raw) == "true"
	case "date":
		days, _ := strconv.ParseInt(number, 10, 64)
		return Date(time.Unix(days*86400, 0).UTC())
	case "time":
		us, _ := strconv.ParseInt(number, 10, 64)
		return TimeOfDay(time.Duration(us) * time.Microsecond)
	case "timestamp":
		us, _ := strconv.ParseInt(number, 10, 64)
		return Timestamp(time.UnixMicro(us).UTC())
	case "timestamptz":
		at, err := time.Parse(time.RFC3339Nano, text)
		if err != nil {
			t.Fatalf("timestamptz vector %s: %v", raw, err)
		}
		return Timestamptz(at)
	case "uuid":
		return UUID(text)
	case "text":
		return text
	}
	t.Fatalf("unknown vector type %q", kind)
	return nil
}

func TestKeyVectors(t *testing.T) {
	var file struct {
		Vectors []struct {
			Type string          `json:"type"`
			Name string          `json:"name"`
			JSON json.RawMessage `json:"json"`
			Text string          `json:"text"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(repoFile(t, "tests/vectors/keys.json"), &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) < 20 {
		t.Fatalf("only %d key vectors", len(file.Vectors))
	}
	for _, v := range file.Vectors {
		value := typedValue(t, v.Type, v.JSON)
		got, ok, err := RenderValue(value)
		if err != nil || !ok || got != v.Text {
			t.Errorf("%s (%s %s): rendered %q, %v, %v; want %q", v.Name, v.Type, v.JSON, got, ok, err, v.Text)
		}
		// Through a template too, as an application renders keys.
		key, ok, err := Key("t:{c}", map[string]any{"c": value})
		if err != nil || !ok || key != "t:"+v.Text {
			t.Errorf("%s: template rendered %q, %v, %v", v.Name, key, ok, err)
		}
	}
}

func TestVersionVectors(t *testing.T) {
	var file struct {
		Vectors []struct {
			Name   string  `json:"name"`
			Field  string  `json:"field"`
			Text   *string `json:"text"`
			Value  *string `json:"value"`
			Absent bool    `json:"absent"`
			Error  string  `json:"error"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(repoFile(t, "readers/vectors/versions.json"), &file); err != nil {
		t.Fatal(err)
	}
	for _, v := range file.Vectors {
		got, present, err := ParseVersion("ver:x", v.Field, v.Text)
		switch {
		case v.Error != "":
			var e *Error
			if !errors.Is(err, ErrBadVersion) || !errors.As(err, &e) || string(e.Kind) != v.Error || e.Record != "ver:x" {
				t.Errorf("%s: got %d, %v; want %s", v.Name, got, err, v.Error)
			}
		case v.Absent:
			if err != nil || present {
				t.Errorf("%s: got %d, %v, %v; want absent", v.Name, got, present, err)
			}
		default:
			// A missing v or e is 0.
			if err != nil || strconv.FormatUint(got, 10) != *v.Value {
				t.Errorf("%s: got %d, %v; want %s", v.Name, got, err, *v.Value)
			}
		}
	}
}

func TestDataKeyVectors(t *testing.T) {
	var file struct {
		Vectors []struct {
			Name       string                       `json:"name"`
			Prefix     string                       `json:"prefix"`
			Key        string                       `json:"key"`
			Deps       []string                     `json:"deps"`
			Namespaces []string                     `json:"namespaces"`
			NowUs      string                       `json:"now_us"`
			Fields     map[string]map[string]string `json:"fields"`
			Records    []string                     `json:"records"`
			DataKey    string                       `json:"data_key"`
			LeaseKey   string                       `json:"lease_key"`
			StaleKey   *string                      `json:"stale_key"`
			StaleAgeUs string                       `json:"stale_age_us"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(repoFile(t, "readers/vectors/data_keys.json"), &file); err != nil {
		t.Fatal(err)
	}
	for _, v := range file.Vectors {
		layout, err := NewLayout(v.Prefix, v.Key, v.Deps, v.Namespaces)
		if err != nil {
			t.Errorf("%s: %v", v.Name, err)
			continue
		}
		if !equalStrings(layout.Records, v.Records) {
			t.Errorf("%s: records %q, want %q", v.Name, layout.Records, v.Records)
		}
		field := func(record, name string) *string {
			if text, ok := v.Fields[record][name]; ok {
				return &text
			}
			return nil
		}
		epoch, _, err := ParseVersion(layout.Records[0], "e", field(layout.Records[0], "e"))
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		var fields []Fields
		var versions []uint64
		for _, record := range layout.Records[1:] {
			var f Fields
			f.V, _, err = ParseVersion(record, "v", field(record, "v"))
			if err == nil {
				f.PV, f.HasPV, err = ParseVersion(record, "pv", field(record, "pv"))
			}
			if err != nil {
				t.Fatalf("%s: %v", v.Name, err)
			}
			fields = append(fields, f)
			versions = append(versions, f.V)
		}
		dataKey := layout.DataKey(epoch, versions)
		if dataKey != v.DataKey || LeaseKey(dataKey) != v.LeaseKey {
			t.Errorf("%s: data key %q, lease key %q; want %q, %q", v.Name, dataKey, LeaseKey(dataKey), v.DataKey, v.LeaseKey)
		}
		now, _ := strconv.ParseUint(v.NowUs, 10, 64)
		stale, age, ok := layout.StaleKey(epoch, fields, now)
		switch {
		case v.StaleKey == nil && ok:
			t.Errorf("%s: stale key %q, want none", v.Name, stale)
		case v.StaleKey != nil && (!ok || stale != *v.StaleKey || strconv.FormatUint(age, 10) != v.StaleAgeUs):
			t.Errorf("%s: stale key %q (%v) aged %d; want %q aged %s", v.Name, stale, ok, age, *v.StaleKey, v.StaleAgeUs)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The scripts embedded in this package are the ones every library loads.
func TestLuaScriptsAreReadersLua(t *testing.T) {
	for _, name := range []string{"read.lua", "release.lua"} {
		shared := repoFile(t, filepath.Join("readers", "lua", name))
		embedded, err := scripts.ReadFile("lua/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(shared, embedded) {
			t.Errorf("readers/go/cdccache/lua/%s differs from readers/lua/%s: copy it (cp readers/lua/%s readers/go/cdccache/lua/)", name, name, name)
		}
	}
}

func TestTemplates(t *testing.T) {
	cases := []struct {
		template string
		values   map[string]any
		want     string
		ok       bool
	}{
		{"category:{id}:products", map[string]any{"id": 3}, "category:3:products", true},
		{"{{tag}}:{id}", map[string]any{"id": "a"}, "{tag}:a", true},
		{"pair:{a}:{b}", map[string]any{"a": "1", "b": "2:3"}, "pair:1:2%3A3", true},
		{"pair:{a}:{b}", map[string]any{"a": "1:2", "b": "3"}, "pair:1%3A2:3", true},
		{"c:{p}", map[string]any{"p": nil}, "", false},
		{"größe:{ id }", map[string]any{"id": int64(1)}, "größe:1", true},
		{"f:{x}", map[string]any{"x": math.Inf(-1)}, "f:-Infinity", true},
		{"f:{x}", map[string]any{"x": math.NaN()}, "f:NaN", true},
		{"f:{x}", map[string]any{"x": Integer("-000")}, "f:0", true},
		{"f:{x}", map[string]any{"x": Integer("+0012")}, "", false}, // refused below
		{"u:{x}", map[string]any{"x": UUID("F47AC10B-58CC-4372-A567-0E02B2C3D479")}, "u:f47ac10b-58cc-4372-a567-0e02b2c3d479", true},
		{"u:{x}", map[string]any{"x": UUIDBytes{0xf4, 0x7a, 0xc1, 0x0b, 0x58, 0xcc, 0x43, 0x72, 0xa5, 0x67, 0x0e, 0x02, 0xb2, 0xc3, 0xd4, 0x79}}, "u:f47ac10b-58cc-4372-a567-0e02b2c3d479", true},
		{"d:{x}", map[string]any{"x": Date(time.Date(1969, 12, 31, 23, 0, 0, 0, time.FixedZone("x", 3600)))}, "d:-1", true},
		{"t:{x}", map[string]any{"x": Timestamptz(time.Date(2024, 2, 18, 17, 0, 0, 0, time.FixedZone("cet", 3600)))}, "t:2024-02-18T16%3A00%3A00.000000Z", true},
		{"m:{x}", map[string]any{"x": uint64(math.MaxUint64)}, "m:18446744073709551615", true},
	}
	for _, c := range cases {
		got, ok, err := Key(c.template, c.values)
		if c.template == "f:{x}" && c.values["x"] == Integer("+0012") {
			if !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("Integer(+0012): %q, %v", got, err)
			}
			continue
		}
		if err != nil || ok != c.ok || got != c.want {
			t.Errorf("%s with %v: %q, %v, %v; want %q, %v", c.template, c.values, got, ok, err, c.want, c.ok)
		}
	}
}

func TestDecimalsRenderAsToPlainString(t *testing.T) {
	cases := map[string]string{
		"1E+3": "1000", "1.5E-2": "0.015", "12.50": "12.50", "-0.05": "-0.05",
		"1e3": "1000", "+5": "5", "1.50E+2": "150", "+007.5": "7.5", "1e0000000001": "10", "007.5": "7.5", ".5": "0.5", "5.": "5",
		"-0": "0", "-0.00": "0.00", "0E+3": "0", "1.50E+1": "15.0", "-1.5E-5": "-0.000015",
		"12345678901234567890123456789012345678901234.5": "12345678901234567890123456789012345678901234.5",
	}
	for in, want := range cases {
		got, _, err := RenderValue(Decimal(in))
		if err != nil || got != want {
			t.Errorf("Decimal(%q): %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-", ".", "1e", "1e+", "abc", "1.2.3", "1e5.0", " 1", "0x10", "NaN", "1,5", "--1", "1E+99999", "1E+99999999999", "1e99999999999999999999"} {
		if got, _, err := RenderValue(Decimal(bad)); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("Decimal(%q): %q, %v; want invalid_options", bad, got, err)
		}
	}
}

func TestValuesWithoutOneTextAreRefused(t *testing.T) {
	for _, v := range []any{time.Now(), json.Number("12"), struct{}{}, []int{1}, complex(1, 2)} {
		if _, _, err := RenderValue(v); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%T: %v; want invalid_options", v, err)
		}
	}
	for _, template := range []string{"p:{id", "p:{}", "p:}", "p:{a{b}"} {
		if _, err := ParseTemplate(template); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("template %q: %v", template, err)
		}
	}
	if _, _, err := Key("p:{id}", map[string]any{}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("missing column: %v", err)
	}
}

func TestRefusedLayouts(t *testing.T) {
	cases := []struct {
		key       string
		deps, nss []string
		why       string
	}{
		{"", nil, nil, "empty key"},
		{"epoch", nil, nil, "reserved key"},
		{"ns:product", nil, nil, "reserved key"},
		{"k", []string{}, nil, "empty deps"},
		{"k", []string{""}, nil, "empty dependency"},
		{"k", []string{"ns:product"}, nil, "reserved dependency"},
		{"k", []string{"epoch"}, nil, "reserved dependency"},
		{"k", nil, []string{""}, "empty namespace"},
	}
	for _, c := range cases {
		if _, err := NewLayout("ver:", c.key, c.deps, c.nss); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: %v", c.why, err)
		}
	}
}
