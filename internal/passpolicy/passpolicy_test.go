package passpolicy

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	const addr = "alice@example.com"
	for _, tc := range []struct {
		pw   string
		ok   bool
		says string
	}{
		{"short", false, "at least 10"},
		{"          x", false, "at least 10"},
		{"aaaaaaaaaa", false, "guessed"},
		{"0000000000", false, "guessed"},
		{"password12", false, "guessed"},
		{"qwertyuiop", false, "guessed"},
		{"iloveyou2024", false, "guessed"},
		{"alice@example.com", false, "address itself"},
		{"ALICE@EXAMPLE.COM", false, "address itself"},
		{"alicealice", false, ""},
		{"example.com2024", false, "guessed"},
		{"correct horse battery staple", true, ""},
		{"kx7-Mauve-Otter-19", true, ""},
		{"gqkzmvwpxrtlbhcd", true, ""},
	} {
		err := Check(tc.pw, addr)
		if tc.ok {
			if err != nil {
				t.Errorf("Check(%q) = %v, want accepted", tc.pw, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrWeak) {
			t.Errorf("Check(%q) = %v, want a refusal", tc.pw, err)
		} else if !strings.Contains(err.Error(), tc.says) {
			t.Errorf("Check(%q) = %v, want it to say %q", tc.pw, err, tc.says)
		}
	}
}
