package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// dashboardQueries returns the PromQL of every panel of
// contrib/grafana/postie.json.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../contrib/grafana/postie.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("contrib/grafana/postie.json: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

// TestGrafanaDashboardMetricsExist scrapes a running Postie that has
// received, refused and served mail, and checks that every metric the
// dashboard's queries name is in the scrape: a renamed metric, or a
// dashboard typo, fails here rather than as an empty panel.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	testutil.Tool(t, "curl")
	testutil.Tool(t, "swaks")
	exprs := dashboardQueries(t)
	s := newServer(t, serverOptions{})
	alice := "alice@" + domain
	s.addUser(t, alice)
	s.postie(t, "", "user", "quota", alice, "10MB")
	s.sendMail(t, alice, "for the dashboard")
	if err := exec.Command("swaks", "--server", s.smtp, "--from", "friend@elsewhere.test", "--to", "nobody@"+domain).Run(); err == nil {
		t.Fatal("mail to an unknown user was accepted")
	}
	s.curlPOP3(t, alice, password, "1")
	s.curlFails(alice, "wrong password")

	present := map[string]bool{}
	for series := range s.scrape(t) {
		name, _, _ := strings.Cut(series, "{")
		present[name] = true
	}
	metric := regexp.MustCompile(`\bpostie_[a-z0-9_]+`)
	var used []string
	for _, e := range exprs {
		for _, name := range metric.FindAllString(e, -1) {
			if !slices.Contains(used, name) {
				used = append(used, name)
			}
		}
	}
	if len(used) < 15 {
		t.Fatalf("the dashboard uses only %d Postie metrics: %v", len(used), used)
	}
	for _, name := range used {
		if !present[name] {
			t.Errorf("the dashboard queries %s, which the scrape does not have", name)
		}
	}
	// The other way round is only reported: a new metric may wait for
	// its panel.
	for name := range present {
		if strings.HasPrefix(name, "postie_") && !slices.Contains(used, name) {
			t.Logf("metric %s has no panel in the dashboard yet", name)
		}
	}
}
