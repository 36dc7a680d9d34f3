package audit

import (
	"bytes"
	"strings"
	"testing"
)

func TestTokenizer(t *testing.T) {
	tok, err := NewTokenizer(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewTokenizer(bytes.Repeat([]byte{2}, 32))
	a := tok.Token(IDPatient, "12345^^^HOSP")
	tests := []struct {
		name string
		got  string
		same bool
	}{
		{"deterministic", tok.Token(IDPatient, "12345^^^HOSP"), true},
		{"trimmed", tok.Token(IDPatient, " 12345^^^HOSP "), true},
		{"other kind", tok.Token(IDAccession, "12345^^^HOSP"), false},
		{"other key", other.Token(IDPatient, "12345^^^HOSP"), false},
		{"case matters for ids", tok.Token(IDPatient, "12345^^^hosp"), false},
	}
	for _, tt := range tests {
		if got := tt.got == a; got != tt.same {
			t.Errorf("%s: token equal=%v, want %v (%s vs %s)", tt.name, got, tt.same, tt.got, a)
		}
	}
	if !IsToken(IDPatient, a) || strings.Contains(a, "12345") {
		t.Fatalf("token %q: wrong shape or leaks the value", a)
	}
	if got, want := tok.Token(IDName, "Doe^John"), tok.Token(IDName, "DOE^JOHN"); got != want {
		t.Errorf("names differ by case: %s vs %s", got, want)
	}
	if got := tok.Token(IDPatient, "  "); got != "" {
		t.Errorf("empty value token=%q, want empty", got)
	}
	if _, err := NewTokenizer([]byte("short")); err == nil {
		t.Error("short key accepted")
	}
}

func TestAgeBand(t *testing.T) {
	for _, tt := range []struct {
		years int
		want  string
	}{{-1, ""}, {0, "0-1"}, {11, "2-11"}, {17, "12-17"}, {39, "18-39"}, {64, "40-64"}, {89, "65-89"}, {90, "90+"}, {104, "90+"}} {
		if got := AgeBand(tt.years); got != tt.want {
			t.Errorf("AgeBand(%d)=%q, want %q", tt.years, got, tt.want)
		}
	}
}

func TestPatientTokenNormalizes(t *testing.T) {
	tok := testTokenizer(t)
	want := tok.PatientToken("12345678", "")
	tests := []struct {
		name, value, authority string
		same                   bool
	}{
		{"plain", "12345678", "", true},
		{"spaces", "  12345678\t", "", true},
		{"double quotes", `"12345678"`, "", true},
		{"single quotes", "' 12345678 '", "", true},
		{"whole CX", "12345678^^^HOSP&1.2.3&ISO^MR", "", true},
		{"authority ignored with one domain", "12345678", "urn:oid:1.2.3", true},
		{"same as Token of the value", tok.Token(IDPatient, "12345678"), "", false}, // a token is not its value
		{"case kept", "12345678a", "", false},
		{"other id", "12345679", "", false},
		{"inner quote kept", `"1234"5678"`, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tok.PatientToken(tt.value, tt.authority)
			if (got == want) != tt.same {
				t.Errorf("PatientToken(%q, %q)=%s, same as %s: %v, want %v", tt.value, tt.authority, got, want, got == want, tt.same)
			}
		})
	}
	if got, want := tok.PatientToken("12345678", ""), tok.Token(IDPatient, "12345678"); got != want {
		t.Errorf("single domain: PatientToken=%s, Token=%s; want equal (tokens stay what they were)", got, want)
	}
	for _, v := range []string{"", "  ", `""`, "^^^HOSP"} {
		if got := tok.PatientToken(v, "HOSP"); got != "" {
			t.Errorf("PatientToken(%q)=%q, want empty", v, got)
		}
	}
}

