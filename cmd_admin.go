package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/postie/postie/internal/control"
	"github.com/postie/postie/internal/durable"
	"github.com/postie/postie/internal/passpolicy"
	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/spool"

	"github.com/postie/postie/internal/plural"
)

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	config string
	local  bool
	dir    string
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", defaultConfigPath, "config file")
	fs.BoolVar(&f.local, "local", false, "act on \"postie local\"'s data (in -dir) instead of the config's")
	fs.StringVar(&f.dir, "dir", localDefaultDir, "with -local: the local data directory")
}

// load returns the config the command acts on.
func (f *adminFlags) load() (Config, error) {
	if f.local {
		return localConfig(f.dir)
	}
	return LoadConfig(f.config)
}

// connect returns the Admin of the config's data directory: the running
// server, or the spool file when none runs.
func connect(cfg Config) (control.Admin, error) {
	return control.Connect(cfg.DataDir, func() (*spool.Store, error) {
		opts := cfg.Spool
		return spool.Open(opts)
	})
}

// adminCall is what an admin command works with once its command line is
// read: the config, the Admin (the running server, or the spool file), its
// positional arguments, and for an account command the account's address.
type adminCall struct {
	cfg   Config
	admin control.Admin
	args  []string
	addr  string // args[0] normalised, for account commands
}

// adminFlagSet returns a flag set for an admin command with the flags they
// all take; the command adds its own before calling parse.
func adminFlagSet(name string) (*flag.FlagSet, *adminFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f adminFlags
	f.register(fs)
	return fs, &f
}

// parse reads args with fs, checks that there are nargs positional
// arguments, loads the config and connects. With account set, the first
// argument must be an account address in one of the configured domains.
func (f *adminFlags) parse(fs *flag.FlagSet, args []string, nargs int, account bool) (*adminCall, error) {
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if len(pos) != nargs {
		return nil, errUsage
	}
	cfg, err := f.load()
	if err != nil {
		return nil, err
	}
	call := &adminCall{cfg: cfg, args: pos}
	if account {
		if call.addr, err = cfg.LocalAddress(pos[0]); err != nil {
			return nil, err
		}
	}
	if call.admin, err = connect(cfg); err != nil {
		return nil, err
	}
	return call, nil
}

// adminCommand is parse for a command with only the common flags.
func adminCommand(name string, args []string, nargs int, account bool) (*adminCall, error) {
	fs, f := adminFlagSet(name)
	return f.parse(fs, args, nargs, account)
}

