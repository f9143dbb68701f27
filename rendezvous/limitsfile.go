package rendezvous

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"
)

// ParseLimits reads Limits from a JSON object whose keys are the Limits
// field names in kebab case ("key-rate", "max-mailbox", "relay-idle"):
// numbers for counts and rates, strings like "120s" for durations. A key
// left out keeps its default. Unknown keys, values of the wrong type and
// limits that Limits would refuse are errors that name the key; nothing is
// half applied.
func ParseLimits(data []byte) (Limits, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return Limits{}, fmt.Errorf("rendezvous: limits: want a JSON object: %w", err)
	}
	var l Limits
	v := reflect.ValueOf(&l).Elem()
	fields := limitFields()
	for key, msg := range raw {
		i, ok := fields[key]
		if !ok {
			names := make([]string, 0, len(fields))
			for n := range fields {
				names = append(names, n)
			}
			slices.Sort(names)
			return Limits{}, fmt.Errorf("rendezvous: limits: unknown key %q (known: %s)", key, strings.Join(names, ", "))
		}
		f := v.Field(i)
		if err := setLimit(f, msg); err != nil {
			return Limits{}, fmt.Errorf("rendezvous: limits: %s: %w", key, err)
		}
	}
	if err := l.validate(); err != nil {
		return Limits{}, err
	}
	return l, nil
}

var durationType = reflect.TypeFor[time.Duration]()

func setLimit(f reflect.Value, msg json.RawMessage) error {
	if f.Type() == durationType {
		var s string
		if err := json.Unmarshal(msg, &s); err != nil {
			return fmt.Errorf("want a duration string such as \"120s\", got %s", msg)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("want a duration such as \"120s\": %w", err)
		}
		if d < 0 {
			return fmt.Errorf("duration %s is negative", s)
		}
		f.SetInt(int64(d))
		return nil
	}
	switch f.Kind() {
	case reflect.Int, reflect.Int64:
		var n json.Number
		if err := json.Unmarshal(msg, &n); err != nil {
			return fmt.Errorf("want a whole number, got %s", msg)
		}
		i, err := n.Int64()
		if err != nil || f.OverflowInt(i) {
			return fmt.Errorf("want a whole number, got %s", msg)
		}
		if i < 0 {
			return fmt.Errorf("%d is negative", i)
		}
		f.SetInt(i)
	case reflect.Float64:
		var x float64
		if err := json.Unmarshal(msg, &x); err != nil {
			return fmt.Errorf("want a number, got %s", msg)
		}
		if x < 0 {
			return fmt.Errorf("%v is negative", x)
		}
		f.SetFloat(x)
	default:
		return fmt.Errorf("not settable from a file (type %s)", f.Type())
	}
	return nil
}

// limitFields maps the kebab-case names of Limits' fields to their index.
func limitFields() map[string]int {
	t := reflect.TypeFor[Limits]()
	out := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		if f := t.Field(i); f.IsExported() {
			out[kebab(f.Name)] = i
		}
	}
	return out
}

// kebab turns a Go field name into kebab case: MaxRelaySessions →
// max-relay-sessions (a run of capitals is one word: MaxTTL → max-ttl).
func kebab(name string) string {
	var b strings.Builder
	rs := []rune(name)
	for i, r := range rs {
		if unicode.IsUpper(r) {
			if i > 0 && (unicode.IsLower(rs[i-1]) || (i+1 < len(rs) && unicode.IsLower(rs[i+1]))) {
				b.WriteByte('-')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// LimitNames returns the keys ParseLimits accepts, sorted.
func LimitNames() []string {
	fields := limitFields()
	out := make([]string, 0, len(fields))
	for n := range fields {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
