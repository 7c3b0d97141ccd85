// Package confkit holds what every table of postie.toml does alike:
// collecting what is wrong with a table, each problem naming its key, and
// telling which keys differ between the running config and a reloaded one.
// Each part keeps its own rules (smtpin's limits in smtpin, the spool's in
// spool); confkit only gives them one shape.
package confkit

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Problems collects what is wrong with one table. The zero value is not
// usable: make it with Check.
type Problems struct {
	table string
	errs  []error
}

// Check starts collecting the problems of a table ("smtp", "pop3"; "" for
// the top level, whose keys have no prefix).
func Check(table string) *Problems { return &Problems{table: table} }

// Key returns the dotted name of a key of the table.
func (p *Problems) Key(key string) string {
	if p.table == "" {
		return key
	}
	return p.table + "." + key
}

// Addf records a problem with key.
func (p *Problems) Addf(key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", p.Key(key), fmt.Sprintf(format, args...)))
}

// AtLeast records a problem when v is below min; unit follows the minimum
// in the message (" bytes", "").
func (p *Problems) AtLeast(key string, v, min int64, unit string) {
	if v < min {
		p.Addf(key, "%d is too small: at least %d%s", v, min, unit)
	}
}

// AtMost records a problem when v is above max.
func (p *Problems) AtMost(key string, v, max int64, unit string) {
	if v > max {
		p.Addf(key, "%d is too large: at most %d%s", v, max, unit)
	}
}

// Positive records a problem when d is not more than zero.
func (p *Problems) Positive(key string, d time.Duration) {
	if d <= 0 {
		p.Addf(key, "must be more than 0, e.g. \"30s\"")
	}
}

// Join adds the problems err holds (from another check) as they are.
func (p *Problems) Join(err error) {
	if err != nil {
		p.errs = append(p.errs, err)
	}
}

// Err returns every problem recorded, or nil.
func (p *Problems) Err() error { return errors.Join(p.errs...) }

// Changed lists the keys whose values differ between old and next, two
// values of the same struct type, as dotted names under prefix (the
// table's name; "" for the top level). Fields are named by their toml tag;
// fields tagged "-" (copied in from elsewhere) and untagged fields are not
// compared. A field whose type is itself a table (a struct with toml tags)
// is compared key by key; any other value as a whole.
func Changed(prefix string, old, next any) []string {
	a, b := reflect.ValueOf(old), reflect.ValueOf(next)
	if a.Type() != b.Type() {
		panic(fmt.Sprintf("confkit.Changed: %s and %s differ", a.Type(), b.Type()))
	}
	var out []string
	changed(prefix, a, b, &out)
	return out
}

func changed(prefix string, a, b reflect.Value, out *[]string) {
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		if isTable(f.Type) {
			changed(key, a.Field(i), b.Field(i), out)
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			*out = append(*out, key)
		}
	}
}

// isTable reports whether t is a struct with TOML keys of its own.
func isTable(t reflect.Type) bool {
	if t.Kind() != reflect.Struct {
		return false
	}
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); name != "" && name != "-" {
			return true
		}
	}
	return false
}

// Report is what a part says about a reload: the keys of its own that
// changed, and those of them that take effect only after a restart.
type Report struct {
	Changed []string
	Restart []string
}

// NewReport builds a Report from the changed keys and the keys (or whole
// tables, by their name) that need a restart.
func NewReport(changed []string, restartKeys ...string) Report {
	r := Report{Changed: changed}
	for _, k := range changed {
		for _, rk := range restartKeys {
			if k == rk || strings.HasPrefix(k, rk+".") {
				r.Restart = append(r.Restart, k)
				break
			}
		}
	}
	return r
}

// Merge combines the reports of several parts.
func Merge(reports ...Report) Report {
	var r Report
	for _, x := range reports {
		r.Changed = append(r.Changed, x.Changed...)
		r.Restart = append(r.Restart, x.Restart...)
	}
	slices.Sort(r.Changed)
	slices.Sort(r.Restart)
	r.Changed = slices.Compact(r.Changed)
	r.Restart = slices.Compact(r.Restart)
	return r
}

// Applied returns the changed keys that took effect without a restart.
func (r Report) Applied() []string {
	var out []string
	for _, k := range r.Changed {
		if !slices.Contains(r.Restart, k) {
			out = append(out, k)
		}
	}
	return out
}
