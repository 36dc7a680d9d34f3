package integration

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// TestClinicalNoPHIAtRest sends every DICOM, HL7 v2 and FHIR corpus sample through one
// daemon, stops it, and requires that no patient identifier, name, birth date or
// accession number of the samples is in the exported events (sealed and open) or
// anywhere in the raw bytes of the spool file.
func TestClinicalNoPHIAtRest(t *testing.T) {
	t.Parallel()
	clinicalCorpus(t)
	curl := peer(t, "curl", "CURL")
	ca := newPKI(t, t.TempDir(), "phi")
	d := startClinical(t, clinicalConfig{
		SyslogTLS: &serverTLS{Cert: ca.ServerCert, Key: ca.ServerKey, ClientCA: ca.CAFile},
		HL7:       true, FHIR: true, MaxBodyBytes: fhirTestMaxBody,
	})

	var phi []phiValue
	// DICOM over syslog TLS.
	sums := sendDICOMCorpus(t, d.tls, ca.clientTLS(t, ca.ClientCert, ca.ClientKey))
	for _, f := range corpusGlob(t, filepath.Join("dicom-audit", "*.xml")) {
		v, err := dicomPHIValues(mustRead(t, f))
		if err != nil {
			t.Fatalf("%s: test XML reader: %v", filepath.Base(f), err)
		}
		phi = append(phi, v...)
	}
	d.waitMetric(t, float64(len(sums)), "edgeaudit_syslog_received_total", "transport", "tls")
	// HL7 v2 over MLLP.
	hr := sendHL7Corpus(t, d.mllp)
	for _, s := range hl7Corpus(t) {
		v, err := hl7PHIValues(s.block)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		phi = append(phi, v...)
	}
	// FHIR over HTTP.
	fr := postFHIRCorpus(t, curl, "http://"+d.fhir+"/")
	for _, f := range corpusGlob(t, filepath.Join("fhir", "*", "*")) {
		phi = append(phi, fhirPHIValues(fhirTree(t, mustRead(t, f), fhirContentType(f)))...)
	}
	d.stop(t)

	evs := exportClinical(t, d.dataDir, true)
	var exported strings.Builder
	for _, e := range evs {
		exported.WriteString(e.line)
		exported.WriteByte('\n')
	}
	spool := mustRead(t, filepath.Join(d.dataDir, "spool.db"))

	seen := map[phiValue]bool{}
	var checked int
	for _, v := range phi {
		if seen[v] {
			continue
		}
		seen[v] = true
		checked++
		forms := []string{v.value}
		if esc := jsonEscaped(v.value); esc != v.value {
			forms = append(forms, esc)
		}
		for _, s := range forms {
			if containsPHI([]byte(exported.String()), s) {
				t.Errorf("exported events contain %s %q", v.kind, v.value)
			}
			if containsPHI(spool, s) {
				t.Errorf("spool.db contains %s %q", v.kind, v.value)
			}
		}
	}
	if checked < 50 {
		t.Errorf("only %d distinct PHI values extracted from the corpus; the extractors find too little", checked)
	}
	if n := len(eventsOfKind(evs, "dicom")); n != len(sums) {
		t.Errorf("%d dicom events, want %d", n, len(sums))
	}
	t.Logf("sent: %d DICOM, %d HL7 blocks (%d AA, %d AR), %d FHIR files (%d AuditEvents accepted, %d search sets re-posted); "+
		"%d events exported (%d dicom, %d hl7, %d fhir); %d distinct PHI values checked in the export and %d bytes of spool.db",
		len(sums), hr.sent, hr.aaBlocks, hr.arBlocks, fr.files, fr.events, fr.searchsets,
		len(evs), len(eventsOfKind(evs, "dicom")), len(eventsOfKind(evs, "hl7")), len(eventsOfKind(evs, "fhir")),
		checked, len(spool))
}

