package plural

import "testing"

func TestCount(t *testing.T) {
	for _, c := range []struct {
		got, want string
	}{
		{Count(0, "message"), "0 messages"},
		{Count(1, "message"), "1 message"},
		{Count(2, "message"), "2 messages"},
		{Count(-1, "day"), "-1 day"},
		{Count(-3, "day"), "-3 days"},
		{Count(int64(1), "octet"), "1 octet"},
		{Count(int64(1<<40), "octet"), "1099511627776 octets"},
		{Count(uint8(1), "problem"), "1 problem"},
		{Count(uint64(1<<63), "byte"), "9223372036854775808 bytes"},
		{Count(1, "mailbox", "mailboxes"), "1 mailbox"},
		{Count(3, "mailbox", "mailboxes"), "3 mailboxes"},
		{Count(0, "entry", "entries"), "0 entries"},
		{Noun(1, "message"), "message"},
		{Noun(11, "message"), "messages"},
		{Noun(21, "message"), "messages"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
