package main

import (
	"fmt"
	"io/fs"
	"os"
)

// modeFinding is what is wrong with the permissions of one file or
// directory that holds Postie's secrets or decides what it does.
type modeFinding struct {
	path    string
	problem string
	fix     string
	fatal   bool // serve refuses to start
}

func (f modeFinding) String() string {
	return fmt.Sprintf("%s is %s; fix: %s", f.path, f.problem, f.fix)
}

// checkFileModes looks at the config file (anyone who can write it can make
// Postie accept mail for anyone or read its key from elsewhere), the TLS
// key in files mode, and the data directory (the spool with every message
// and password hash, the control socket, the ACME account key). Group or
// others writing to the key or the data directory is refused; the rest is
// warned about. A path that does not exist yet is not a finding.
func checkFileModes(cfg Config) []modeFinding {
	var out []modeFinding
	check := func(path string, bad fs.FileMode, problem, fix string, fatal bool) {
		if path == "" {
			return
		}
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm()&bad == 0 {
			return
		}
		out = append(out, modeFinding{path: path, problem: fmt.Sprintf("%s (mode %04o)", problem, st.Mode().Perm()), fix: fix, fatal: fatal})
	}
	if cfg.path != "" {
		check(cfg.path, 0o022, "writable by group or others", "chmod go-w "+cfg.path, false)
	}
	if cfg.TLS.Mode == "files" {
		if !writableByOthers(cfg.TLS.KeyFile) {
			check(cfg.TLS.KeyFile, 0o044, "readable by group or others: it is the server's private TLS key", "chmod 600 "+cfg.TLS.KeyFile, false)
		}
		check(cfg.TLS.KeyFile, 0o022, "writable by group or others: it is the server's private TLS key", "chmod 600 "+cfg.TLS.KeyFile, true)
	}
	if !writableByOthers(cfg.DataDir) {
		check(cfg.DataDir, 0o077, "open to group or others: it holds every message and password hash", "chmod 700 "+cfg.DataDir, false)
	}
	check(cfg.DataDir, 0o022, "writable by group or others: it holds every message and password hash", "chmod 700 "+cfg.DataDir, true)
	return out
}

// writableByOthers reports whether path exists and group or others may
// write it (then only the fatal finding is given, not both).
func writableByOthers(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().Perm()&0o022 != 0
}
