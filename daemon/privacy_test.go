package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/attest"
	"github.com/edgeaudit/edgeaudit/audit"
)

// recordingSink commits instantly and remembers the encoded events.
type recordingSink struct {
	mu     sync.Mutex
	events []string
}

func (s *recordingSink) Append(_ context.Context, e *audit.Event, done func(error)) error {
	if e.ID == "" {
		e.ID = audit.NewID(time.Now())
	}
	s.mu.Lock()
	s.events = append(s.events, string(e.AppendJSON(nil)))
	s.mu.Unlock()
	if done != nil {
		done(nil)
	}
	return nil
}

func TestRevealIsAuditedBeforeTheValue(t *testing.T) {
	cfg := testConfig(t)
	cfg.Privacy.Vault = true
	p, err := openPrivacy(&cfg, testDataKey(t, &cfg), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { p.runVault(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	const mrn = "MRN-0042^^^HOSP"
	token := p.tok.Token(audit.IDPatient, mrn)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, err := p.vault.Get(token); err == nil && v == mrn {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token not in the vault within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	sink := &recordingSink{}
	h := revealHandler(p, sink, "secret-admin-token-0123456789abcdef")
	tests := []struct {
		name, auth, token string
		want              int
		recorded          bool
	}{
		{"no admin token", "", token, http.StatusUnauthorized, false},
		{"wrong admin token", "Bearer nope", token, http.StatusUnauthorized, false},
		{"unknown token", "Bearer secret-admin-token-0123456789abcdef", "pat_00000000000000000000000000000000", http.StatusNotFound, true},
		{"reveal", "Bearer secret-admin-token-0123456789abcdef", token, http.StatusOK, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(sink.events)
			body := `{"token":"` + tt.token + `","by":"privacy.officer","reason":"patient request #7"}`
			req := httptest.NewRequest("POST", "/v1/token/reveal", strings.NewReader(body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			h(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status=%d, want %d (%s)", rec.Code, tt.want, rec.Body)
			}
			if got := len(sink.events) > before; got != tt.recorded {
				t.Fatalf("recorded=%v, want %v", got, tt.recorded)
			}
			if !tt.recorded {
				return
			}
			ev := sink.events[len(sink.events)-1]
			if !strings.Contains(ev, `"action":"audit.token_reveal"`) || !strings.Contains(ev, tt.token) || !strings.Contains(ev, "privacy.officer") {
				t.Fatalf("reveal event %s lacks action, token or requester", ev)
			}
			if strings.Contains(ev, "MRN-0042") {
				t.Fatalf("reveal event holds the identifier: %s", ev)
			}
			if tt.want == http.StatusOK {
				var out map[string]string
				json.Unmarshal(rec.Body.Bytes(), &out)
				if out["value"] != mrn {
					t.Fatalf("value=%q, want %q", out["value"], mrn)
				}
			}
		})
	}
}

func TestPrivacyConfigValidate(t *testing.T) {
	two := []audit.IDDomain{{Name: "HOSP", Authorities: []string{"HOSP", "HOSP&1.2.3&ISO"}}, {Name: "CLINIC", Authorities: []string{"urn:oid:2.16.840.1.113883.3.7"}}}
	tests := []struct {
		name string
		cfg  PrivacyConfig
		want []string // substrings of the error; none: valid
	}{
		{"zero", PrivacyConfig{}, nil},
		{"two domains", PrivacyConfig{IDDomains: two}, nil},
		{"one domain without spellings", PrivacyConfig{IDDomains: []audit.IDDomain{{Name: "HOSP"}}}, nil},
		{"bad domain name", PrivacyConfig{IDDomains: []audit.IDDomain{{Name: "a b", Authorities: []string{"X"}}}}, []string{"privacy.id_domains[0].name"}},
		{"repeated name", PrivacyConfig{IDDomains: []audit.IDDomain{two[0], two[0]}}, []string{"privacy.id_domains[1].name", "privacy.id_domains[1].authorities[0]"}},
		{"no spelling among two", PrivacyConfig{IDDomains: []audit.IDDomain{two[0], {Name: "B"}}}, []string{"privacy.id_domains[1].authorities"}},
		{"one spelling, two domains", PrivacyConfig{IDDomains: []audit.IDDomain{two[0], {Name: "B", Authorities: []string{"x", " hosp "}}}}, []string{`privacy.id_domains[1].authorities[1]: " hosp "`}},
		{"empty spelling", PrivacyConfig{IDDomains: []audit.IDDomain{{Name: "A", Authorities: []string{" "}}, two[1]}}, []string{"privacy.id_domains[0].authorities[0]"}},
		{"good pattern", PrivacyConfig{IdentifierPatterns: []audit.IdentifierPattern{{Name: "mrn", Pattern: `M\d{7}`}}}, nil},
		{"bad pattern", PrivacyConfig{IdentifierPatterns: []audit.IdentifierPattern{{Name: "mrn", Pattern: `M\d{7}`}, {Name: "acc", Pattern: `(`}}}, []string{`privacy.identifier_patterns[1].pattern: "(": not a valid RE2 regular expression: missing closing )`}},
		{"pattern matching nothing at all", PrivacyConfig{IdentifierPatterns: []audit.IdentifierPattern{{Name: "any", Pattern: `.*`}}}, []string{`privacy.identifier_patterns[0]: "any"`, "empty"}},
		{"bad rule", PrivacyConfig{RedactRules: []audit.RedactRule{{Name: "x", Pattern: "nogroup"}}}, []string{"privacy.redact_rules[0].pattern", "capture group"}},
		{"every bad rule", PrivacyConfig{RedactRules: []audit.RedactRule{{Name: "x", Pattern: `M(\d+`}, {Name: "ok", Pattern: `(M\d+)`}, {Name: "y", Pattern: `a[`}}},
			[]string{`privacy.redact_rules[0].pattern: "M(\d+": not a valid RE2 regular expression: missing closing )`, `privacy.redact_rules[2].pattern: "a[": not a valid RE2 regular expression: missing closing ]`}},
		{"seen off", PrivacyConfig{SeenIDs: -1}, nil},
		{"seen negative", PrivacyConfig{SeenIDs: -2}, []string{"privacy.seen_ids"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("err=%v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("err=nil, want one naming %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err=%q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestPrivacyFromConfigFile: the keys load from YAML and openPrivacy wires them: two
// domains keep one MRN apart per domain but join the spellings of one domain; a site
// pattern and an id seen in a structured message are redacted from free text.
func TestPrivacyFromConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edgeaudit.yaml")
	yaml := `site: s1
device: d1
data_dir: data
privacy:
  id_domains:
    - name: HOSP
      authorities: ["HOSP", "HOSP&1.2.840.99.1&ISO", "https://hosp.example/mrn"]
    - name: CLINIC
      authorities: ["CLIN", "urn:oid:1.2.840.99.2"]
  identifier_patterns:
    - {name: site-mrn, pattern: 'M\d{7}', kind: pat}
  seen_ids: 1000
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	p, err := openPrivacy(&cfg, testDataKey(t, &cfg), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()

	hl7 := p.tok.PatientToken("12345678", "HOSP&1.2.840.99.1&ISO")
	tokens := []struct {
		name      string
		got       string
		sameAsHL7 bool
	}{
		{"FHIR system of the same domain", p.tok.PatientToken("12345678", "https://hosp.example/mrn/"), true},
		{"OID alone", p.tok.PatientToken("12345678", "1.2.840.99.1"), true},
		{"syslog, no authority", p.tok.PatientToken(`"12345678"`, ""), true},
		{"whole CX", p.tok.PatientToken("12345678^^^HOSP", ""), true},
		{"same MRN, other domain", p.tok.PatientToken("12345678", "CLIN"), false},
		{"other domain by FHIR system", p.tok.PatientToken("12345678", "urn:oid:1.2.840.99.2"), false},
	}
	for _, tt := range tokens {
		if got := tt.got == hl7; got != tt.sameAsHL7 {
			t.Errorf("%s: same token=%v, want %v", tt.name, got, tt.sameAsHL7)
		}
	}
	if got, want := p.tok.PatientToken("12345678", "CLIN"), p.tok.PatientToken("12345678", "urn:oid:1.2.840.99.2"); got != want {
		t.Errorf("CLINIC spellings differ: %s vs %s", got, want)
	}
	before := p.tok.UnknownAuthorities()
	if got := p.tok.PatientToken("12345678", "ELSEWHERE"); got != hl7 {
		t.Errorf("unknown authority: token %s, want the home domain's %s", got, hl7)
	}
	p.tok.PatientToken("12345679", "ELSEWHERE")
	if got, want := p.tok.UnknownAuthorities(), before+2; got != want {
		t.Errorf("unknown authorities=%d, want %d", got, want)
	}
	if got := strings.Count(logs.String(), "authority=ELSEWHERE"); got != 1 {
		t.Errorf("unknown authority logged %d times, want once: %s", got, logs.String())
	}
	if strings.Contains(logs.String(), "1234567") {
		t.Errorf("log holds the identifier: %s", logs.String())
	}

	p.tok.PatientToken("4471029", "CLIN") // seen in a structured message
	got, n := p.redact.Redact("moved 4471029 and M1234567 to archive")
	want := "moved " + p.tok.PatientToken("4471029", "CLIN") + " and " + p.tok.PatientToken("M1234567", "") + " to archive"
	if got != want || n != 2 {
		t.Errorf("Redact=%q (%d), want %q (2)", got, n, want)
	}
	if got := len(p.metrics()); got != 2 {
		t.Errorf("metrics=%d, want 2 (unknown authorities, seen ids)", got)
	}
}

// testDataKey is the software data key of cfg's data folder.
func testDataKey(t *testing.T, cfg *Config) []byte {
	t.Helper()
	k, _, err := attest.LoadOrCreateDataKey(cfg.DataKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	return k
}
