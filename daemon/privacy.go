package daemon

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"regexp/syntax"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/internal/configerr"
	"github.com/edgeaudit/edgeaudit/vault"
)

// PrivacyConfig is the `privacy:` section.
type PrivacyConfig struct {
	// Vault keeps token → identifier pairs (encrypted) so that `edgeaudit token reveal`
	// can answer; off by default (minimum necessary).
	Vault bool `yaml:"vault"`
	// Redact turns the redaction of free text (syslog MSG) on; default true.
	Redact *bool `yaml:"redact"`
	// RedactRules replace the default rules when set.
	RedactRules []audit.RedactRule `yaml:"redact_rules"`
	// IDDomains are the site's patient identifier domains (assigning authorities), the
	// site's own first. Empty or one: a patient id is tokenized by its value alone, from
	// every source. Two or more: the id's authority picks the domain, so one MRN in two
	// domains gives two tokens while the spellings of one domain (HL7 CX.4 "HOSP", FHIR
	// "urn:oid:1.2.3") give one; an id without authority is the first domain's, and one
	// with an authority no domain names is too, counted in
	// edgeaudit_patient_id_unknown_authority_total.
	IDDomains []audit.IDDomain `yaml:"id_domains"`
	// IdentifierPatterns are the site's own identifier formats (RE2, each matching one
	// whole word, e.g. `M\d{7}` for its MRNs), recognized anywhere in free text.
	IdentifierPatterns []audit.IdentifierPattern `yaml:"identifier_patterns"`
	// SeenIDs bounds the in-memory set of identifiers seen in structured messages, which
	// redaction recognizes when they reappear in free text (about 60 bytes an entry);
	// 0 means DefaultSeenIDs, -1 turns the set off.
	SeenIDs int `yaml:"seen_ids"`
}

// DefaultSeenIDs is the default bound of the seen-identifier set (about 6 MiB).
const DefaultSeenIDs = audit.DefaultSeenMax

// RedactEnabled reports the effective setting.
func (p PrivacyConfig) RedactEnabled() bool { return p.Redact == nil || *p.Redact }

// Validate checks the section; every error names its key under privacy (a bad
// pattern as privacy.redact_rules[i].pattern), and every bad rule is reported.
func (p PrivacyConfig) Validate() error {
	var errs []error
	// A throwaway key: only the checks of the tokenizer and redactor are wanted.
	tok, err := audit.NewTokenizer(make([]byte, 32))
	if err != nil {
		return err
	}
	if err := tok.SetIDDomains(p.IDDomains); err != nil {
		errs = append(errs, prefixErrors("privacy.", err)...)
	}
	// Each rule alone first, so that every bad one is named; the redactor's own checks
	// (how many rules) then cover the whole.
	ruleErrs := 0
	for i, r := range p.RedactRules {
		key := fmt.Sprintf("privacy.redact_rules[%d]", i)
		if _, err := audit.NewRedactor(tok, []audit.RedactRule{r}); err != nil {
			ruleErrs++
			if re, cerr := regexp.Compile(r.Pattern); cerr != nil {
				errs = append(errs, &configerr.Error{Field: key + ".pattern", Value: r.Pattern, Err: fmt.Errorf("not a valid RE2 regular expression: %v", regexpReason(cerr))})
			} else if re.NumSubexp() < 1 {
				errs = append(errs, &configerr.Error{Field: key + ".pattern", Value: r.Pattern, Err: errors.New("needs a capture group (...) around the identifier")})
			} else {
				errs = append(errs, &configerr.Error{Field: key, Value: r.Name, Err: err})
			}
		}
	}
	if ruleErrs == 0 {
		if _, err := audit.NewRedactor(tok, p.Rules()); err != nil {
			errs = append(errs, &configerr.Error{Field: "privacy.redact_rules", Err: err})
		}
	}
	for i, ip := range p.IdentifierPatterns {
		key := fmt.Sprintf("privacy.identifier_patterns[%d]", i)
		r, _ := audit.NewRedactor(tok, nil)
		if err := r.SetIdentifierPatterns([]audit.IdentifierPattern{ip}); err != nil {
			if _, cerr := regexp.Compile(ip.Pattern); cerr != nil {
				errs = append(errs, &configerr.Error{Field: key + ".pattern", Value: ip.Pattern, Err: fmt.Errorf("not a valid RE2 regular expression: %v", regexpReason(cerr))})
			} else {
				_, msg, _ := strings.Cut(err.Error(), "): ")
				errs = append(errs, &configerr.Error{Field: key, Value: ip.Name, Err: errors.New(msg)})
			}
		}
	}
	if p.SeenIDs < -1 || p.SeenIDs > 10_000_000 {
		errs = append(errs, &configerr.Error{Field: "privacy.seen_ids", Value: fmt.Sprint(p.SeenIDs), Err: errors.New("must be -1 (off), 0 (default 100000) or at most 10000000")})
	}
	return errors.Join(errs...)
}

