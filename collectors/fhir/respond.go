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
	mt, _, err := mime.ParseMediaType(v)
	if err != nil {
		return formatNone
	}
	switch mt {
	case "application/fhir+json", "application/json", "application/json+fhir":
		return formatJSON
	case "application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir":
		return formatXML
	}
	return formatNone
}

// acceptFormat is the response format the client asked for in Accept (the first listed
// FHIR type wins, ignoring q-values), else def.
func acceptFormat(accept string, def format) format {
	for _, part := range strings.Split(accept, ",") {
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

func writeBody(w http.ResponseWriter, f format, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", f.contentType())
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func encodeOutcome(f format, is issue) []byte {
	var b bytes.Buffer
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
	q, _ := json.Marshal(s) // a string always marshals
	b.Write(q)
}

func xmlValue(b *bytes.Buffer, name, v string) {
	b.WriteString("<" + name + ` value="`)
	_ = xml.EscapeText(b, []byte(v)) // writing to a bytes.Buffer does not fail
	b.WriteString(`"/>`)
}
