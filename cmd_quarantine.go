package main

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/postie/postie/internal/plural"
	"github.com/postie/postie/spool"
)

// cmdQuarantine lists, shows, releases and deletes the messages held in
// the quarantine (refused ones, and those a content filter held).
func cmdQuarantine(env *cliEnv, args []string) error {
	if len(args) == 0 {
		return errUsage
	}
	verb, args := args[0], args[1:]
	ctx := context.Background()
	switch verb {
	case "list":
		// An optional account: count the positional arguments first.
		fs, _ := adminFlagSet("quarantine list")
		pos, err := parseInterleaved(fs, args)
		if err != nil || len(pos) > 1 {
			return errUsage
		}
		fs, f := adminFlagSet("quarantine list")
		call, err := f.parse(fs, args, len(pos), len(pos) == 1)
		if err != nil {
			return err
		}
		defer call.admin.Close()
		held, err := call.admin.QuarantineList(ctx, call.addr)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tARRIVED\tSENDER\tFROM\tSUBJECT\tSENT BACK\tREASON")
		for _, q := range held {
			answer := "250 (accepted)"
			if q.Refused {
				answer = "refused"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", q.ID, q.Arrived.Local().Format("2006-01-02 15:04"),
				orDash(q.MailFrom), orDash(clipText(q.From, 40)), orDash(clipText(q.Subject, 50)), answer, q.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%s held\n", plural.Count(len(held), "message", "messages"))
		return nil
	case "show", "release", "del":
		call, err := adminCommand("quarantine "+verb, args, 1, false)
		if err != nil {
			return err
		}
		defer call.admin.Close()
		id, err := spool.ParseMessageID(call.args[0])
		if err != nil {
			return err
		}
		switch verb {
		case "show":
			bw := bufio.NewWriterSize(env.stdout, 64<<10)
			if _, err := call.admin.QuarantineShow(ctx, id, bw); err != nil {
				return err
			}
			return bw.Flush()
		case "release":
			reached, err := call.admin.QuarantineRelease(ctx, id)
			if err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "%s released to %s; it appears at the next POP3 login\n", id, strings.Join(reached, ", "))
			return nil
		default:
			if err := call.admin.QuarantineDelete(ctx, id); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "%s deleted from the quarantine\n", id)
			return nil
		}
	}
	return errUsage
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// clipText shortens s to n characters for a table column.
func clipText(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
