package audit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"sync/atomic"
)

// Identifier kinds: each is its own token namespace, so the same string as a patient id
// and as an accession number gives unrelated tokens.
const (
	IDPatient   = "pat"  // patient identifiers (PID-3, ParticipantObjectID of a patient, FHIR Patient id)
	IDName      = "name" // person names of patients
	IDBirthDate = "dob"  // birth dates, when a site keeps them as tokens rather than age bands
	IDAccession = "acc"  // accession numbers
	IDStudy     = "stu"  // Study Instance UIDs
	IDOrder     = "ord"  // placer/filler order numbers
	IDText      = "txt"  // identifiers found by redaction rules inside free text
)

// TokenLen is the number of hex digits of a token's MAC: 128 bits, far beyond any site's
// number of identifiers, short enough to read.
const TokenLen = 32

// Tokenizer replaces identifiers by keyed tokens: HMAC-SHA-256 under the site's data key
// over kind, a zero byte and the normalized value. It is deterministic (one patient has
// one token per site, so events still correlate) and one-way without the key. Safe for
// concurrent use once configured (Observe, SetIDDomains, SetSeen are called before the
// tokenizer is shared).
type Tokenizer struct {
	pool sync.Pool
	// observe, when set, sees every (token, value) pair: the vault keeps them so that a
	// privacy officer can reveal a token. It must not block.
	observe func(token, value string)

	// domains maps every normalized authority spelling to its domain's index in
	// domainNames; domainNames[0] is the home domain. Empty: one domain, authorities
	// are ignored.
	domains     map[string]int
	domainNames []string
	unknown     atomic.Uint64 // patient ids whose authority matched no domain
	// onUnknown, when set, sees the spelling of each such authority (not PHI: the
	// name of an issuer). It must not block.
	onUnknown func(authority string)

	// seen, when set, remembers the identifiers tokenized from structured fields so the
	// redactor can recognize them in free text.
	seen *SeenSet
}

// IDDomain is one patient identifier domain of the site (an assigning authority, an
// issuer of patient ids): the name it goes by in tokens and every spelling of it the
// sources use.
type IDDomain struct {
	// Name is the domain's own name (1-64 letters, digits, '.', '_', '-'); it is part of
	// the MAC input of the tokens of every domain but the first.
	Name string `yaml:"name"`
	// Authorities are the spellings that mean this domain: an HL7 CX.4 namespace
	// ("HOSP"), a whole HD ("HOSP&1.2.3&ISO"), an OID ("1.2.3"), a FHIR identifier system
	// ("urn:oid:1.2.3", "https://hosp.example/mrn"). An HD also matches its namespace and
	// its universal id alone; an OID matches "urn:oid:<oid>" and the other way round.
	// Compared without regard to ASCII case and a trailing '/'.
	Authorities []string `yaml:"authorities"`
}

// Observe registers fn to see every token made, before the tokenizer is shared.
func (t *Tokenizer) Observe(fn func(token, value string)) { t.observe = fn }

// NewTokenizer uses key (at least 32 bytes) as the data key.
func NewTokenizer(key []byte) (*Tokenizer, error) {
	if len(key) < 32 {
		return nil, errors.New("tokenizer: data key shorter than 32 bytes")
	}
	k := append([]byte(nil), key...)
	return &Tokenizer{pool: sync.Pool{New: func() any { return hmac.New(sha256.New, k) }}}, nil
}

// Token returns "<kind>_<32 hex digits>" for value, or "" for an empty value. Values are
// trimmed of surrounding space; case is kept (identifiers are case-sensitive in HL7 and
// DICOM), except for names, which are upper-cased so "Doe^John" and "DOE^JOHN" match.
// Patient, accession, order and study identifiers are remembered in the seen set, if
// one is set.
func (t *Tokenizer) Token(kind, value string) string {
	value = strings.TrimSpace(value)
	if value == "" {
		return ""
	}
	if kind == IDName {
		value = strings.ToUpper(value)
	}
	return t.token(kind, "", value)
}

