package fhir

import (
	"encoding/base64"
	"net/url"
	"strings"
	"unicode/utf8"
)

// maxQueryBytes bounds how much of a decoded entity.query is read for its parameters.
const maxQueryBytes = 64 << 10

// queryInfo is what a FHIR search request (entity.query, base64) says, with every
// value either tokenized or dropped: nothing of it is stored in clear but resource
// types, operation names and parameter names.
type queryInfo struct {
	parsed   bool         // the query is an HTTP request line, a URL or a path
	method   string       // request method, "" when only a URL was given
	endpoint string       // "/Observation?patient&_count": ids replaced, parameter names only
	rtype    string       // the resource type searched
	patients []patientTok // patients the query names (compartment, parameters)
	// demographic: the query looks one person up by name or birth date (PDQm, a
	// Patient search): targeted, but with nothing to tokenize in the event itself.
	demographic bool
}

// Demographic search parameters of Patient (and of patient.<param> chains).
var demographicParams = map[string]bool{"name": true, "family": true, "given": true, "birthdate": true, "phonetic": true}

// Search parameters that name the patient of the searched resources (FHIR R4/R5
// common search parameters; subject only when it points at a Patient).
var patientParams = map[string]bool{"patient": true, "subject": true, "beneficiary": true}

// decodeQuery returns the bytes of a base64Binary query, or the text itself when it is
// not base64 (some senders put the URL there in clear).
func decodeQuery(q string) []byte {
	clean := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, q)
	if b, err := base64.StdEncoding.DecodeString(clean); err == nil {
		return b
	}
	if b, err := base64.RawStdEncoding.DecodeString(clean); err == nil {
		return b
	}
	return []byte(q)
}

func isHTTPMethod(s string) bool {
	switch s {
	case "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD":
		return true
	}
	return false
}

// parseQuery reads a search as BALP and the FHIR examples record it: a raw HTTP request
// ("GET host/r4/Observation?patient=x", or a POST to _search with a form body), an
// absolute URL or a relative path. HL7 v2, XML and JSON queries are not parsed.
func (m mapper) parseQuery(raw []byte) queryInfo {
	var qi queryInfo
	if len(raw) > maxQueryBytes {
		raw = raw[:maxQueryBytes]
	}
	s := strings.TrimSpace(string(raw))
	if s == "" || !utf8.ValidString(s) || strings.HasPrefix(s, "MSH|") || s[0] == '<' || s[0] == '{' {
		return qi
	}
	lines := strings.Split(s, "\n")
	fields := strings.Fields(lines[0])
	var target string
	switch {
	case len(fields) >= 2 && isHTTPMethod(fields[0]):
		qi.method, target = fields[0], fields[1]
	case len(fields) == 1:
		target = fields[0]
	default:
		return qi
	}
	var body string
	if qi.method == "POST" {
		for i, l := range lines {
			if i > 0 && strings.TrimSpace(l) == "" {
				body = strings.TrimSpace(strings.Join(lines[i+1:], "\n"))
				break
			}
		}
	}

	// Strip scheme and host: "https://h/fhir/Patient", "h.example/r4/Patient".
	if i := strings.Index(target, "://"); i >= 0 {
		target = target[i+3:]
		if j := strings.IndexAny(target, "/?"); j >= 0 {
			target = target[j:]
		} else {
			target = "/"
		}
	} else if !strings.HasPrefix(target, "/") {
		j := strings.IndexAny(target, "/?")
		if j < 0 {
			j = len(target)
		}
		if strings.ContainsAny(target[:j], ".:") {
			target = target[j:]
		}
	}
	if i := strings.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	path, rawQuery, _ := strings.Cut(target, "?")

	// Path template: resource types, _search/_history and $operations kept, ids replaced.
	var tmpl strings.Builder
	expectID := false
	prevType := ""
	for _, seg := range strings.Split(path, "/") {
		switch {
		case seg == "":
			continue
		case tmpl.Len() == 0 && !isResourceType(seg):
			continue // base path ("/fhir/r4")
		case strings.HasPrefix(seg, "$") || strings.HasPrefix(seg, "_"):
			if !safeName(seg[1:]) {
				return queryInfo{}
			}
			tmpl.WriteString("/" + seg)
			expectID = seg == "_history"
		case expectID:
			tmpl.WriteString("/{id}")
			if prevType == "Patient" {
				if id, err := url.PathUnescape(seg); err == nil {
					qi.patients = append(qi.patients, m.patientToken(id, "", false))
				}
			}
			expectID = false
			prevType = ""
		case isResourceType(seg):
			tmpl.WriteString("/" + seg)
			qi.rtype, prevType, expectID = seg, seg, true
		default:
			return queryInfo{} // not a FHIR path
		}
	}
	if tmpl.Len() == 0 && rawQuery == "" {
		return queryInfo{}
	}
	qi.parsed = true

	var names []string
	for _, part := range []string{rawQuery, body} {
		for _, kv := range strings.Split(part, "&") {
			if kv == "" {
				continue
			}
			name, val, ok := strings.Cut(kv, "=")
			if n, err := url.QueryUnescape(name); err == nil {
				name = n
			}
			if !ok || !safeName(name) {
				continue // never keep a "name" that may be a value
			}
			if !has(names, name) && len(names) < 32 {
				names = append(names, name)
			}
			qi.patients = append(qi.patients, m.paramPatients(qi.rtype, name, val)...)
			if isDemographic(qi.rtype, name, val) {
				qi.demographic = true
			}
		}
	}
	qi.endpoint = tmpl.String()
	if qi.endpoint == "" {
		qi.endpoint = "/"
	}
	if len(names) > 0 {
		qi.endpoint += "?" + strings.Join(names, "&")
	}
	qi.endpoint = clip(qi.endpoint, maxTextLen)
	return qi
}

