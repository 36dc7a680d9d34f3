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