func TestPatientTokenDomains(t *testing.T) {
	tok := testTokenizer(t)
	single := tok.PatientToken("12345678", "")
	if err := tok.SetIDDomains([]IDDomain{
		{Name: "HOSP", Authorities: []string{"HOSP&1.2.3&ISO", "https://hosp.example/fhir/mrn"}},
		{Name: "CLINIC", Authorities: []string{"CLIN", "urn:oid:1.2.4"}},
	}); err != nil {
		t.Fatal(err)
	}
	home := tok.PatientToken("12345678", "HOSP")
	clinic := tok.PatientToken("12345678", "CLIN")
	if home != single {
		t.Errorf("home domain token %s, want the single-domain token %s (adding a domain keeps them)", home, single)
	}
	if home == clinic {
		t.Fatal("one MRN in two domains gave one token")
	}
	tests := []struct {
		name, value, authority, want string
		unknown                      uint64
	}{
		{"HL7 namespace of the HD", "12345678", "HOSP", home, 0},
		{"whole HD", "12345678", "HOSP&1.2.3&ISO", home, 0},
		{"HD universal id", "12345678", "1.2.3", home, 0},
		{"FHIR urn:oid of the HD", "12345678", "urn:oid:1.2.3", home, 0},
		{"FHIR URL, case and slash", "12345678", "HTTPS://hosp.example/fhir/mrn/", home, 0},
		{"HD of another spelling", "12345678", "&1.2.3&ISO", home, 0},
		{"no authority: home", "12345678", "", home, 0},
		{"clinic namespace", "12345678", "CLIN", clinic, 0},
		{"clinic OID from urn", "12345678", "1.2.4", clinic, 0},
		{"clinic urn", "12345678", "urn:oid:1.2.4", clinic, 0},
		{"clinic in a whole CX", "12345678^^^CLIN^MR", "", clinic, 0},
		{"clinic HD with the OID only", "12345678", "XYZ&1.2.4&ISO", clinic, 0},
		{"unknown authority: home, counted", "12345678", "urn:oid:9.9.9", home, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tok.UnknownAuthorities()
			if got := tok.PatientToken(tt.value, tt.authority); got != tt.want {
				t.Errorf("PatientToken(%q, %q)=%s, want %s", tt.value, tt.authority, got, tt.want)
			}
			if got := tok.UnknownAuthorities() - before; got != tt.unknown {
				t.Errorf("unknown authorities +%d, want +%d", got, tt.unknown)
			}
		})
	}
}

func TestSetIDDomainsErrors(t *testing.T) {
	tests := []struct {
		name    string
		domains []IDDomain
		want    string
	}{
		{"empty name", []IDDomain{{Name: "", Authorities: []string{"A"}}}, "id_domains[0].name"},
		{"name with space", []IDDomain{{Name: "A B", Authorities: []string{"A"}}}, "id_domains[0].name"},
		{"repeated name", []IDDomain{{Name: "A", Authorities: []string{"A"}}, {Name: "A", Authorities: []string{"B"}}}, "id_domains[1].name"},
		{"no spelling among two", []IDDomain{{Name: "A", Authorities: []string{"A"}}, {Name: "B"}}, "id_domains[1].authorities"},
		{"claimed twice", []IDDomain{{Name: "A", Authorities: []string{"1.2.3"}}, {Name: "B", Authorities: []string{"urn:oid:9", "1.2.3"}}}, "id_domains[1].authorities[1]"},
		{"claimed through the HD", []IDDomain{{Name: "A", Authorities: []string{"A&1.2.3&ISO"}}, {Name: "B", Authorities: []string{"1.2.3"}}}, "id_domains[1].authorities[0]"},
		{"empty spelling", []IDDomain{{Name: "A", Authorities: []string{""}}}, "id_domains[0].authorities[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := testTokenizer(t)
			err := tok.SetIDDomains(tt.domains)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err=%v, want one naming %s", err, tt.want)
			}
			if tok.domainNames != nil {
				t.Errorf("domains set despite the error")
			}
		})
	}
}

func TestVaultSeesTheDomain(t *testing.T) {
	tok := testTokenizer(t)
	got := map[string]string{}
	tok.Observe(func(token, value string) { got[token] = value })
	if err := tok.SetIDDomains([]IDDomain{{Name: "HOSP", Authorities: []string{"HOSP"}}, {Name: "CLINIC", Authorities: []string{"CLIN"}}}); err != nil {
		t.Fatal(err)
	}
	home, clinic := tok.PatientToken("123", "HOSP"), tok.PatientToken("123", "CLIN")
	if got[home] != "123" || got[clinic] != "123^^^CLINIC" {
		t.Errorf("vault values %q, %q; want %q, %q", got[home], got[clinic], "123", "123^^^CLINIC")
	}
}
