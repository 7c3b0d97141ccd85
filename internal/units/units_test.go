package units

import (
	"strings"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    Size
		wantErr bool
	}{
		{"0", 0, false},
		{"4096", 4096, false},
		{"25MB", 25_000_000, false},
		{"25mb", 25_000_000, false},
		{" 64 KiB ", 64 << 10, false},
		{"1GiB", 1 << 30, false},
		{"50MiB", 50 << 20, false},
		{"10K", 10_000, false},
		{"12B", 12, false},
		{"", 0, true},
		{"MB", 0, true},
		{"-1MB", 0, true},
		{"1.5MB", 0, true},
		{"25 parsecs", 0, true},
		{"9999999999GiB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSizeString(t *testing.T) {
	for _, s := range []Size{0, 1, 1000, 1 << 10, 3 << 20, 5 << 30} {
		back, err := ParseSize(s.String())
		if err != nil || back != s {
			t.Errorf("round trip of %d via %q gave %d, %v", s, s.String(), back, err)
		}
	}
}

func TestDuration(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1h30m")); err != nil || d.D() != 90*time.Minute {
		t.Fatalf("got %v, %v", d, err)
	}
	for _, bad := range []string{"5", "5x", "-3s", ""} {
		if err := d.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("UnmarshalText(%q) succeeded", bad)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"25MB", "1GiB", "0", "-1", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err == nil && v < 0 {
			t.Fatalf("ParseSize(%q) = %d, negative", s, v)
		}
	})
}

// TestTOMLNumbers decodes through go-toml, as the config does: a bare number
// is bytes for a Size but has no unit for a Duration, and a negative number
// is no size at all.
func TestTOMLNumbers(t *testing.T) {
	type limits struct {
		Size Size     `toml:"size"`
		Wait Duration `toml:"wait"`
	}
	for _, tc := range []struct {
		doc     string
		want    limits
		wantErr string
	}{
		{doc: `size = 4096`, want: limits{Size: 4096}},
		{doc: `size = "25MB"`, want: limits{Size: 25_000_000}},
		{doc: `wait = "720h"`, want: limits{Wait: DurationOf(720 * time.Hour)}},
		{doc: `wait = 30`, wantErr: `needs a unit`},
		{doc: `wait = 1.5`, wantErr: `needs a unit`},
		{doc: `wait = -2`, wantErr: `needs a unit`},
		{doc: `wait = true`, wantErr: `invalid duration`},
		{doc: `size = "-5"`, wantErr: `invalid size`},
	} {
		var got limits
		err := toml.Unmarshal([]byte(tc.doc), &got)
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: err %v, want %q", tc.doc, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || got != tc.want):
			t.Errorf("%s: got %+v, %v; want %+v", tc.doc, got, err, tc.want)
		}
	}
}
