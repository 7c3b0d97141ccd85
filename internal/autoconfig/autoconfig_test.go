package autoconfig

import (
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestThunderbird(t *testing.T) {
	srv := httptest.NewServer(New("mail.example.com", 995, []string{"example.com", "example.org"}))
	defer srv.Close()
	get := func(host, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	tests := []struct {
		host, path string
		status     int
		domain     string
	}{
		{"autoconfig.example.com", "/mail/config-v1.1.xml?emailaddress=alice@example.com", 200, "example.com"},
		{"autoconfig.example.org", "/mail/config-v1.1.xml", 200, "example.org"},
		{"example.com", "/.well-known/autoconfig/mail/config-v1.1.xml", 200, "example.com"},
		{"mail.example.com", "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=bob%40example.org", 200, "example.org"},
		{"autoconfig.evil.test", "/mail/config-v1.1.xml", 404, ""},
		{"autoconfig.example.com", "/mail/config-v1.1.xml?emailaddress=x@evil.test", 404, ""},
		{"autoconfig.example.com", "/other", 404, ""},
	}
	for _, tt := range tests {
		resp, body := get(tt.host, tt.path)
		if resp.StatusCode != tt.status {
			t.Errorf("%s%s: status %d, want %d", tt.host, tt.path, resp.StatusCode, tt.status)
			continue
		}
		if tt.status != 200 {
			continue
		}
		var c tbConfig
		if err := xml.Unmarshal([]byte(body), &c); err != nil {
			t.Fatalf("%s: %v\n%s", tt.host, err, body)
		}
		in := c.Provider.Incoming
		if c.Provider.Domain != tt.domain || in.Type != "pop3" || in.Hostname != "mail.example.com" || in.Port != 995 || in.Socket != "SSL" || in.Username != "%EMAILADDRESS%" || in.Auth != "password-cleartext" {
			t.Errorf("%s: wrong config:\n%s", tt.host, body)
		}
		if strings.Contains(body, "outgoingServer") {
			t.Errorf("offers an outgoing server; Postie sends no mail")
		}
	}
}

func TestOutlookAutodiscover(t *testing.T) {
	srv := httptest.NewServer(New("mail.example.com", 995, []string{"example.com"}))
	defer srv.Close()
	body := `<?xml version="1.0"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>alice@example.com</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>`
	resp, err := http.Post(srv.URL+"/autodiscover/autodiscover.xml", "text/xml", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"<Type>POP3</Type>", "<Server>mail.example.com</Server>", "<Port>995</Port>", "<LoginName>alice@example.com</LoginName>", "<SSL>on</SSL>"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("missing %s in\n%s", want, b)
		}
	}
}

func TestSRVRecord(t *testing.T) {
	if got := SRVRecord("example.com", "mail.example.com", 995); got != "_pop3s._tcp.example.com. IN SRV 0 1 995 mail.example.com." {
		t.Fatal(got)
	}
}
