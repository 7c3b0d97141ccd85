package connlimit

import (
	"bufio"
	"net"
	"testing"
	"time"
)

func TestLimits(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, 3, 2, func(c net.Conn, perClient bool) {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if perClient {
			c.Write([]byte("per-client\n"))
		} else {
			c.Write([]byte("total\n"))
		}
	})
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello\n"))
			accepted <- c
		}
	}()
	dial := func(t *testing.T) string {
		t.Helper()
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return line
	}
	// All from 127.0.0.1: two fit, the third is over the per-client limit.
	if got := dial(t); got != "hello\n" {
		t.Fatalf("first: %q", got)
	}
	if got := dial(t); got != "hello\n" {
		t.Fatalf("second: %q", got)
	}
	if got := dial(t); got != "per-client\n" {
		t.Fatalf("third: %q", got)
	}
	if l.Open() != 2 {
		t.Fatalf("Open() = %d, want 2", l.Open())
	}
	// Closing one frees its slot.
	(<-accepted).Close()
	if got := dial(t); got != "hello\n" {
		t.Fatalf("after a close: %q", got)
	}
}

func TestTotal(t *testing.T) {
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	l := New(inner, 1, 0, func(c net.Conn, perClient bool) {
		if perClient {
			c.Write([]byte("per-client\n"))
		} else {
			c.Write([]byte("total\n"))
		}
	})
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello\n"))
		}
	}()
	var lines []string
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		lines = append(lines, line)
	}
	if lines[0] != "hello\n" || lines[1] != "total\n" {
		t.Fatalf("got %q", lines)
	}
}

func TestClientKey(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"192.0.2.7:25", "192.0.2.7/32"},
		{"[2001:db8:1:2:3:4:5:6]:25", "2001:db8:1:2::/64"},
		{"[::ffff:192.0.2.7]:25", "192.0.2.7/32"},
	}
	for _, tt := range tests {
		a, _ := net.ResolveTCPAddr("tcp", tt.addr)
		if got := ClientKey(a).String(); got != tt.want {
			t.Errorf("ClientKey(%s) = %s, want %s", tt.addr, got, tt.want)
		}
	}
}

func TestSharedLimiter(t *testing.T) {
	lim := NewLimiter(2, 0)
	var ls []*Listener
	for i := 0; i < 2; i++ {
		inner, _ := net.Listen("tcp", "127.0.0.1:0")
		l := lim.Listen(inner, func(c net.Conn, _ bool) { c.Write([]byte("full\n")) })
		defer l.Close()
		ls = append(ls, l)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("hello\n"))
			}
		}()
	}
	// Two connections on the first address fill the shared total, so the
	// second address refuses a third.
	var got []string
	for _, l := range []*Listener{ls[0], ls[0], ls[1]} {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		got = append(got, line)
	}
	if got[0] != "hello\n" || got[1] != "hello\n" || got[2] != "full\n" || lim.Open() != 2 {
		t.Fatalf("got %q, open %d", got, lim.Open())
	}
}
