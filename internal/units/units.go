// Package units holds the value types that Postie's configuration uses for
// sizes and durations, so that every package spells a limit the same way in
// TOML:
//
//	max_message_size = "25MB"    # or a plain number of bytes: 26214400
//	read_timeout     = "5m"      # a Go duration
package units

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Size is a number of bytes. In TOML it is written either as an integer
// (bytes) or as a string with a unit: "512", "64KB", "25MB", "1GB", or the
// binary forms "64KiB", "25MiB", "1GiB". KB, MB and GB are powers of 1000;
// KiB, MiB and GiB powers of 1024.
type Size int64

var sizeUnits = []struct {
	suffix string
	factor int64
}{
	// Longest suffixes first, so "KiB" is not read as "B".
	{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"K", 1000}, {"M", 1000 * 1000}, {"G", 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize parses a size such as "25MB", "64KiB" or "4096".
func ParseSize(s string) (Size, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	factor := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			factor = u.factor
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes, optionally with a unit (KB, MB, GB, KiB, MiB, GiB), e.g. \"25MB\"", s)
	}
	if n > (1<<62)/factor {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(n * factor), nil
}

// UnmarshalText implements encoding.TextUnmarshaler for TOML strings.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// String formats the size with the largest binary unit that divides it.
func (s Size) String() string {
	switch {
	case s != 0 && s%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", s>>30)
	case s != 0 && s%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", s>>20)
	case s != 0 && s%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", s>>10)
	}
	return strconv.FormatInt(int64(s), 10)
}

// Bytes returns the size as an int64.
func (s Size) Bytes() int64 { return int64(s) }

// Duration is a time.Duration written in TOML as a Go duration string:
// "30s", "5m", "1h30m", "720h". It is a struct, not an integer type, so that
// a bare TOML number (device_idle = 30) reaches UnmarshalText and is refused
// for its missing unit instead of being taken as nanoseconds.
type Duration struct{ d time.Duration }

// DurationOf returns d as a Duration.
func DurationOf(d time.Duration) Duration { return Duration{d} }

// UnmarshalText implements encoding.TextUnmarshaler. TOML strings and bare
// numbers both arrive here; a number has no unit and is refused.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if n := strings.ReplaceAll(s, "_", ""); n != "" {
		if _, err := strconv.ParseFloat(n, 64); err == nil {
			return fmt.Errorf("invalid duration %s: a duration needs a unit and quotes, e.g. \"%ss\" for seconds or \"%sh\" for hours", s, n, n)
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: want a Go duration such as \"30s\", \"5m\" or \"720h\"", string(b))
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", string(b))
	}
	d.d = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.d.String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return d.d }

// String formats the duration as Go does.
func (d Duration) String() string { return d.d.String() }
