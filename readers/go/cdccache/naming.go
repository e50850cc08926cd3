package cdccache

// Records, data keys, lease keys and stale keys (readers/spec.md sections 2,
// 3 and 6). Pure functions: the conformance vectors in readers/vectors/ test
// them without Redis.

import (
	"strconv"
	"strings"
)

// maxVersion is 2^63-1: Redis's own integer range, the most HINCRBY reaches.
const maxVersion = uint64(1<<63 - 1)

// ParseVersion parses a version field's text (section 3). present is false
// when the field is missing (text nil): the caller decides what that means,
// 0 for v and e, no previous version for pv. Any text other than canonical
// decimal digits from 0 to 2^63-1 is ErrBadVersion.
func ParseVersion(record, field string, text *string) (version uint64, present bool, err error) {
	if text == nil {
		return 0, false, nil
	}
	t := *text
	canonical := t != "" && len(t) <= 19 && (t == "0" || t[0] != '0')
	for i := 0; canonical && i < len(t); i++ {
		canonical = t[i] >= '0' && t[i] <= '9'
	}
	if !canonical {
		return 0, false, badVersion(record, field, t)
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v > maxVersion {
		return 0, false, badVersion(record, field, t)
	}
	return v, true, nil
}

// Fields are one version record's fields as read: v (a missing v is 0) and
// pv (HasPV false when the record has none).
type Fields struct {
	V     uint64
	PV    uint64
	HasPV bool
}

// Layout is what one get reads and names: the cache key, and the version
// records read, in order: the epoch, the deps, the namespaces.
type Layout struct {
	Key     string
	Records []string
	// Deps is how many of Records[1:] are deps (the rest are namespaces).
	Deps int
}

// NewLayout names the records of a get of key with its deps (nil: the
// default, [key]) and namespaces under prefix. Refused (ErrInvalidOptions):
// an empty key, a reserved key or dependency ("epoch", "ns:..."), an empty
// deps list, an empty dependency or namespace name.
func NewLayout(prefix, key string, deps []string, namespaces []string) (*Layout, error) {
	if key == "" {
		return nil, invalidf("the cache key is empty")
	}
	if reserved(key) {
		return nil, invalidf("cache key %q is reserved (the daemon's epoch and namespace records)", key)
	}
	if deps == nil {
		deps = []string{key}
	} else if len(deps) == 0 {
		return nil, invalidf("key %q: deps is empty (a value that depends on no record is never invalidated; leave Deps out to mean [%q])", key, key)
	}
	records := make([]string, 0, 1+len(deps)+len(namespaces))
	records = append(records, prefix+"epoch")
	for _, dep := range deps {
		if dep == "" {
			return nil, invalidf("key %q: an empty dependency name", key)
		}
		if reserved(dep) {
			return nil, invalidf("key %q: dependency %q is reserved (the epoch and namespace records)", key, dep)
		}
		records = append(records, prefix+dep)
	}
	for _, ns := range namespaces {
		if ns == "" {
			return nil, invalidf("key %q: an empty namespace name", key)
		}
		records = append(records, prefix+"ns:"+ns)
	}
	return &Layout{Key: key, Records: records, Deps: len(deps)}, nil
}

func reserved(key string) bool { return key == "epoch" || strings.HasPrefix(key, "ns:") }

// DataKey is K@e<epoch>:v<..>...:n<..>...; versions are the v of each
// record after the epoch, in the layout's order.
func (l *Layout) DataKey(epoch uint64, versions []uint64) string {
	var b strings.Builder
	b.Grow(len(l.Key) + 21*(1+len(versions)))
	b.WriteString(l.Key)
	b.WriteString("@e")
	b.WriteString(strconv.FormatUint(epoch, 10))
	for i, v := range versions {
		if i < l.Deps {
			b.WriteString(":v")
		} else {
			b.WriteString(":n")
		}
		b.WriteString(strconv.FormatUint(v, 10))
	}
	return b.String()
}

// StaleKey is the previous version's data key and the age in µs of the last
// bump at nowUs (section 6); ok is false when there is none: the highest
// version is the epoch's, ties with another record's or is 0, or its record
// has no pv.
func (l *Layout) StaleKey(epoch uint64, fields []Fields, nowUs uint64) (key string, ageUs uint64, ok bool) {
	highest, index, ties := uint64(0), -1, false
	for i, f := range fields {
		switch {
		case f.V > highest:
			highest, index, ties = f.V, i, false
		case f.V == highest && index >= 0:
			ties = true
		}
	}
	if index < 0 || highest == 0 || epoch >= highest || ties || !fields[index].HasPV {
		// Two records bumped to the same version: which one moved last is
		// unknown, so no key can be named as "the one before".
		return "", 0, false
	}
	versions := make([]uint64, len(fields))
	for i, f := range fields {
		versions[i] = f.V
	}
	versions[index] = fields[index].PV
	if nowUs > highest {
		ageUs = nowUs - highest
	}
	return l.DataKey(epoch, versions), ageUs, true
}

// LeaseKey is the lease of a data key: the data key followed by ":lease".
func LeaseKey(dataKey string) string { return dataKey + ":lease" }