// regexpReason is what is wrong with a pattern: the regexp error without its "error
// parsing regexp: " prefix and the pattern it repeats.
func regexpReason(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) {
		return se.Code.String()
	}
	return strings.TrimPrefix(err.Error(), "error parsing regexp: ")
}

// prefixErrors puts prefix before each of err's joined errors.
func prefixErrors(prefix string, err error) []error {
	var errs []error
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range u.Unwrap() {
			errs = append(errs, fmt.Errorf("%s%w", prefix, e))
		}
		return errs
	}
	return []error{fmt.Errorf("%s%w", prefix, err)}
}

// Rules returns the configured or default rules.
func (p PrivacyConfig) Rules() []audit.RedactRule {
	if len(p.RedactRules) > 0 {
		return p.RedactRules
	}
	return audit.DefaultRedactRules
}

// DataKeyPath is the tokenizer's key.
func (c *Config) DataKeyPath() string { return filepath.Join(c.DataDir, "keys", "data.key") }

// VaultPath is the token vault.
func (c *Config) VaultPath() string { return filepath.Join(c.DataDir, "vault.db") }

// AdminTokenPath is the secret a local CLI presents to the admin endpoint for privileged
// calls (token reveal). Who can read it (root, the service user) is who is privileged.
func (c *Config) AdminTokenPath() string { return filepath.Join(c.DataDir, "keys", "admin.token") }

// ActionTokenReveal is the self-audit action of a reveal.
const ActionTokenReveal = "audit.token_reveal"

// privacy holds the tokenizer, the redactor and the optional vault.
type privacy struct {
	tok    *audit.Tokenizer
	redact *audit.Redactor
	vault  *vault.Vault
	log    *slog.Logger

	seen sync.Map // tokens known to be in the vault
	ch   chan vault.Entry

	// seenIDs are the identifiers tokenized from structured fields, for redaction; nil
	// when redaction or the set is off.
	seenIDs *audit.SeenSet

	unknownMu sync.Mutex
	unknown   map[string]bool // authority spellings already logged
}

// maxUnknownLogged bounds the distinct unknown authority spellings logged (and kept).
const maxUnknownLogged = 64

// unknownAuthority logs, once per spelling, an assigning authority that no
// privacy.id_domains entry names: the admin adds it to the right domain. The authority
// names an issuer, not a patient; the identifier is never logged.
func (p *privacy) unknownAuthority(authority string) {
	p.unknownMu.Lock()
	defer p.unknownMu.Unlock()
	if p.unknown[authority] || len(p.unknown) >= maxUnknownLogged {
		return
	}
	if p.unknown == nil {
		p.unknown = map[string]bool{}
	}
	p.unknown[authority] = true
	if len(authority) > 128 {
		authority = authority[:128]
	}
	p.log.Warn("patient id authority matches no privacy.id_domains entry; tokenized as the first domain's",
		"authority", authority, "distinct", len(p.unknown))
}

// metrics are the privacy counters for the admin endpoint's registry.
func (p *privacy) metrics() []prometheus.Collector {
	ms := []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgeaudit_patient_id_unknown_authority_total",
			Help: "Patient identifiers whose assigning authority matched no privacy.id_domains entry (tokenized as the first domain's).",
		}, func() float64 { return float64(p.tok.UnknownAuthorities()) }),
	}
	if p.seenIDs != nil {
		ms = append(ms, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeaudit_seen_ids",
			Help: "Identifiers in the in-memory set that redaction recognizes in free text (bounded by privacy.seen_ids).",
		}, func() float64 { return float64(p.seenIDs.Len()) }))
	}
	return ms
}

// openPrivacy builds the tokenizer, redaction and vault on the data key (OpenKeys).
func openPrivacy(cfg *Config, key []byte, log *slog.Logger) (*privacy, error) {
	if err := cfg.Privacy.Validate(); err != nil {
		return nil, err
	}
	tok, err := audit.NewTokenizer(key)
	if err != nil {
		return nil, err
	}
	if err := tok.SetIDDomains(cfg.Privacy.IDDomains); err != nil {
		return nil, errors.Join(prefixErrors("privacy.", err)...)
	}
	p := &privacy{tok: tok, log: log}
	tok.OnUnknownAuthority(p.unknownAuthority)
	if cfg.Privacy.RedactEnabled() {
		if p.redact, err = audit.NewRedactor(tok, cfg.Privacy.Rules()); err != nil {
			return nil, fmt.Errorf("privacy.redact_rules: %w", err)
		}
		if err := p.redact.SetIdentifierPatterns(cfg.Privacy.IdentifierPatterns); err != nil {
			return nil, fmt.Errorf("privacy.%w", err)
		}
		// The seen set serves only redaction: without it nothing would read it.
		if n := cfg.Privacy.SeenIDs; n >= 0 {
			p.seenIDs = audit.NewSeenSet(n)
			tok.SetSeen(p.seenIDs)
			p.redact.SetSeen(p.seenIDs)
		}
	}
	if cfg.Privacy.Vault {
		if p.vault, err = vault.Open(cfg.VaultPath(), key, false); err != nil {
			return nil, err
		}
		p.ch = make(chan vault.Entry, 4096)
		tok.Observe(p.observe)
	}
	return p, nil
}

