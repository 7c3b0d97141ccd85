package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseTranscript(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tr, err := ParseTranscript(write("ok.txt", `# comment
! config max_errors = 3
! expect a@b 1

S~ 220 
C: EHLO x
S* 250 
C! "DATA\r\n.\n"
C:
S2: +OK
@starttls 2
@messages a@b 3
@closed
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Setup) != 2 || tr.Setup[0].Verb != "config" || tr.Setup[0].Rest != "max_errors = 3" || tr.Setup[1].No != 3 {
		t.Errorf("setup %+v", tr.Setup)
	}
	var got []string
	for _, s := range tr.Steps {
		got = append(got, s.Op+"|"+s.Conn+"|"+s.Arg+"|"+s.Name+"|"+strings.Join(s.Args, ","))
	}
	want := []string{
		"S~|1|220 ||", "C:|1|EHLO x||", "S*|1|250 ||", "C!|1|DATA\r\n.\n||", "C:|1|||",
		"S:|2|+OK||", "@|2||starttls|2", "@|1||messages|a@b,3", "@|1||closed|",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("steps:\n%q\nwant\n%q", got, want)
	}

	for name, text := range map[string]string{
		"late-setup.txt":   "C: X\n! config a = 1\n",
		"bad-line.txt":     "X: hello\n",
		"bad-quote.txt":    "C! DATA\n",
		"client-tilde.txt": "C~ X\n",
		"bad-conn.txt":     "@closed x\n",
	} {
		if _, err := ParseTranscript(write(name, text)); err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.Contains(err.Error(), name+":") {
			t.Errorf("%s: error %q does not name the file and line", name, err)
		}
	}
}
