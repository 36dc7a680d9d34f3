package fhir

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// format is a FHIR wire format.
type format uint8

const (
	formatNone format = iota
	formatJSON
	formatXML
)

func (f format) contentType() string {
	if f == formatXML {
		return "application/fhir+xml; charset=utf-8"
	}
	return "application/fhir+json; charset=utf-8"
}

// mediaFormat maps a Content-Type or one Accept entry to a format.
func mediaFormat(v string) format {
	if !strings.Contains(v, ";") {
		// No parameters: what ParseMediaType would return is v trimmed and lowercased,
		// and only our own (valid) types are of interest; this skips its map of
		// parameters, an allocation per header on every request.
		return mediaTypeFormat(strings.TrimSpace(v))
	}
	mt, _, err := mime.ParseMediaType(v)
	if err != nil {
		return formatNone
	}
	return mediaTypeFormat(mt)
}

// mediaTypeFormat maps a media type without parameters, in any ASCII case.
func mediaTypeFormat(mt string) format {
	for _, t := range []struct {
		mt string
		f  format
	}{
		{"application/fhir+json", formatJSON}, {"application/json", formatJSON}, {"application/json+fhir", formatJSON},
		{"application/fhir+xml", formatXML}, {"application/xml", formatXML}, {"text/xml", formatXML}, {"application/xml+fhir", formatXML},
	} {
		if asciiEqualFold(mt, t.mt) {
			return t.f
		}
	}
	return formatNone
}

// asciiEqualFold is strings.EqualFold for ASCII only: ParseMediaType lowercases with
// strings.ToLower, which leaves 'ſ' and 'K' (Kelvin) alone, where EqualFold would
// fold them to 's' and 'k'.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if x != y { // b is lowercase
			return false
		}
	}
	return true
}

// acceptFormat is the response format the client asked for in Accept (the first listed
// FHIR type wins, ignoring q-values), else def.
func acceptFormat(accept string, def format) format {
	for part := range strings.SplitSeq(accept, ",") {
		if f := mediaFormat(strings.TrimSpace(part)); f != formatNone {
			return f
		}
	}
	if def == formatNone {
		return formatJSON
	}
	return def
}

// issue is one OperationOutcome issue. diag never quotes request content.
type issue struct {
	severity string // fatal | error | warning | information
	code     string // IssueType: invalid, structure, too-long, security, not-supported …
	diag     string
}

// respEntry is one entry of a batch-response or transaction-response Bundle.
type respEntry struct {
	status   string // "201 Created"
	location string
	outcome  *issue
}

func statusLine(code int) string { return strconv.Itoa(code) + " " + http.StatusText(code) }

// The constant header values, shared by every response: assigned to the header map
// directly (the keys are canonical), they cost no allocation. Their capacity is their
// length, so an Add to the header copies instead of writing into them.
var (
	hdrJSON    = []string{formatJSON.contentType()}
	hdrXML     = []string{formatXML.contentType()}
	hdrNosniff = []string{"nosniff"}
)

func writeBody(w http.ResponseWriter, f format, status int, body []byte) {
	h := w.Header()
	if f == formatXML {
		h["Content-Type"] = hdrXML
	} else {
		h["Content-Type"] = hdrJSON
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h["X-Content-Type-Options"] = hdrNosniff
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func encodeOutcome(f format, is issue) []byte {
	var b bytes.Buffer
	b.Grow(128 + len(is.diag)) // the whole outcome, in one allocation
	if f == formatXML {
		appendOutcomeXML(&b, is)
	} else {
		appendOutcomeJSON(&b, is)
	}
	return b.Bytes()
}

func appendOutcomeJSON(b *bytes.Buffer, is issue) {
	b.WriteString(`{"resourceType":"OperationOutcome","issue":[{"severity":`)
	jsonString(b, is.severity)
	b.WriteString(`,"code":`)
	jsonString(b, is.code)
	if is.diag != "" {
		b.WriteString(`,"diagnostics":`)
		jsonString(b, is.diag)
	}
	b.WriteString(`}]}`)
}

func appendOutcomeXML(b *bytes.Buffer, is issue) {
	b.WriteString(`<OperationOutcome xmlns="http://hl7.org/fhir"><issue>`)
	xmlValue(b, "severity", is.severity)
	xmlValue(b, "code", is.code)
	if is.diag != "" {
		xmlValue(b, "diagnostics", is.diag)
	}
	b.WriteString(`</issue></OperationOutcome>`)
}

func encodeBundle(f format, typ string, entries []respEntry) []byte {
	var b bytes.Buffer
	if f == formatXML {
		b.WriteString(`<Bundle xmlns="http://hl7.org/fhir">`)
		xmlValue(&b, "type", typ)
		for _, e := range entries {
			b.WriteString(`<entry><response>`)
			xmlValue(&b, "status", e.status)
			if e.location != "" {
				xmlValue(&b, "location", e.location)
			}
			if e.outcome != nil {
				b.WriteString(`<outcome>`)
				appendOutcomeXML(&b, *e.outcome)
				b.WriteString(`</outcome>`)
			}
			b.WriteString(`</response></entry>`)
		}
		b.WriteString(`</Bundle>`)
		return b.Bytes()
	}
	b.WriteString(`{"resourceType":"Bundle","type":`)
	jsonString(&b, typ)
	b.WriteString(`,"entry":[`)
	for i, e := range entries {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"response":{"status":`)
		jsonString(&b, e.status)
		if e.location != "" {
			b.WriteString(`,"location":`)
			jsonString(&b, e.location)
		}
		if e.outcome != nil {
			b.WriteString(`,"outcome":`)
			appendOutcomeJSON(&b, *e.outcome)
		}
		b.WriteString(`}}`)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func jsonString(b *bytes.Buffer, s string) {
	if plainJSON(s) {
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	q, _ := json.Marshal(s) // a string always marshals
	b.Write(q)
}

func xmlValue(b *bytes.Buffer, name, v string) {
	b.WriteString("<" + name + ` value="`)
	_ = xml.EscapeText(b, []byte(v)) // writing to a bytes.Buffer does not fail
	b.WriteString(`"/>`)
}

// plainJSON reports whether json.Marshal would quote s unchanged: printable ASCII
// without '"', '\' and the HTML characters it escapes ('<', '>', '&'). Our diagnostics
// and ids are; the others keep encoding/json's exact output.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}