// observe queues a new (token, value) pair for the vault without blocking; a pair that
// does not fit is simply offered again the next time the identifier is seen.
func (p *privacy) observe(token, value string) {
	if _, ok := p.seen.Load(token); ok {
		return
	}
	select {
	case p.ch <- vault.Entry{Token: token, Value: value}:
	default:
	}
}

// runVault writes queued pairs in batches until ctx is done.
func (p *privacy) runVault(ctx context.Context) {
	if p.vault == nil {
		return
	}
	for {
		var batch []vault.Entry
		select {
		case e := <-p.ch:
			batch = append(batch, e)
		case <-ctx.Done():
			// Keep what is queued: the events naming these tokens are already committed.
			for {
				select {
				case e := <-p.ch:
					batch = append(batch, e)
				default:
					if len(batch) > 0 {
						if err := p.vault.Put(batch); err != nil {
							p.log.Error("write token vault at shutdown", "entries", len(batch), "err", err)
						}
					}
					return
				}
			}
		}
	more:
		for len(batch) < 1024 {
			select {
			case e := <-p.ch:
				batch = append(batch, e)
			default:
				break more
			}
		}
		if err := p.vault.Put(batch); err != nil {
			p.log.Error("write token vault", "entries", len(batch), "err", err)
			continue
		}
		for _, e := range batch {
			p.seen.Store(e.Token, struct{}{})
		}
	}
}

func (p *privacy) close() error {
	if p.vault != nil {
		return p.vault.Close()
	}
	return nil
}

// ensureAdminToken creates the admin secret (0600) if missing and returns it.
func ensureAdminToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("admin token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	t := hex.EncodeToString(raw[:])
	if err := atomicfile.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return t, nil
}

// RevealRequest is the body of POST /v1/token/reveal.
type RevealRequest struct {
	Token string `json:"token"`
	// By names the person asking (the CLI sends the login name); recorded in the chain.
	By string `json:"by"`
	// Reason is why (recorded in the chain).
	Reason string `json:"reason"`
}

// RevealEvent is the self-audit event of a reveal at now: who, why, which token; never
// the value.
func RevealEvent(req RevealRequest, found bool, now time.Time) audit.Event {
	now = now.UTC()
	e := audit.Event{
		Time:     now,
		Received: now,
		Source:   audit.Source{Kind: audit.KindSelf, Transport: "internal", App: "edgeaudit"},
		Action:   ActionTokenReveal,
		Outcome:  audit.OutcomeSuccess,
		Actor:    audit.Actor{User: req.By, Requestor: true},
		Reason:   req.Reason,
		Detail:   map[string]string{"token": req.Token},
	}
	if !found {
		e.Outcome = audit.OutcomeMinorFailure
		e.Detail["result"] = "not_found"
	}
	if strings.HasPrefix(req.Token, audit.IDPatient+"_") {
		e.Patient = req.Token
	}
	return e
}

// adminAuthorized checks the admin token a local CLI presents (keys/admin.token) on a
// privileged request, and answers 401 when it is missing or wrong.
func adminAuthorized(w http.ResponseWriter, r *http.Request, adminToken string) bool {
	got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if subtle.ConstantTimeCompare([]byte(got), []byte(adminToken)) != 1 {
		http.Error(w, "admin token required", http.StatusUnauthorized)
		return false
	}
	return true
}

// revealHandler answers privileged reveals: the caller must present the admin token; the
// reveal is committed to the chain before the value is returned.
func revealHandler(p *privacy, sink collectors.Sink, adminToken string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !adminAuthorized(w, r, adminToken) {
			return
		}
		if p.vault == nil {
			http.Error(w, "the token vault is off (privacy.vault: false)", http.StatusNotFound)
			return
		}
		var req RevealRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil || req.Token == "" {
			http.Error(w, "body must be {\"token\":...,\"by\":...,\"reason\":...}", http.StatusBadRequest)
			return
		}
		value, err := p.vault.Get(req.Token)
		found := err == nil
		if err != nil && !errors.Is(err, vault.ErrNotFound) {
			http.Error(w, "vault: "+err.Error(), http.StatusInternalServerError)
			return
		}
		ev := RevealEvent(req, found, time.Now())
		if err := collectors.AppendSync(r.Context(), sink, &ev); err != nil {
			http.Error(w, "could not record the reveal; nothing revealed", http.StatusServiceUnavailable)
			return
		}
		if !found {
			http.Error(w, "token not in the vault", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"token": req.Token, "value": value, "event_id": ev.ID})
	}
}
