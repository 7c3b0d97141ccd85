package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/postie/postie/internal/control"
	"github.com/postie/postie/internal/plural"
	"github.com/postie/postie/tlsauto"
)

// cmdStatus prints one screen for the owner: every account with its mail,
// quota and devices, the mail received and refused, the certificate, and
// what the fetch watchdog would warn about. From the running server when
// one runs; otherwise from the spool file, without the server's counts.
func cmdStatus(env *cliEnv, args []string) error {
	call, err := adminCommand("status", args, 0, false)
	if err != nil {
		return err
	}
	defer call.admin.Close()
	st, err := call.admin.Status(context.Background())
	if err != nil {
		return err
	}
	writeStatus(env.stdout, call.cfg, st, time.Now())
	return nil
}

// writeStatus formats a Status for the owner.
func writeStatus(w io.Writer, cfg Config, st control.Status, now time.Time) {
	if st.Live != nil {
		fmt.Fprintf(w, "Postie %s on %s: running since %s (%s)\n", version, cfg.Hostname, st.Live.Started.Local().Format("2006-01-02 15:04"), age(now.Sub(st.Live.Started)))
	} else {
		fmt.Fprintf(w, "Postie %s on %s: no server running; shown from the spool file\n", version, cfg.Hostname)
	}

	fmt.Fprintf(w, "\nAccounts (%d)\n", len(st.Accounts))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ACCOUNT\tMAIL\tSIZE\tQUOTA USE\tLAST FETCH")
	for _, a := range st.Accounts {
		quota := "no quota"
		if a.Quota > 0 {
			quota = fmt.Sprintf("%d%% of %s", a.QuotaUsed*100/a.Quota, humanBytes(a.Quota))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", a.Address, plural.Count(a.Messages, "message"), humanBytes(a.Bytes), quota, when(a.LastLogin, a.LastIP))
		for _, d := range a.Devices {
			name := "device " + d.Name
			if d.ID == 0 {
				name = "account password"
			}
			fmt.Fprintf(tw, "    %s\t%s waiting\t\t\t%s\n", name, plural.Count(d.Waiting, "message"), when(d.LastLogin, d.LastIP))
		}
	}
	tw.Flush()

	if l := st.Live; l != nil {
		// The server keeps these counts in memory: they are honest about
		// covering the time since it started, not a fixed window.
		fmt.Fprintf(w, "\nMail since the server started %s ago (counted in memory; a restart starts again from zero)\n", age(now.Sub(l.Started)))
		fmt.Fprintf(w, "  received  %s\n", plural.Count(l.Received, "message"))
		var total int64
		reasons := make([]string, 0, len(l.Refused))
		for r, n := range l.Refused {
			total += n
			reasons = append(reasons, r)
		}
		slices.SortFunc(reasons, func(a, b string) int {
			if d := l.Refused[b] - l.Refused[a]; d != 0 {
				return int(d)
			}
			return strings.Compare(a, b)
		})
		fmt.Fprintf(w, "  refused   %s", plural.Count(total, "time"))
		for i, r := range reasons {
			sep := ", "
			if i == 0 {
				sep = ": "
			}
			fmt.Fprintf(w, "%s%s %d", sep, r, l.Refused[r])
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintln(w, "\nMail received and refused: only the running server counts them (start it, or see the log)")
	}

	fmt.Fprintln(w, "\nCertificate")
	expiry, names, where := certificateOf(cfg, st)
	switch {
	case expiry.IsZero():
		fmt.Fprintf(w, "  %s\n", where)
	default:
		days := int(expiry.Sub(now).Hours() / 24)
		left := "expires in " + plural.Count(days, "day")
		if days < 0 {
			left = "EXPIRED"
		}
		fmt.Fprintf(w, "  %s: %s %s (%s)\n", strings.Join(names, ", "), left, expiry.Local().Format("2006-01-02"), where)
	}

	fmt.Fprintln(w, "\nWatchdog")
	overdue, nearQuota := cfg.Watchdog.FetchOverdue.D(), cfg.Watchdog.QuotaWarning
	warned := false
	for _, a := range st.Accounts {
		if overdue > 0 && a.Overdue(now, overdue) {
			warned = true
			since := "never fetched"
			if !a.LastLogin.IsZero() {
				since = "not fetched for " + age(now.Sub(a.LastLogin))
			}
			fmt.Fprintf(w, "  %s: %s (limit %s), %s waiting\n", a.Address, since, age(overdue), plural.Count(a.Messages, "message"))
		}
		if nearQuota > 0 && a.NearQuota(nearQuota) {
			warned = true
			fmt.Fprintf(w, "  %s: %d%% of its quota used (warning at %d%%); new mail is refused (452) once it is full\n", a.Address, a.QuotaUsed*100/a.Quota, int(nearQuota*100))
		}
	}
	if !warned {
		fmt.Fprintln(w, "  nothing needs attention")
	}
}

// certificateOf returns the certificate's expiry and names, and where
// they come from: the running server, or the files mode's cert_file.
func certificateOf(cfg Config, st control.Status) (time.Time, []string, string) {
	if st.Live != nil {
		if st.Live.CertExpiry.IsZero() {
			return time.Time{}, nil, "none yet: STARTTLS, STLS and POP3S wait for it (see the log)"
		}
		return st.Live.CertExpiry, st.Live.CertNames, "served now"
	}
	if cfg.TLS.Mode != tlsauto.ModeFiles {
		return time.Time{}, nil, "unknown while no server runs"
	}
	b, err := os.ReadFile(cfg.TLS.CertFile)
	if err != nil {
		return time.Time{}, nil, "cannot read " + cfg.TLS.CertFile + ": " + err.Error()
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return time.Time{}, nil, cfg.TLS.CertFile + " holds no PEM certificate"
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return time.Time{}, nil, cfg.TLS.CertFile + ": " + err.Error()
	}
	return leaf.NotAfter, leaf.DNSNames, "from " + cfg.TLS.CertFile
}

// age writes a duration for people: minutes, hours or days.
func age(d time.Duration) string {
	switch {
	case d < time.Hour:
		return plural.Count(int(d.Minutes()), "minute")
	case d < 48*time.Hour:
		return plural.Count(int(d.Hours()), "hour")
	}
	return plural.Count(int(d.Hours()/24), "day")
}
