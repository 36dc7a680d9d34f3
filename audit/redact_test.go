package audit

import (
	"bytes"
	"strings"
	"testing"
)

func TestRedactDefaults(t *testing.T) {
	tok, _ := NewTokenizer(bytes.Repeat([]byte{7}, 32))
	r, err := NewRedactor(tok, DefaultRedactRules)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, in string
		gone     []string // must not survive
		kept     []string // must survive
		n        int
	}{
		{"mrn", "viewer opened study for MRN: 4711-22 by drsmith", []string{"4711-22"}, []string{"MRN: pat_", "drsmith"}, 1},
		{"patient id key=value", "query PatientID=ABC123 modality=CT", []string{"ABC123"}, []string{"modality=CT"}, 1},
		{"name", `patient_name="DOE^JANE" study opened`, []string{"DOE^JANE"}, []string{"study opened"}, 1},
		{"dob", "DOB: 1961-04-12 checked", []string{"1961-04-12"}, []string{"checked"}, 1},
		{"accession", "Accession# A20261127-9 stored", []string{"A20261127-9"}, []string{"stored"}, 1},
		{"ssn", "billing ref 123-45-6789 sent", []string{"123-45-6789"}, []string{"billing ref"}, 1},
		{"nothing", "sshd[42]: Accepted publickey for tech from 10.0.0.7 port 2222", nil, []string{"Accepted publickey for tech from 10.0.0.7 port 2222"}, 0},
		{"case-insensitive label", "mrn=77 and Mrn: 88", []string{"=77", ": 88"}, nil, 2},
		{"pid is a process id", "kernel: audit pid=4242 uid=0", nil, []string{"pid=4242"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n := r.Redact(tt.in)
			if n != tt.n {
				t.Errorf("replaced %d, want %d (%q)", n, tt.n, got)
			}
			for _, g := range tt.gone {
				if strings.Contains(got, g) {
					t.Errorf("%q survived in %q", g, got)
				}
			}
			for _, k := range tt.kept {
				if !strings.Contains(got, k) {
					t.Errorf("%q lost from %q", k, got)
				}
			}
		})
	}
}

func TestRedactRuleErrors(t *testing.T) {
	tok, _ := NewTokenizer(bytes.Repeat([]byte{7}, 32))
	for _, rule := range []RedactRule{{Name: "bad", Pattern: "("}, {Name: "nogroup", Pattern: "x"}} {
		if _, err := NewRedactor(tok, []RedactRule{rule}); err == nil || !strings.Contains(err.Error(), rule.Name) {
			t.Errorf("rule %s: err=%v, want one naming it", rule.Name, err)
		}
	}
}

func BenchmarkRedactNoHit(b *testing.B) {
	tok, _ := NewTokenizer(bytes.Repeat([]byte{7}, 32))
	r, _ := NewRedactor(tok, DefaultRedactRules)
	msg := "seq: 0000000042, thread: 0000, runid: 1795767051, stamp: 2026-11-27T08:10:51 PADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADDPADD"
	for b.Loop() {
		r.Redact(msg)
	}
}

func BenchmarkRedactTypical(b *testing.B) {
	tok, _ := NewTokenizer(bytes.Repeat([]byte{7}, 32))
	r, _ := NewRedactor(tok, DefaultRedactRules)
	msg := "Accepted publickey for tech01 from 10.20.30.40 port 51514 ssh2: ED25519 SHA256:Kx9fQm2zT7bLrW0vYp3sN8cJ4hD6gA1eU5iO"
	for b.Loop() {
		r.Redact(msg)
	}
}
