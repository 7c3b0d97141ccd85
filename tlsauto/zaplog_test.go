package tlsauto

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestZapLogger logs the way certmagic does and reads back the slog JSON.
func TestZapLogger(t *testing.T) {
	var buf bytes.Buffer
	zl := newZapLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))

	zl.Named("maintenance").With(zap.String("cache", "0x1")).Error("renewing managed certificates",
		zap.Error(errors.New("boom")),
		zap.Strings("identifiers", []string{"mx.example.com"}),
		zap.Duration("remaining", 90*time.Second),
		zap.Int("attempt", 3))
	zl.Debug("not shown at Info")
	zl.Warn("warned")
	zl.Info("informed")
	zl.DPanic("above error") // zap.New is not in development mode: no panic

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), buf.String())
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"level": "ERROR", "msg": "renewing managed certificates", "certmagic": "maintenance", "cache": "0x1",
		"error": "boom", "identifiers": []any{"mx.example.com"}, "remaining": float64(90 * time.Second), "attempt": float64(3),
	}
	for k, v := range want {
		got, _ := json.Marshal(first[k])
		exp, _ := json.Marshal(v)
		if !bytes.Equal(got, exp) {
			t.Errorf("%s = %s, want %s", k, got, exp)
		}
	}
	for i, level := range []string{"WARN", "INFO", "ERROR"} {
		if !strings.Contains(lines[i+1], `"level":"`+level+`"`) {
			t.Errorf("line %d: %s, want level %s", i+1, lines[i+1], level)
		}
	}
}
