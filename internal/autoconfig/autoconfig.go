// Package autoconfig tells mail clients how to reach Postie's POP3 server,
// so the owner types only an address and a password: Thunderbird's
// autoconfig (served for autoconfig.<domain> and at
// /.well-known/autoconfig/mail/config-v1.1.xml; K-9 and others read it too)
// and, for Outlook, the Autodiscover POX answer. Both describe POP3 on port
// 995 with implicit TLS and a normal password. There is no outgoing server:
// Postie does not send mail, so clients ask for the owner's provider's.
package autoconfig

import (
	"bytes"
	"encoding/xml"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// Handler answers autoconfig requests for the given domains.
type Handler struct {
	hostname string          // the POP3 server's name
	port     int             // its implicit-TLS port
	domains  map[string]bool // lower case
}

// New returns a Handler describing POP3S at hostname:port for domains.
func New(hostname string, port int, domains []string) *Handler {
	h := &Handler{hostname: hostname, port: port, domains: map[string]bool{}}
	for _, d := range domains {
		h.domains[strings.ToLower(d)] = true
	}
	return h
}

// Names returns the host names clients look up: autoconfig.<domain> for each
// domain. They need DNS records and certificates.
func (h *Handler) Names() []string {
	var out []string
	for d := range h.domains {
		out = append(out, "autoconfig."+d)
	}
	return out
}

// Paths answered by the Handler.
const (
	thunderbirdPath = "/mail/config-v1.1.xml"
	wellKnownPath   = "/.well-known/autoconfig/mail/config-v1.1.xml"
	autodiscover    = "/autodiscover/autodiscover.xml"
)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.ToLower(r.URL.Path)
	switch path {
	case thunderbirdPath, wellKnownPath:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		domain := h.domainOf(r.Host, r.URL.Query().Get("emailaddress"))
		if domain == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/xml; charset=utf-8")
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(h.thunderbird(domain))
	case autodiscover:
		if r.Method != http.MethodPost && r.Method != http.MethodGet {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		email := requestedAddress(r)
		domain := h.domainOf(r.Host, email)
		if domain == "" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/xml; charset=utf-8")
		w.Write(h.outlook(email))
	default:
		http.NotFound(w, r)
	}
}

// domainOf picks the mail domain of a request: from the address the client
// asks about, else from the Host (autoconfig.<domain>, autodiscover.<domain>
// or the domain itself). It returns "" for a domain that is not ours.
func (h *Handler) domainOf(host, email string) string {
	if at := strings.LastIndexByte(email, '@'); at >= 0 {
		d := strings.ToLower(strings.TrimSuffix(email[at+1:], "."))
		if h.domains[d] {
			return d
		}
		return ""
	}
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, p := range []string{"autoconfig.", "autodiscover.", ""} {
		if d := strings.TrimPrefix(host, p); (p == "" || d != host) && h.domains[d] {
			return d
		}
	}
	return ""
}

// requestedAddress reads the address from an Autodiscover POX request body
// (bounded), or the emailaddress query parameter.
func requestedAddress(r *http.Request) string {
	if q := r.URL.Query().Get("emailaddress"); q != "" {
		return q
	}
	if r.Body == nil {
		return ""
	}
	var req struct {
		Email string `xml:"Request>EMailAddress"`
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 16<<10))
	xml.Unmarshal(body, &req)
	return strings.TrimSpace(req.Email)
}

type tbConfig struct {
	XMLName  xml.Name `xml:"clientConfig"`
	Version  string   `xml:"version,attr"`
	Provider struct {
		ID        string `xml:"id,attr"`
		Domain    string `xml:"domain"`
		Display   string `xml:"displayName"`
		Short     string `xml:"displayShortName"`
		Incoming  tbServer
		Pop3Extra struct{} `xml:"-"`
	} `xml:"emailProvider"`
}

type tbServer struct {
	XMLName  xml.Name `xml:"incomingServer"`
	Type     string   `xml:"type,attr"`
	Hostname string   `xml:"hostname"`
	Port     int      `xml:"port"`
	Socket   string   `xml:"socketType"`
	Username string   `xml:"username"`
	Auth     string   `xml:"authentication"`
	Pop3     struct {
		Leave bool `xml:"leaveMessagesOnServer"`
	} `xml:"pop3"`
}

// thunderbird returns the config-v1.1.xml document for a domain.
func (h *Handler) thunderbird(domain string) []byte {
	var c tbConfig
	c.Version = "1.1"
	c.Provider.ID = domain
	c.Provider.Domain = domain
	c.Provider.Display = domain + " mail (Postie)"
	c.Provider.Short = domain
	c.Provider.Incoming = tbServer{Type: "pop3", Hostname: h.hostname, Port: h.port, Socket: "SSL", Username: "%EMAILADDRESS%", Auth: "password-cleartext"}
	return marshal(c)
}

type adResponse struct {
	XMLName xml.Name `xml:"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006 Autodiscover"`
	Resp    struct {
		XMLName xml.Name `xml:"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a Response"`
		Account struct {
			Type     string `xml:"AccountType"`
			Action   string `xml:"Action"`
			Protocol struct {
				Type      string `xml:"Type"`
				Server    string `xml:"Server"`
				Port      int    `xml:"Port"`
				LoginName string `xml:"LoginName"`
				SPA       string `xml:"SPA"`
				SSL       string `xml:"SSL"`
				AuthReq   string `xml:"AuthRequired"`
			} `xml:"Protocol"`
		} `xml:"Account"`
	}
}

// outlook returns the Autodiscover POX answer describing POP3.
func (h *Handler) outlook(email string) []byte {
	var a adResponse
	a.Resp.Account.Type, a.Resp.Account.Action = "email", "settings"
	p := &a.Resp.Account.Protocol
	p.Type, p.Server, p.Port, p.LoginName = "POP3", h.hostname, h.port, email
	p.SPA, p.SSL, p.AuthReq = "off", "on", "on"
	return marshal(a)
}

func marshal(v any) []byte {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	enc := xml.NewEncoder(&b)
	enc.Indent("", "  ")
	enc.Encode(v)
	b.WriteByte('\n')
	return b.Bytes()
}

// SRVRecord returns the RFC 6186 record that points clients at POP3S:
//
//	_pop3s._tcp.example.com. IN SRV 0 1 995 mail.example.com.
func SRVRecord(domain, hostname string, port int) string {
	return "_pop3s._tcp." + domain + ". IN SRV 0 1 " + strconv.Itoa(port) + " " + hostname + "."
}
