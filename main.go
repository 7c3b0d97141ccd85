// Command postie is a personal mail appliance in one binary: an inbound MX
// (SMTP on port 25, with SPF, DKIM and DMARC checks), a bbolt spool, and a
// POP3 server (110 with STLS, 995 with TLS), with certificates from Let's
// Encrypt. Mail flows one way: a sender's MTA -> smtpin -> spool ->
// pop3out -> the owner's mail client.
//
// This file only wires: it parses the command line and hands each
// subcommand to its function.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand.
type command struct {
	usage string // arguments, after the name
	help  string // one line
	run   func(env *cliEnv, args []string) error
}

// commandTable returns the subcommand table.
func commandTable() map[string]command {
	table := map[string]command{
		"serve":      {"[-config FILE]", "run everything the config enables", cmdServe},
		"local":      {"[-dir DIR]", "try Postie on this machine: loopback ports, self-signed certificate, a test account", cmdLocal},
		"user":       {"add|passwd|del|list|quota [ADDRESS] [SIZE] [-config FILE]", "manage accounts (the password is read from standard input)", cmdUser},
		"device":     {"add ADDRESS NAME [-all] | list ADDRESS | del ADDRESS NAME", "manage per-device passwords of an account", cmdDevice},
		"restore":    {"ADDRESS [-config FILE]", "bring back the messages a client deleted, while retention keeps them", cmdRestore},
		"backup":     {"FILE [-config FILE]", "write a consistent copy of the spool, also while the server runs", cmdBackup},
		"export":     {"ADDRESS [-config FILE]", "write a mailbox to standard output as mbox", cmdExport},
		"verify":     {"[-config FILE]", "check the spool's integrity", cmdVerify},
		"quarantine": {"list [ADDRESS] | show ID | release ID | del ID [-config FILE]", "look through the messages held for you: refused ones and those a content filter held", cmdQuarantine},
		"status":     {"[-config FILE]", "one screen for the owner: accounts, devices, mail received and refused, certificate, warnings", cmdStatus},
		"check":      {"[-config FILE] [-ip ADDRESS]...", "check the DNS records and the certificate the internet sees, and print the records to publish", cmdCheck},
		"version":    {"", "print the version", func(env *cliEnv, _ []string) error { fmt.Fprintln(env.stdout, "postie", version); return nil }},
	}
	table["help"] = command{"[COMMAND]", "show this help", func(env *cliEnv, args []string) error { return help(env, table, args) }}
	return table
}

// cliEnv is what a subcommand may touch of the process, so tests can run
// subcommands in-process.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

func main() {
	env := &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(run(env, os.Args[1:]))
}

func run(env *cliEnv, args []string) int {
	commands := commandTable()
	if len(args) == 0 {
		help(env, commands, nil)
		return 2
	}
	name := strings.TrimLeft(args[0], "-")
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(env.stderr, "postie: unknown command %q (see \"postie help\")\n", args[0])
		return 2
	}
	if err := cmd.run(env, args[1:]); err != nil {
		if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(env.stderr, "usage: postie %s %s\n", name, cmd.usage)
			return 2
		}
		fmt.Fprintf(env.stderr, "postie %s: %v\n", name, err)
		return 1
	}
	return 0
}

func help(env *cliEnv, commands map[string]command, args []string) error {
	if len(args) == 1 {
		if c, ok := commands[args[0]]; ok {
			fmt.Fprintf(env.stdout, "postie %s %s\n  %s\n", args[0], c.usage, c.help)
			return nil
		}
	}
	fmt.Fprintf(env.stdout, "postie %s: a personal mail server (SMTP in, POP3 out)\n\nCommands:\n", version)
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(env.stdout, "  %-8s %s\n", n, commands[n].help)
	}
	fmt.Fprintf(env.stdout, "\nEvery command takes -config FILE (default %s).\nStart here: postie local\n", defaultConfigPath)
	return nil
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