func cmdUser(env *cliEnv, args []string) error {
	if len(args) == 0 {
		return errUsage
	}
	verb, args := args[0], args[1:]
	nargs := map[string]int{"add": 1, "passwd": 1, "del": 1, "list": 0, "quota": 2}
	n, ok := nargs[verb]
	if !ok {
		return errUsage
	}
	ctx := context.Background()
	if verb == "list" {
		call, err := adminCommand("user list", args, n, false)
		if err != nil {
			return err
		}
		defer call.admin.Close()
		accts, err := call.admin.Accounts(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ADDRESS\tMESSAGES\tSIZE\tQUOTA\tDEVICES\tLAST LOGIN")
		for _, ac := range accts {
			quota := "-"
			if ac.Quota > 0 {
				quota = humanBytes(ac.Quota)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", ac.Address, ac.Messages, humanBytes(ac.Bytes), quota, ac.Devices, when(ac.LastLogin, ac.LastIP))
		}
		return tw.Flush()
	}
	call, err := adminCommand("user "+verb, args, n, true)
	if err != nil {
		return err
	}
	defer call.admin.Close()
	a, addr, rest := call.admin, call.addr, call.args[1:]
	if verb == "quota" {
		n, err := units.ParseSize(rest[0])
		if err != nil {
			return err
		}
		if err := a.SetQuota(ctx, addr, n.Bytes()); err != nil {
			return err
		}
		if n == 0 {
			fmt.Fprintf(env.stdout, "%s: quota set to the default ([spool] quota)%s\n", addr, liveNote(a))
		} else {
			fmt.Fprintf(env.stdout, "%s: quota set to %s%s\n", addr, n, liveNote(a))
		}
		return nil
	}
	if verb == "del" {
		if err := a.DeleteAccount(ctx, addr); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "deleted %s and its mailbox\n", addr)
		return nil
	}
	pw, err := readPassword(env, addr)
	if err != nil {
		return err
	}
	if verb == "add" {
		err = a.AddAccount(ctx, addr, pw)
	} else {
		err = a.SetPassword(ctx, addr, pw)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%s: password set%s\n", addr, liveNote(a))
	return nil
}

// readPassword reads a new password: without echo, twice, on a terminal;
// the first line of standard input otherwise (so scripts can pipe it). A
// weak one is refused with the reason (passpolicy).
func readPassword(env *cliEnv, addr string) (string, error) {
	if f, ok := env.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(env.stderr, "New password for %s: ", addr)
		p1, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(env.stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(env.stderr, "Again: ")
		p2, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(env.stderr)
		if err != nil {
			return "", err
		}
		if string(p1) != string(p2) {
			return "", errors.New("the passwords differ")
		}
		return string(p1), passpolicy.Check(string(p1), addr)
	}
	line, err := bufio.NewReader(io.LimitReader(env.stdin, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("read password from standard input: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	return pw, passpolicy.Check(pw, addr)
}

func liveNote(a control.Admin) string {
	if a.Remote() {
		return " (the running server uses it now)"
	}
	return ""
}

func cmdDevice(env *cliEnv, args []string) error {
	if len(args) == 0 {
		return errUsage
	}
	verb, args := args[0], args[1:]
	nargs := map[string]int{"add": 2, "del": 2, "list": 1}
	n, ok := nargs[verb]
	if !ok {
		return errUsage
	}
	fs, f := adminFlagSet("device " + verb)
	all := false
	if verb == "add" {
		fs.BoolVar(&all, "all", false, "the device sees the mail already in the mailbox too")
	}
	call, err := f.parse(fs, args, n, true)
	if err != nil {
		return err
	}
	defer call.admin.Close()
	cfg, a, addr, rest := call.cfg, call.admin, call.addr, call.args[1:]
	ctx := context.Background()
	switch verb {
	case "add":
		pw, err := a.AddDevice(ctx, addr, rest[0], all)
		if err != nil {
			return err
		}
		sees := "mail that arrives from now on"
		if all {
			sees = "all the mail in the mailbox"
		}
		fmt.Fprintf(env.stdout, "Device %q of %s added. Its password (shown only now):\n\n    %s\n\nIn the mail app on the device: user %s, this password, server %s, POP3 port 995 with SSL/TLS.\nThe device sees %s; what it deletes disappears from its own view only.\n",
			rest[0], addr, pw, addr, cfg.Hostname, sees)
	case "del":
		if err := a.DeleteDevice(ctx, addr, rest[0]); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "device %q of %s revoked; its password no longer works%s\n", rest[0], addr, liveNote(a))
	case "list":
		devs, err := a.Devices(ctx, addr)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tADDED\tSEES\tLAST LOGIN\tWAITING")
		for _, d := range devs {
			name := d.Name
			if d.ID == 0 {
				name = "(account password)"
			}
			sees := "new mail"
			if d.All {
				sees = "all"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", name, d.Created.Local().Format("2006-01-02"), sees, when(d.LastLogin, d.LastIP), d.Waiting)
		}
		return tw.Flush()
	}
	return nil
}

func cmdRestore(env *cliEnv, args []string) error {
	call, err := adminCommand("restore", args, 1, true)
	if err != nil {
		return err
	}
	defer call.admin.Close()
	addr := call.addr
	n, err := call.admin.Restore(context.Background(), addr)
	if errors.Is(err, spool.ErrNotRetained) {
		return errors.New("retention is off ([spool] retention = \"0s\"), so deleted messages are not kept; set it to, say, \"720h\" to keep them for 30 days")
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%s of %s restored; they appear at the next POP3 login\n", plural.Count(n, "message"), addr)
	return nil
}

func cmdBackup(env *cliEnv, args []string) error {
	call, err := adminCommand("backup", args, 1, false)
	if err != nil {
		return err
	}
	defer call.admin.Close()
	a, dst := call.admin, call.args[0]
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".postie-backup-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := a.Backup(context.Background(), tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	// Check the copy before it replaces anything: a copy that fails is no backup.
	problems, err := spool.VerifyFile(tmp.Name())
	if err != nil {
		return fmt.Errorf("backup: the copy does not open: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("backup: the copy fails verification: %v", problems[0])
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	// The rename is durable only once the directory is synced: only then
	// may the owner be told the backup is written.
	if err := durable.Created(dst); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(env.stdout, "wrote %s (%s), verified\n", dst, humanBytes(n))
	return nil
}

func cmdExport(env *cliEnv, args []string) error {
	call, err := adminCommand("export", args, 1, true)
	if err != nil {
		return err
	}
	defer call.admin.Close()
	bw := bufio.NewWriterSize(env.stdout, 64<<10)
	if _, err := call.admin.Export(context.Background(), call.addr, bw); err != nil {
		return err
	}
	return bw.Flush()
}

func cmdVerify(env *cliEnv, args []string) error {
	call, err := adminCommand("verify", args, 0, false)
	if err != nil {
		return err
	}
	defer call.admin.Close()
	cfg := call.cfg
	problems, err := call.admin.Verify(context.Background())
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintln(env.stdout, "problem:", p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s; see docs in README.md (Recovery)", cfg.Spool.Path, plural.Count(len(problems), "problem"))
	}
	fmt.Fprintf(env.stdout, "%s: no problems found\n", cfg.Spool.Path)
	return nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func when(t time.Time, ip string) string {
	if t.IsZero() {
		return "never"
	}
	s := t.Local().Format("2006-01-02 15:04")
	if ip != "" {
		s += " from " + ip
	}
	return s
}
