package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckFileModes(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "postie.toml")
	key := filepath.Join(dir, "key.pem")
	data := filepath.Join(dir, "data")
	os.WriteFile(cfgPath, nil, 0o600)
	os.WriteFile(key, nil, 0o600)
	os.Mkdir(data, 0o700)
	cfg := DefaultConfig()
	cfg.path, cfg.DataDir = cfgPath, data
	cfg.TLS.Mode, cfg.TLS.KeyFile = "files", key
	for _, tc := range []struct {
		name        string
		path        string
		mode        os.FileMode
		want, fix   string
		fatal, none bool
	}{
		{name: "all private", none: true},
		{"config group-writable", cfgPath, 0o620, "writable by group or others (mode 0620)", "chmod go-w " + cfgPath, false, false},
		{"config world-readable only", cfgPath, 0o644, "", "", false, true},
		{"key readable by others", key, 0o644, "readable by group or others", "chmod 600 " + key, false, false},
		{"key writable by others", key, 0o666, "writable by group or others", "chmod 600 " + key, true, false},
		{"data dir open", data, 0o755, "(mode 0755)", "chmod 700 " + data, false, false},
		{"data dir writable by others", data, 0o777, "writable by group or others", "chmod 700 " + data, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.path != "" {
				os.Chmod(tc.path, tc.mode)
				defer os.Chmod(tc.path, map[bool]os.FileMode{true: 0o700, false: 0o600}[tc.path == data])
			}
			got := checkFileModes(cfg)
			if tc.none {
				if len(got) != 0 {
					t.Fatalf("findings %v, want none", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("findings %v, want one", got)
			}
			f := got[0]
			if f.path != tc.path || !strings.Contains(f.problem, tc.want) || f.fix != tc.fix || f.fatal != tc.fatal {
				t.Errorf("finding %+v, want path %s, problem %q, fix %q, fatal %v", f, tc.path, tc.want, tc.fix, tc.fatal)
			}
		})
	}
	// Not files mode: the key is not looked at; a missing data dir is fine.
	cfg.TLS.Mode, cfg.DataDir = "self-signed", filepath.Join(dir, "not-yet")
	os.Chmod(key, 0o666)
	if got := checkFileModes(cfg); len(got) != 0 {
		t.Errorf("findings %v, want none", got)
	}
}
