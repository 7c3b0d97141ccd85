package spool

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// crashChildEnv names the spool file a crash-test child delivers into.
const crashChildEnv = "POSTIE_SPOOL_CRASH_CHILD"

// TestCrashChildProcess is not a test of its own: it is the body of the child
// process that TestCrashDurability starts and kills. Run normally (without
// the environment variable) it returns at once.
func TestCrashChildProcess(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		return
	}
	opts := DefaultOptions()
	opts.Path, opts.HashParams = path, fastHash
	opts.ChunkSize = 4 << 10 // many chunks and flushes per large message
	s, err := Open(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: open: %v\n", err)
		os.Exit(3)
	}
	ctx := context.Background()
	for _, a := range []string{"alice@example.com", "bob@example.com"} {
		if err := s.AddAccount(ctx, a, "correct horse battery"); err != nil && !errors.Is(err, ErrAccountExists) {
			fmt.Fprintf(os.Stderr, "child: add account: %v\n", err)
			os.Exit(3)
		}
	}
	var outMu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				size := mrand.IntN(2048)
				if mrand.IntN(8) == 0 {
					size = 20_000 + mrand.IntN(200_000) // several flushes
				}
				body := make([]byte, size)
				rand.Read(body)
				// Keep it text-like so normalisation is a no-op we can hash.
				for i := range body {
					body[i] = 'a' + body[i]%26
					if i%70 == 69 {
						body[i-1], body[i] = '\r', '\n'
					}
				}
				body = append(body, "\r\n"...)
				id, err := s.Deliver(ctx, Envelope{MailFrom: "crash@example.net"}, []string{"alice@example.com", "bob@example.com"}, bytes.NewReader(body))
				if err != nil {
					fmt.Fprintf(os.Stderr, "child: deliver: %v\n", err)
					os.Exit(4)
				}
				sum := sha256.Sum256(body)
				// The acknowledgement: written only after Deliver returned,
				// as SMTP's 250 would be.
				line := fmt.Sprintf("ok %d %d %s\n", uint64(id), len(body), hex.EncodeToString(sum[:]))
				outMu.Lock()
				os.Stdout.WriteString(line)
				outMu.Unlock()
			}
		}()
	}
	wg.Wait()
}

type ack struct {
	size int64
	sum  string
}

// TestCrashDurability kills a child process that delivers in a loop, at
// random moments, again and again on the same file. After every kill each
// delivery that had returned must be intact byte for byte, in both
// recipients' mailboxes, and the file must open and verify cleanly.
func TestCrashDurability(t *testing.T) {
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	acked := map[uint64]ack{}
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChildProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1<<16)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Let it deliver for a random while, then kill it without warning.
		time.Sleep(time.Duration(150+mrand.IntN(500)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		n := 0
		for line := range lines {
			f := strings.Fields(line)
			if len(f) != 4 || f[0] != "ok" {
				t.Fatalf("round %d: odd child output %q", round, line)
			}
			id, _ := strconv.ParseUint(f[1], 10, 64)
			size, _ := strconv.ParseInt(f[2], 10, 64)
			acked[id] = ack{size, f[3]}
			n++
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child ended on its own (%v): %s", round, err, stderr.String())
		}
		if n == 0 {
			t.Logf("round %d: child acknowledged nothing before the kill", round)
		}
		checkAfterCrash(t, path, acked)
	}
	t.Logf("%d rounds, %d acknowledged deliveries checked", rounds, len(acked))
	if len(acked) == 0 {
		t.Fatal("no delivery was ever acknowledged; the test proved nothing")
	}
}

func checkAfterCrash(t *testing.T, path string, acked map[uint64]ack) {
	t.Helper()
	opts := DefaultOptions()
	opts.Path, opts.HashParams = path, fastHash
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer s.Close()
	for _, p := range s.Verify() {
		t.Errorf("after kill: %v", p)
	}
	var boxes [2]map[uint64]int
	for i, a := range []string{"alice@example.com", "bob@example.com"} {
		m, err := s.OpenMaildrop(context.Background(), Login{Account: a}, "")
		if errors.Is(err, ErrNoSuchAccount) {
			if len(acked) > 0 {
				t.Fatalf("%s missing after acknowledged deliveries", a)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		boxes[i] = map[uint64]int{}
		for j, msg := range m.Messages() {
			boxes[i][uint64(msg.ID())] = j
		}
		for id, want := range acked {
			j, ok := boxes[i][id]
			if !ok {
				t.Fatalf("%s: acknowledged message %d is missing", a, id)
			}
			body := readAll(t, m, j)
			got := sha256.Sum256(body)
			if int64(len(body)) != want.size || hex.EncodeToString(got[:]) != want.sum {
				t.Fatalf("%s: message %d damaged: %d bytes, want %d", a, id, len(body), want.size)
			}
		}
		m.Close()
	}
	// Atomic multi-recipient delivery: both mailboxes hold the same messages,
	// acknowledged or not.
	if len(boxes[0]) != len(boxes[1]) {
		t.Fatalf("alice has %d messages, bob %d", len(boxes[0]), len(boxes[1]))
	}
	for id := range boxes[0] {
		if _, ok := boxes[1][id]; !ok {
			t.Fatalf("message %d is in alice's mailbox only", id)
		}
	}
}