// token computes the token of an already normalized value; domain "" is the home domain.
func (t *Tokenizer) token(kind, domain, value string) string {
	var sum [sha256.Size]byte
	t.mac(&sum, kind, domain, value)
	tok := kind + "_" + hex.EncodeToString(sum[:TokenLen/2])
	if t.seen != nil {
		switch kind {
		case IDPatient, IDAccession, IDOrder, IDStudy:
			t.seen.Add(value, tok)
		}
	}
	if t.observe != nil {
		if domain != "" {
			// The vault shows which domain the identifier is of, in the CX form.
			t.observe(tok, value+"^^^"+domain)
		} else {
			t.observe(tok, value)
		}
	}
	return tok
}

// mac writes HMAC(kind [ "@" domain ] 0x00 value) to sum. Domain names hold no zero
// byte (the config checks them), so the input is unambiguous, and tokens of the home
// domain are those of a site with one domain: adding a second domain later keeps the
// home patients' tokens.
func (t *Tokenizer) mac(sum *[sha256.Size]byte, kind, domain, value string) {
	m := t.pool.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(kind))
	if domain != "" {
		m.Write([]byte{'@'})
		m.Write([]byte(domain))
	}
	m.Write([]byte{0})
	m.Write([]byte(value))
	m.Sum(sum[:0])
	t.pool.Put(m)
}

// PatientToken is the token of a patient identifier from any source: value is the ID
// itself (HL7 CX.1, DICOM ParticipantObjectID without its ^^^ suffix, a FHIR
// identifier's value or a Patient resource id, syslog PatientID=), authority is the
// assigning authority or identifier system as the source names it, "" if none.
//
// The value is normalized: surrounding space and one pair of surrounding quotes are
// removed, and a whole CX ("12345^^^HOSP&1.2.3&ISO") is split into its ID and its
// assigning authority (CX.4) when no authority is given; case is kept. While the site
// has at most one identifier domain only the value is tokenized, so the same patient
// gets the same token from every source. With two or more domains (SetIDDomains), the
// authority picks the domain: the first domain's tokens are those of the value alone,
// every other domain's are qualified by its name, so one MRN in two domains gives two
// tokens while "HOSP" (HL7) and "urn:oid:1.2.3" (FHIR) of one domain give one. An
// identifier with no authority belongs to the first (home) domain; one whose authority
// matches no domain is tokenized as the home domain's too and counted
// (UnknownAuthorities), so that the admin can add the spelling.
func (t *Tokenizer) PatientToken(value, authority string) string {
	value, authority = normalizeID(value, authority)
	if value == "" {
		return ""
	}
	return t.token(IDPatient, t.domainOf(authority), value)
}

// normalizeID trims value and authority, removes one pair of surrounding quotes, and
// splits a whole CX value into CX.1 and CX.4 when authority is empty.
func normalizeID(value, authority string) (string, string) {
	value = unquote(strings.TrimSpace(value))
	if i := strings.IndexByte(value, '^'); i >= 0 {
		cx := value
		value = strings.TrimSpace(cx[:i])
		if authority == "" {
			// CX.1 ^ CX.2 ^ CX.3 ^ CX.4: the authority is the fourth component.
			if parts := strings.SplitN(cx, "^", 5); len(parts) >= 4 {
				authority = parts[3]
			}
		}
	}
	return value, unquote(strings.TrimSpace(authority))
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		return strings.TrimSpace(s[1 : len(s)-1])
	}
	return s
}

// domainOf returns the domain name to qualify tokens with: "" for the home domain, for
// no authority, for an unknown one and whenever fewer than two domains are configured.
func (t *Tokenizer) domainOf(authority string) string {
	if authority == "" || len(t.domainNames) == 0 {
		return ""
	}
	i, ok := t.lookupAuthority(authority)
	if !ok {
		t.unknown.Add(1)
		if t.onUnknown != nil {
			t.onUnknown(authority)
		}
		return ""
	}
	if i == 0 || len(t.domainNames) < 2 {
		return ""
	}
	return t.domainNames[i]
}

func (t *Tokenizer) lookupAuthority(a string) (int, bool) {
	for _, k := range authorityKeys(a) {
		if i, ok := t.domains[k]; ok {
			return i, true
		}
	}
	return 0, false
}