// containsPHI reports whether v occurs in b. A value of digits only counts only where it
// is not part of a longer run of digits: "22222" (a PID-3 of the corpus) is not found in
// a staff member's GLN 761322222222222222, which is kept in clear as it should be.
func containsPHI(b []byte, v string) bool {
	if !isDigits(v) {
		return bytes.Contains(b, []byte(v))
	}
	for off := 0; ; {
		i := bytes.Index(b[off:], []byte(v))
		if i < 0 {
			return false
		}
		i += off
		end := i + len(v)
		if (i == 0 || !isDigits(string(b[i-1]))) && (end == len(b) || !isDigits(string(b[end]))) {
			return true
		}
		off = i + 1
	}
}

// TestClinicalPHIExtractors keeps the PHI check honest: each extractor finds the values
// it is meant to guard.
func TestClinicalPHIExtractors(t *testing.T) {
	has := func(t *testing.T, got []phiValue, want ...string) {
		t.Helper()
		for _, w := range want {
			found := false
			for _, v := range got {
				found = found || v.value == w
			}
			if !found {
				t.Errorf("extractor misses %q: %v", w, got)
			}
		}
	}
	t.Run("dicom", func(t *testing.T) {
		got, err := dicomPHIValues([]byte(`<?xml version="1.0"?><AuditMessage>
<ParticipantObjectIdentification ParticipantObjectID="PID4711^^^HOSP" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">
<ParticipantObjectIDTypeCode csd-code="2"/><ParticipantObjectName>Doe^Janet</ParticipantObjectName></ParticipantObjectIdentification>
<ParticipantObjectIdentification ParticipantObjectID="MRN9988">
<ParticipantObjectIDTypeCode csd-code="2"/></ParticipantObjectIdentification>
<ParticipantObjectIdentification ParticipantObjectID="1.2.3.4" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">
<ParticipantObjectIDTypeCode csd-code="110180"/><ParticipantObjectDescription><Accession Number="ACC777"/></ParticipantObjectDescription>
</ParticipantObjectIdentification></AuditMessage>`))
		if err != nil {
			t.Fatal(err)
		}
		has(t, got, "PID4711^^^HOSP", "PID4711", "Doe^Janet", "Janet", "MRN9988", "ACC777")
		for _, v := range got {
			if v.value == "1.2.3.4" {
				t.Errorf("a study UID was taken for a patient id")
			}
		}
	})
	t.Run("hl7", func(t *testing.T) {
		got, err := hl7PHIValues([]byte("MSH|^~\\&|A|B|C|D|20261127||ADT^A01|C1|P|2.5\rPID|1||MRN4711^^^H~99887766^^^X||Doe^Janet||19800102|F\r" +
			"OBR|1|P1|F1|||||||||||||||ACCN9\rIPC|ACCN10\r"))
		if err != nil {
			t.Fatal(err)
		}
		has(t, got, "MRN4711", "99887766", "Janet", "19800102", "ACCN9", "ACCN10")
	})
	t.Run("digits", func(t *testing.T) {
		for _, tt := range []struct {
			b, v string
			want bool
		}{{"x 22222 y", "22222", true}, {"761322222222222222", "22222", false}, {"a22222", "22222", true}, {"Smith", "Smith", true}} {
			if got := containsPHI([]byte(tt.b), tt.v); got != tt.want {
				t.Errorf("containsPHI(%q, %q) = %v, want %v", tt.b, tt.v, got, tt.want)
			}
		}
	})
	t.Run("fhir", func(t *testing.T) {
		body := []byte(`{"resourceType":"AuditEvent","entity":[{"what":{"reference":"Patient/pat-991","identifier":{"value":"KVNR12345"}},"role":{"code":"1"},"name":"Erika Mustermann"}],
"contained":[{"resourceType":"Patient","id":"c1","identifier":[{"value":"MRN5555"}],"name":[{"family":"Gabler","given":["Hannah"]}],"birthDate":"1975-03-04"}]}`)
		got := fhirPHIValues(fhirTree(t, body, "application/fhir+json"))
		has(t, got, "Patient/pat-991", "pat-991", "KVNR12345", "Erika Mustermann", "MRN5555", "Gabler", "Hannah", "1975-03-04")
		xmlBody := []byte(`<AuditEvent xmlns="http://hl7.org/fhir"><entity><what><reference value="Patient/pat-992"/></what>` +
			`<role><coding><code value="1"/></coding></role></entity><contained><Patient><name><family value="Gabler"/></name><birthDate value="1975-03-05"/></Patient></contained></AuditEvent>`)
		got = fhirPHIValues(fhirTree(t, xmlBody, "application/fhir+xml"))
		has(t, got, "Patient/pat-992", "Gabler", "1975-03-05")
	})
}

