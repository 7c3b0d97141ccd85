package control

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/postie/postie/spool"
)

// TestQuarantineOverTheSocket: list (all, per account), show, release and
// delete work the same over the socket as on the spool file, with the
// spool's errors for an unknown id.
func TestQuarantineOverTheSocket(t *testing.T) {
	dir := t.TempDir()
	s := storeWithMail(t, dir)
	ctx := context.Background()
	var ids []spool.MessageID
	for i, subject := range []string{"one", "two"} {
		d := s.Begin(ctx, spool.Envelope{MailFrom: "x@elsewhere.example"})
		d.Write([]byte("Subject: " + subject + "\r\n\r\nbody\r\n"))
		id, err := d.CommitQuarantine([]byte("Received: test\r\n"), []string{"alice@example.com"}, spool.QuarantineNote{Reason: "test", Subject: subject, Refused: i == 1})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	_, c := serve(t, Local(s), limits{})
	for _, a := range []Admin{c, Local(s)} {
		list, err := a.QuarantineList(ctx, "")
		if err != nil || len(list) != 2 || list[0].Subject != "one" || !list[1].Refused {
			t.Fatalf("QuarantineList = %+v, %v", list, err)
		}
		if mine, err := a.QuarantineList(ctx, "alice@example.com"); err != nil || len(mine) != 2 {
			t.Fatalf("alice's: %+v, %v", mine, err)
		}
		var b bytes.Buffer
		if n, err := a.QuarantineShow(ctx, ids[0], &b); err != nil || int(n) != b.Len() || b.String() != "Received: test\r\nSubject: one\r\n\r\nbody\r\n" {
			t.Fatalf("QuarantineShow = %d %v %q", n, err, b.String())
		}
		if _, err := a.QuarantineShow(ctx, 999, &b); !errors.Is(err, spool.ErrNoSuchMessage) {
			t.Errorf("show of an unknown id: %v", err)
		}
		if _, err := a.QuarantineRelease(ctx, 999); !errors.Is(err, spool.ErrNoSuchMessage) {
			t.Errorf("release of an unknown id: %v", err)
		}
		if err := a.QuarantineDelete(ctx, 999); !errors.Is(err, spool.ErrNoSuchMessage) {
			t.Errorf("delete of an unknown id: %v", err)
		}
	}
	if reached, err := c.QuarantineRelease(ctx, ids[0]); err != nil || strings.Join(reached, ",") != "alice@example.com" {
		t.Fatalf("QuarantineRelease = %v, %v", reached, err)
	}
	if err := c.QuarantineDelete(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	if left, _ := c.QuarantineList(ctx, ""); len(left) != 0 {
		t.Errorf("left: %+v", left)
	}
	if accts, _ := c.Accounts(ctx); len(accts) != 1 || accts[0].Messages != 1 {
		t.Errorf("after the release alice has %+v", accts)
	}
}
