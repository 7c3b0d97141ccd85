package pop3out

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
)

// guesser logs in with wrong passwords for alice over one connection from
// src until stop, counting the answers.
func guesser(t testing.TB, e *env, src string, stop <-chan struct{}, guesses *atomic.Int64) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
		t.Errorf("greeting %q", l)
		return
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		fmt.Fprintf(c, "USER %s\r\nPASS guess%d\r\n", alice, i)
		r.ReadString('\n')
		l, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(l, "-ERR [AUTH]") {
			guesses.Add(1)
		}
	}
}

// TestGuessingBoundedAcrossConnections: with a constant penalty of 100 ms
// per guess, 30 connections from 10 addresses guessing alice's password
// for 2 s get about 20 guesses checked in all, not 30 times that: one
// check per account at a time, each after the account's delay.
func TestGuessingBoundedAcrossConnections(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) {
		c.FailedLoginDelay = units.DurationOf(100 * time.Millisecond)
		c.FailedLoginDelayMax = units.DurationOf(100 * time.Millisecond)
		c.AuthDuration = units.DurationOf(0)
		c.MaxAuthFailures = 1000
		c.MaxErrors = 1000
	}})
	var guesses atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() { guesser(t, e, fmt.Sprintf("127.0.0.%d", 10+i%10), stop, &guesses) })
	}
	time.Sleep(2 * time.Second)
	close(stop)
	n := guesses.Load()
	wg.Wait()
	t.Logf("%d guesses in 2 s over 30 connections", n)
	// 2 s / 100 ms = 20, plus those already waiting when the time is up.
	if n > 35 {
		t.Errorf("%d guesses in 2 s: parallel connections multiply the rate (want at most about 20)", n)
	}
	if n == 0 {
		t.Error("no guess was answered at all")
	}
}

// TestOwnerNotSlowedByStrangers: once alice logged in from 127.0.0.1,
// strangers' failures against her account (which make every stranger wait
// the account's penalty) do not slow her logins from there.
func TestOwnerNotSlowedByStrangers(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) {
		c.FailedLoginDelay = units.DurationOf(2 * time.Second)
		c.FailedLoginDelayMax = units.DurationOf(4 * time.Second)
		c.AuthDuration = units.DurationOf(0)
		c.MaxAuthFailures = 1000
	}})
	owner := e.dial()
	owner.expect("+OK ")
	owner.login(alice, password)
	owner.cmd("+OK", "QUIT")

	// A stranger fails twice: the account's delay is now 2 s, then 4 s.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.50")}}
	raw, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	stranger := newClient(t, raw)
	stranger.expect("+OK ")
	for range 2 {
		stranger.cmd("+OK", "USER %s", alice)
		stranger.cmd("-ERR [AUTH]", "PASS wrong")
	}
	// Another stranger, from elsewhere, waits the account's delay.
	raw2, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.51")}}).Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	other := newClient(t, raw2)
	other.expect("+OK ")
	start := time.Now()
	other.cmd("+OK", "USER %s", alice)
	other.cmd("-ERR [AUTH]", "PASS wrong")
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("a stranger from a new address waited %v; the account's penalty should hold it", waited)
	}
	// The owner, from her known network, is not held by it.
	start = time.Now()
	owner = e.dial()
	owner.expect("+OK ")
	owner.login(alice, password)
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("the owner waited %v for strangers' failures", waited)
	}
	owner.cmd("+OK", "QUIT")
}

// TestGateForgetsKeys: the gate holds a key only while a check holds or
// waits for it, so strangers' user names cannot grow it.
func TestGateForgetsKeys(t *testing.T) {
	g := newGate()
	leave, err := g.enter(context.Background(), "alice@example.org")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.enter(ctx, "alice@example.org"); err == nil {
		t.Fatal("a second check got in while the first held the account")
	}
	leave()
	g.mu.Lock()
	n := len(g.slots)
	g.mu.Unlock()
	if n != 0 {
		t.Errorf("%d keys left after every check ended", n)
	}
}