// xmlTree reads FHIR XML into an fnode: an element's value attribute is its value, its
// child elements its children; an element named like a resource gets a resourceType.
func xmlTree(body []byte) (*fnode, error) {
	dec := xml.NewDecoder(bytes.NewReader(body))
	root := &fnode{}
	stack := []*fnode{root}
	for {
		tk, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch e := tk.(type) {
		case xml.StartElement:
			n := &fnode{}
			for _, a := range e.Attr {
				if a.Name.Local == "value" && a.Name.Space == "" {
					n.val = a.Value
				}
			}
			if r, _ := utf8.DecodeRuneInString(e.Name.Local); unicode.IsUpper(r) {
				n.add("resourceType", &fnode{val: e.Name.Local})
			}
			stack[len(stack)-1].add(e.Name.Local, n)
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		}
	}
	// The document element is the resource.
	for _, l := range root.kids {
		if len(l) == 1 {
			return l[0], nil
		}
	}
	return nil, errors.New("no document element")
}

// dicomPHIValues extracts, independently of collectors/dicom (after its corpus_test.go
// phiOf): the ParticipantObjectID of patient objects (TypeCode 1 with role 1, or
// ParticipantObjectIDTypeCode 2), also its part before the first '^', their
// ParticipantObjectName (whole and per '^' component), and every Accession@Number.
func dicomPHIValues(raw []byte) ([]phiValue, error) {
	dec := xml.NewDecoder(bytes.NewReader(bytes.TrimPrefix(raw, []byte("\uFEFF"))))
	var (
		out              []phiValue
		inObject, inName bool
		patient          bool
		id, name         string
	)
	add := func(kind, v string) {
		if v = strings.TrimSpace(v); keepPHI(v) {
			out = append(out, phiValue{kind, v})
		}
	}
	for {
		tk, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		switch e := tk.(type) {
		case xml.StartElement:
			attr := func(n string) string {
				for _, a := range e.Attr {
					if a.Name.Local == n {
						return a.Value
					}
				}
				return ""
			}
			switch e.Name.Local {
			case "ParticipantObjectIdentification":
				inObject, name = true, ""
				id = attr("ParticipantObjectID")
				patient = attr("ParticipantObjectTypeCode") == "1" && attr("ParticipantObjectTypeCodeRole") == "1"
			case "ParticipantObjectIDTypeCode":
				if inObject && (attr("csd-code") == "2" || attr("code") == "2") {
					patient = true
				}
			case "ParticipantObjectName":
				inName = inObject
			case "Accession":
				add("accession", attr("Number"))
			}
		case xml.CharData:
			if inName {
				name += string(e)
			}
		case xml.EndElement:
			switch e.Name.Local {
			case "ParticipantObjectName":
				inName = false
			case "ParticipantObjectIdentification":
				if patient {
					add("patient id", id)
					before, _, _ := strings.Cut(id, "^")
					add("patient id", before)
					add("patient name", name)
					for _, part := range strings.Split(name, "^") {
						add("patient name", part)
					}
				}
				inObject, patient = false, false
			}
		}
	}
}
