package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/postie/postie/internal/resolver"
	"github.com/postie/postie/internal/setupcheck"
	"github.com/postie/postie/smtpin"

	"github.com/postie/postie/internal/plural"
)

// ipList collects repeated -ip flags.
type ipList []netip.Addr

func (l *ipList) String() string { return fmt.Sprint(*l) }
func (l *ipList) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	*l = append(*l, a)
	return nil
}

func cmdCheck(env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	config := fs.String("config", defaultConfigPath, "config file")
	var ips ipList
	fs.Var(&ips, "ip", "this server's public address (repeatable); default: public_addresses from the config")
	probe := fs.String("cert", "", "host:port to fetch the certificate from (default: hostname and the first pop3.listen_tls port)")
	if pos, err := parseInterleaved(fs, args); err != nil || len(pos) > 0 {
		return errUsage
	}
	cfg, err := LoadConfig(*config)
	if err != nil {
		return err
	}
	p, err := checkParams(cfg, ips, *probe)
	if err != nil {
		return err
	}
	r, err := resolver.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	findings := setupcheck.Run(ctx, p, r)
	problems := printFindings(env.stdout, findings)
	if modes := checkFileModes(cfg); len(modes) > 0 {
		fmt.Fprintf(env.stdout, "\nFile permissions:\n")
		for _, f := range modes {
			fmt.Fprintf(env.stdout, "  %s\n", f)
			problems++
		}
	}
	fmt.Fprintf(env.stdout, "\nPostmaster mail (RFC 5321 requires accepting it; DMARC and TLS reports go there):\n")
	for _, l := range smtpin.DescribePostmaster(cfg.SMTP) {
		fmt.Fprintf(env.stdout, "  %s\n", l)
	}
	if cfg.Autoconfig.Enabled {
		fmt.Fprintf(env.stdout, "\nClients that read RFC 6186 SRV records find the POP3 server through:\n")
		for _, d := range cfg.Domains {
			fmt.Fprintf(env.stdout, "  _pop3s._tcp.%s. IN SRV 0 1 %d %s.\n", d, p.POP3SPort, cfg.Hostname)
		}
	}
	if problems > 0 {
		return fmt.Errorf("%s found", plural.Count(problems, "problem"))
	}
	return nil
}

// checkParams turns the config into what setupcheck needs.
func checkParams(cfg Config, ips []netip.Addr, probe string) (setupcheck.Params, error) {
	p := setupcheck.Params{
		Hostname:   cfg.Hostname,
		Domains:    cfg.Domains,
		Addresses:  ips,
		MTASTS:     cfg.TLS.MTASTSMode != "",
		Autoconfig: cfg.Autoconfig.Enabled,
		CertProbe:  probe,
	}
	if p.MTASTS {
		p.MTASTSPolicyID = cfg.TLS.MTASTSPolicyID()
	}
	if len(p.Addresses) == 0 {
		for _, s := range cfg.PublicAddresses {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return p, err
			}
			p.Addresses = append(p.Addresses, a)
		}
	}
	p.POP3SPort = cfg.pop3sPort()
	if p.CertProbe == "" && len(cfg.POP3.ListenTLS) > 0 {
		p.CertProbe = net.JoinHostPort(cfg.Hostname, fmt.Sprint(p.POP3SPort))
	}
	return p, nil
}

// printFindings writes one block per finding and returns the problems.
func printFindings(w io.Writer, fs []setupcheck.Finding) int {
	problems := 0
	for _, f := range fs {
		fmt.Fprintf(w, "%-8s %-12s %s\n", f.Severity, f.Area, f.Message)
		for _, fix := range f.Fix {
			fmt.Fprintf(w, "%-8s %-12s   %s\n", "", "", fix)
		}
		if f.Severity == setupcheck.Problem {
			problems++
		}
	}
	if problems == 0 {
		fmt.Fprintln(w, "\nNo problems found.")
	} else {
		fmt.Fprintf(w, "\n%s: publish the records shown above, then run postie check again (DNS changes can take a while to show).\n", plural.Count(problems, "problem"))
	}
	return problems
}
