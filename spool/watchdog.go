package spool

import (
	"context"
	"log/slog"
	"time"
)

// Overdue reports whether the mailbox holds mail and has gone unfetched for
// longer than limit (counted from the account's creation if it never was).
func (a AccountInfo) Overdue(now time.Time, limit time.Duration) bool {
	if a.Messages == 0 {
		return false
	}
	since := a.LastLogin
	if since.IsZero() {
		since = a.Created
	}
	return now.Sub(since) > limit
}

// NearQuota reports whether the mailbox is above fraction of its quota.
func (a AccountInfo) NearQuota(fraction float64) bool {
	return a.Quota > 0 && float64(a.QuotaUsed) >= fraction*float64(a.Quota)
}

// Watchdog logs, once per change, the mailboxes that have not been fetched
// for longer than FetchOverdue and those above QuotaWarning of their
// quota: the POP3 failures owners notice too late. It is not safe for
// concurrent use; Housekeeping runs one.
type Watchdog struct {
	store     *Store
	overdue   time.Duration
	nearQuota float64
	log       *slog.Logger
	warned    map[string]string // account -> the state last logged
}

// NewWatchdog makes a Watchdog; overdue 0 turns the fetch check off,
// nearQuota 0 the quota check.
func (s *Store) NewWatchdog(overdue time.Duration, nearQuota float64, log *slog.Logger) *Watchdog {
	if log == nil {
		log = s.log
	}
	return &Watchdog{store: s, overdue: overdue, nearQuota: nearQuota, log: log, warned: map[string]string{}}
}

// Check looks at every mailbox once and logs what changed since the last
// check; it returns the accounts that need attention.
func (w *Watchdog) Check(now time.Time) ([]string, error) {
	accts, err := w.store.Accounts()
	if err != nil {
		return nil, err
	}
	var attention []string
	for _, a := range accts {
		state := ""
		if w.overdue > 0 && a.Overdue(now, w.overdue) {
			state += "overdue "
		}
		if w.nearQuota > 0 && a.NearQuota(w.nearQuota) {
			state += "near_quota"
		}
		if state != "" {
			attention = append(attention, a.Address)
		}
		if state == w.warned[a.Address] {
			continue
		}
		w.warned[a.Address] = state
		switch {
		case state == "":
			w.log.Info("watchdog: mailbox fine again", "account", a.Address)
		default:
			w.log.Warn("watchdog: mailbox needs attention", "account", a.Address, "state", state,
				"messages", a.Messages, "bytes", a.Bytes, "quota", a.Quota, "last_login", a.LastLogin, "last_ip", a.LastIP)
		}
	}
	return attention, nil
}

// HousekeepingOptions set what Housekeeping does and how often.
type HousekeepingOptions struct {
	// Every is the time between rounds. Default 10 minutes.
	Every time.Duration
	// FetchOverdue and QuotaWarning are the watchdog's limits (see
	// NewWatchdog).
	FetchOverdue time.Duration
	QuotaWarning float64
	// Logger receives the watchdog's lines. Default: the store's.
	Logger *slog.Logger
	// Greylist, if not nil, returns the greylisting rules in force (nil
	// while greylisting is off); each round prunes the table by them, so
	// a reload that turns it on or changes them takes effect.
	Greylist func() *GreylistOptions
}

// Housekeeping runs until ctx ends: the watchdog and the quarantine's
// pruning at once and after every round (with the quarantine's daily
// count in the log), and each round Sweep, which applies the passing of
// time (device idleness, the deletion grace, retention). Failures are
// logged, never fatal.
func (s *Store) Housekeeping(ctx context.Context, o HousekeepingOptions) {
	if o.Every <= 0 {
		o.Every = 10 * time.Minute
	}
	w := s.NewWatchdog(o.FetchOverdue, o.QuotaWarning, o.Logger)
	t := time.NewTicker(o.Every)
	defer t.Stop()
	var lastCount time.Time
	for {
		now := s.opts.Now()
		if _, err := w.Check(now); err != nil && ctx.Err() == nil {
			s.log.Error("watchdog failed", "err", err)
		}
		removed, lastDay, err := s.QuarantinePrune(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("quarantine pruning failed", "err", err)
		case err == nil && now.Sub(lastCount) >= 24*time.Hour:
			// The daily count: what the owner may want to look through.
			lastCount = now
			w.log.Info("quarantine: messages held in the last 24 hours", "count", lastDay, "removed_now", removed)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("sweep failed", "err", err)
			}
			if o.Greylist != nil {
				if g := o.Greylist(); g != nil {
					if _, err := s.GreylistPrune(ctx, s.opts.Now(), *g); err != nil && ctx.Err() == nil {
						s.log.Error("greylist pruning failed", "err", err)
					}
				}
			}
		}
	}
}
