package control

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/postie/postie/spool"
)

// Status is what "postie status" shows: the spool's view of every account
// and its devices, and, from a running server, what it has seen since it
// started (Live).
type Status struct {
	Accounts []AccountStatus `json:"accounts"`
	// Live is nil when no server runs (the spool was opened directly).
	Live *Live `json:"live,omitempty"`
}

// AccountStatus is one account and its ways of logging in.
type AccountStatus struct {
	spool.AccountInfo
	Devices []spool.DeviceInfo `json:"devices"`
}

// Live is what only a running server knows. The mail counts are kept in
// its memory from its start: they are not the last 24 hours, and a restart
// sets them to zero.
type Live struct {
	Started  time.Time        `json:"started"`
	Received int64            `json:"received"`          // messages accepted
	Refused  map[string]int64 `json:"refused,omitempty"` // refusals by reason (as postie_smtp_messages_total's)
	// CertExpiry is when the certificate on the mail ports expires; zero
	// while there is none.
	CertExpiry time.Time `json:"cert_expiry"`
	CertNames  []string  `json:"cert_names,omitempty"`
}

// Status implements Admin: every account with its devices.
func (l local) Status(ctx context.Context) (Status, error) {
	return spoolStatus(ctx, l)
}

// spoolStatus gathers the accounts and devices through an Admin.
func spoolStatus(ctx context.Context, a Admin) (Status, error) {
	accts, err := a.Accounts(ctx)
	if err != nil {
		return Status{}, err
	}
	st := Status{Accounts: make([]AccountStatus, 0, len(accts))}
	for _, ac := range accts {
		devs, err := a.Devices(ctx, ac.Address)
		if err != nil {
			return Status{}, err
		}
		st.Accounts = append(st.Accounts, AccountStatus{AccountInfo: ac, Devices: devs})
	}
	return st, nil
}

// Status implements Admin.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return do[Status](ctx, c, http.MethodGet, nil, "status")
}

// liveSource holds the function that reports a running server's Live.
type liveSource struct {
	mu sync.Mutex
	fn func() Live
}

func (l *liveSource) get() *Live {
	l.mu.Lock()
	fn := l.fn
	l.mu.Unlock()
	if fn == nil {
		return nil
	}
	v := fn()
	return &v
}

// SetLive gives the server what "postie status" reports of the running
// server beyond the spool (mail counts, the certificate); until it is
// called, status shows the spool only.
func (s *Server) SetLive(fn func() Live) {
	s.live.mu.Lock()
	s.live.fn = fn
	s.live.mu.Unlock()
}