// authorityKeys returns the lookup keys of one authority spelling, most specific first:
// the whole spelling, then for an HD its universal id and its namespace, for
// "urn:oid:X" the OID X, for an OID "urn:oid:X". Lower case, no trailing '/'.
func authorityKeys(a string) []string {
	a = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(a)), "/")
	if a == "" {
		return nil
	}
	keys := []string{a}
	if strings.Contains(a, "&") {
		parts := strings.Split(a, "&")
		if len(parts) > 1 && parts[1] != "" {
			keys = append(keys, parts[1], "urn:oid:"+parts[1])
		}
		if parts[0] != "" {
			keys = append(keys, parts[0])
		}
		return keys
	}
	if oid, ok := strings.CutPrefix(a, "urn:oid:"); ok && oid != "" {
		return append(keys, oid)
	}
	if isOID(a) {
		keys = append(keys, "urn:oid:"+a)
	}
	return keys
}

func isOID(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return strings.Contains(s, ".")
}

// SetIDDomains configures the site's patient identifier domains, before the tokenizer
// is shared; the first is the home domain. An error names the domain (by index) that is
// wrong: an empty or repeated name, a name with characters other than letters, digits,
// '.', '_', '-', an empty authority, or a spelling that two domains claim.
func (t *Tokenizer) SetIDDomains(domains []IDDomain) error {
	m := map[string]int{}
	var names []string
	seenName := map[string]bool{}
	var errs []error
	for i, d := range domains {
		if !validDomainName(d.Name) {
			errs = append(errs, fmt.Errorf("id_domains[%d].name: %q: must be 1-64 letters, digits, '.', '_' or '-'", i, d.Name))
		} else if seenName[d.Name] {
			errs = append(errs, fmt.Errorf("id_domains[%d].name: %q: repeats an earlier domain", i, d.Name))
		}
		seenName[d.Name] = true
		names = append(names, d.Name)
		if len(d.Authorities) == 0 && len(domains) > 1 {
			errs = append(errs, fmt.Errorf("id_domains[%d].authorities: empty: a domain needs at least one spelling", i))
		}
		for j, a := range d.Authorities {
			keys := authorityKeys(a)
			if len(keys) == 0 {
				errs = append(errs, fmt.Errorf("id_domains[%d].authorities[%d]: %q: empty", i, j, a))
				continue
			}
			// The whole spelling must be unclaimed; derived keys (an HD's parts) are
			// added where free and otherwise left to the first domain that has them.
			if k, ok := m[keys[0]]; ok && k != i {
				errs = append(errs, fmt.Errorf("id_domains[%d].authorities[%d]: %q: already names domain %q", i, j, a, domains[k].Name))
				continue
			}
			for _, k := range keys {
				if _, ok := m[k]; !ok {
					m[k] = i
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	t.domains, t.domainNames = m, names
	return nil
}

func validDomainName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// OnUnknownAuthority registers fn to see each authority that matches no domain, before
// the tokenizer is shared.
func (t *Tokenizer) OnUnknownAuthority(fn func(authority string)) { t.onUnknown = fn }

// UnknownAuthorities counts the patient identifiers whose authority matched none of the
// configured domains (each was tokenized as an identifier of the home domain).
func (t *Tokenizer) UnknownAuthorities() uint64 { return t.unknown.Load() }

// SetSeen makes the tokenizer remember in s every patient, accession, order and study
// identifier it tokenizes, before the tokenizer is shared.
func (t *Tokenizer) SetSeen(s *SeenSet) { t.seen = s }

// IsToken reports whether s has the shape of a token of kind.
func IsToken(kind, s string) bool {
	rest, ok := strings.CutPrefix(s, kind+"_")
	if !ok || len(rest) != TokenLen {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// AgeBand turns an age in years into the band stored instead of a birth date (minimum
// necessary): "0-1", "2-11", "12-17", "18-39", "40-64", "65-89", "90+" (HIPAA Safe
// Harbor groups every age over 89).
func AgeBand(years int) string {
	switch {
	case years < 0:
		return ""
	case years < 2:
		return "0-1"
	case years < 12:
		return "2-11"
	case years < 18:
		return "12-17"
	case years < 40:
		return "18-39"
	case years < 65:
		return "40-64"
	case years < 90:
		return "65-89"
	default:
		return "90+"
	}
}