// paramPatients returns the tokens of the patients one search parameter names:
// patient / subject / beneficiary as references ("Patient/123", "123") or, with the
// :identifier modifier or the .identifier chain, as identifiers ("system|value");
// on Patient itself _id and identifier. Demographic parameters (name, birthdate …),
// other modifiers (:missing, :not, :contains) and wildcards name nobody.
func (m mapper) paramPatients(rtype, name, raw string) []patientTok {
	base, chain, _ := strings.Cut(name, ".")
	base, mod, _ := strings.Cut(base, ":")
	ident := false
	switch {
	case patientParams[base] && (chain == "identifier" || (mod == "identifier" && chain == "")):
		ident = true
	case patientParams[base] && chain == "" && (mod == "" || mod == "Patient"):
	case rtype == "Patient" && base == "_id" && mod == "" && chain == "":
	case rtype == "Patient" && base == "identifier" && mod == "" && chain == "":
		ident = true
	default:
		return nil
	}
	val, err := url.QueryUnescape(raw)
	if err != nil {
		val = raw
	}
	var out []patientTok
	for _, v := range strings.Split(val, ",") {
		v = strings.TrimSpace(v)
		if v == "" || strings.ContainsAny(v, "*%") {
			continue
		}
		if ident || strings.Contains(v, "|") {
			sys, value, ok := strings.Cut(v, "|")
			if !ok {
				sys, value = "", v
			}
			out = append(out, m.patientToken(value, sys, true))
			continue
		}
		if strings.Contains(v, "/") {
			if refTypeOf(v) != "Patient" {
				continue // subject=Group/1, Device/2
			}
			v = refID(v, "Patient")
		}
		out = append(out, m.patientToken(v, "", false))
	}
	return out
}

// isDemographic reports whether a parameter looks a person up by name or birth date:
// on Patient, or chained from patient/subject; an exact value, no :missing/:contains.
func isDemographic(rtype, name, val string) bool {
	base, chain, _ := strings.Cut(name, ".")
	base, mod, _ := strings.Cut(base, ":")
	if mod != "" && mod != "exact" && mod != "Patient" {
		return false
	}
	if val == "" || strings.ContainsAny(val, "*%") {
		return false
	}
	if patientParams[base] && chain != "" {
		return demographicParams[chain]
	}
	return rtype == "Patient" && chain == "" && demographicParams[base]
}

// refTypeOf is refType for a reference string.
func refTypeOf(s string) string {
	return refType(&node{kids: []member{{name: "reference", vals: []*node{{val: s}}}}})
}

// isResourceType reports whether a path segment is a FHIR resource type name.
func isResourceType(s string) bool { return resourceTypes[s] }

// safeName reports whether s can be kept as a parameter or operation name: letters and
// "_.:-", at most 64 bytes, no digits (no FHIR search parameter has one, and an
// identifier sent as a name would).
func safeName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c == '.' || c == ':' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// interactionMethod is the HTTP method of a RESTful interaction ("" when it depends:
// search by GET or POST, operations).
func interactionMethod(code string) string {
	switch code {
	case "read", "vread", "history-instance", "history-type", "history-system", "capabilities":
		return "GET"
	case "create":
		return "POST"
	case "update":
		return "PUT"
	case "patch":
		return "PATCH"
	case "delete":
		return "DELETE"
	}
	return ""
}

// interactionEndpoint is the endpoint template of a RESTful interaction on a resource
// of type rtype. Searches have none here: their endpoint comes from the query itself,
// and an entity beside a search (a patient found) is not what was searched.
func interactionEndpoint(code, rtype string) string {
	if rtype == "" {
		return ""
	}
	switch code {
	case "read", "update", "patch", "delete":
		return "/" + rtype + "/{id}"
	case "vread":
		return "/" + rtype + "/{id}/_history/{id}"
	case "history-instance":
		return "/" + rtype + "/{id}/_history"
	case "history-type":
		return "/" + rtype + "/_history"
	case "create":
		return "/" + rtype
	}
	return ""
}
