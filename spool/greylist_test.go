package spool

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestGreylist(t *testing.T) {
	s := openTest(t, nil)
	ctx := context.Background()
	o := GreylistOptions{Delay: 5 * time.Minute, Expire: 24 * time.Hour, PassTTL: 35 * 24 * time.Hour, MaxEntries: 1000}
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	try := func(net, from string, at time.Duration, rcpts ...string) bool {
		t.Helper()
		ok, err := s.Greylist(ctx, net, from, rcpts, t0.Add(at), o)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, tc := range []struct {
		what      string
		net, from string
		at        time.Duration
		rcpts     []string
		want      bool
	}{
		{"first attempt", "192.0.2.0/24", "a@x.example", 0, []string{"alice@example.com"}, false},
		{"retry too soon", "192.0.2.0/24", "a@x.example", 2 * time.Minute, []string{"alice@example.com"}, false},
		{"another sender from the same network", "192.0.2.0/24", "b@x.example", 6 * time.Minute, []string{"alice@example.com"}, false},
		{"retry after the delay", "192.0.2.0/24", "a@x.example", 6 * time.Minute, []string{"alice@example.com"}, true},
		{"the network passed: anyone from it", "192.0.2.0/24", "c@y.example", 7 * time.Minute, []string{"bob@example.com"}, true},
		{"still passed a month later", "192.0.2.0/24", "d@y.example", 30 * 24 * time.Hour, []string{"bob@example.com"}, true},
		{"pass expired", "192.0.2.0/24", "d@y.example", 36 * 24 * time.Hour, []string{"bob@example.com"}, false},
		{"another network: first attempt", "198.51.100.0/24", "a@x.example", 0, []string{"alice@example.com", "bob@example.com"}, false},
		{"retry too late starts over", "198.51.100.0/24", "a@x.example", 25 * time.Hour, []string{"alice@example.com", "bob@example.com"}, false},
		{"then a retry after the delay passes", "198.51.100.0/24", "a@x.example", 25*time.Hour + 6*time.Minute, []string{"alice@example.com", "bob@example.com"}, true},
	} {
		if got := try(tc.net, tc.from, tc.at, tc.rcpts...); got != tc.want {
			t.Errorf("%s: passed %v, want %v", tc.what, got, tc.want)
		}
	}
	checkVerify(t, s)
}

func TestGreylistPrune(t *testing.T) {
	s := openTest(t, nil)
	ctx := context.Background()
	o := GreylistOptions{Delay: time.Minute, Expire: time.Hour, PassTTL: 24 * time.Hour, MaxEntries: 10}
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for i := range 30 {
		s.Greylist(ctx, fmt.Sprintf("192.0.%d.0/24", i), "a@x.example", []string{"alice@example.com"}, t0.Add(time.Duration(i)*time.Second), o)
	}
	left, err := s.GreylistPrune(ctx, t0.Add(time.Minute), o)
	if err != nil || left != 10 {
		t.Fatalf("GreylistPrune = %d, %v; want the 10 newest kept", left, err)
	}
	// The newest are the ones kept: their retries pass.
	if ok, _ := s.Greylist(ctx, "192.0.29.0/24", "a@x.example", []string{"alice@example.com"}, t0.Add(2*time.Minute), o); !ok {
		t.Error("a kept triplet did not pass its retry")
	}
	if ok, _ := s.Greylist(ctx, "192.0.0.0/24", "a@x.example", []string{"alice@example.com"}, t0.Add(2*time.Minute), o); ok {
		t.Error("a pruned triplet passed")
	}
	if left, _ := s.GreylistPrune(ctx, t0.Add(48*time.Hour), o); left != 0 {
		t.Errorf("after every entry expired %d are left", left)
	}
}
