package fhir

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxDepth bounds nesting in both encodings. A Bundle entry's AuditEvent with an
// identifier type coding is about 9 levels deep; 64 leaves room for extensions.
const maxDepth = 64

// node is one element of a FHIR resource in a form both encodings decode into: a
// primitive has val, a complex element has kids. Every child is a list, whether the
// resource used a single value or an array, so the mapping code reads R4 and R5, JSON
// and XML alike and tolerates 0..1 versus 0..* differences between versions.
type node struct {
	val  string
	kids map[string][]*node
}

func (n *node) get(k string) *node {
	if n == nil {
		return nil
	}
	if l := n.kids[k]; len(l) > 0 {
		return l[0]
	}
	return nil
}

func (n *node) all(k string) []*node {
	if n == nil {
		return nil
	}
	return n.kids[k]
}

// str is the primitive value of the first child k, or "".
func (n *node) str(k string) string {
	if c := n.get(k); c != nil {
		return c.val
	}
	return ""
}

func (n *node) add(k string, c *node) {
	if n.kids == nil {
		n.kids = make(map[string][]*node)
	}
	n.kids[k] = append(n.kids[k], c)
}

// parseError is a body that is not a well-formed resource in its declared format.
// reason is the Reporter keyword, msg a diagnostic that never quotes the input.
type parseError struct {
	reason string
	msg    string
}

func (e *parseError) Error() string { return e.msg }

// decodeJSON decodes one FHIR JSON resource. Duplicate member names are refused (the
// FHIR JSON format forbids them, and last-wins would let `"resourceType"` be smuggled),
// as are trailing data, nesting over maxDepth and arrays of arrays. Members starting
// with '_' (extensions of primitives) and nulls are skipped.
func decodeJSON(b []byte) (*node, error) { return decodeJSONMetered(b, nil) }

// decodeJSONMetered is decodeJSON charging every node to m (see reservation): a body of
// many tiny values decodes into a tree up to 30 times its size, which the in-flight
// budget must see. A charge that fails ends decoding with errOverBudget or errTooBig.
func decodeJSONMetered(b []byte, m *reservation) (*node, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	tok, err := d.Token()
	if err != nil {
		return nil, jsonErr(err)
	}
	if tok != json.Delim('{') {
		return nil, &parseError{reason: ReasonBadJSON, msg: "JSON body must be an object"}
	}
	n, err := decodeJSONObject(d, 1, m)
	if err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, &parseError{reason: ReasonBadJSON, msg: "data after the JSON resource"}
	}
	return n, nil
}

func jsonErr(err error) error {
	var pe *parseError
	if errors.As(err, &pe) {
		return pe
	}
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return &parseError{reason: ReasonBadJSON, msg: "JSON body is truncated"}
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &parseError{reason: ReasonBadJSON, msg: fmt.Sprintf("JSON syntax error at byte %d", se.Offset)}
	}
	return &parseError{reason: ReasonBadJSON, msg: "JSON body does not parse"}
}

// decodeJSONObject reads the members of an object whose '{' was consumed.
func decodeJSONObject(d *json.Decoder, depth int, m *reservation) (*node, error) {
	if depth > maxDepth {
		return nil, &parseError{reason: ReasonBadJSON, msg: fmt.Sprintf("JSON nested deeper than %d", maxDepth)}
	}
	if err := m.chargeNode(0); err != nil {
		return nil, err
	}
	n := &node{kids: make(map[string][]*node)}
	seen := make(map[string]struct{})
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, jsonErr(err)
		}
		if tok == json.Delim('}') {
			return n, nil
		}
		key, ok := tok.(string)
		if !ok {
			return nil, &parseError{reason: ReasonBadJSON, msg: "JSON object key expected"}
		}
		if _, dup := seen[key]; dup {
			return nil, &parseError{reason: ReasonBadJSON, msg: "duplicate JSON member " + clipKey(key)}
		}
		seen[key] = struct{}{}
		if err := m.charge(int64(len(key))); err != nil {
			return nil, err
		}
		vals, err := decodeJSONValue(d, depth, true, m)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(key, "_") {
			continue
		}
		for _, v := range vals {
			n.add(key, v)
		}
	}
}

// decodeJSONValue reads one value; an array (when allowed) yields its elements.
func decodeJSONValue(d *json.Decoder, depth int, arrayOK bool, m *reservation) ([]*node, error) {
	tok, err := d.Token()
	if err != nil {
		return nil, jsonErr(err)
	}
	var prim string
	switch t := tok.(type) {
	case string:
		prim = t
	case json.Number:
		prim = t.String()
	}
	if _, delim := tok.(json.Delim); !delim && tok != nil {
		if err := m.chargeNode(len(prim)); err != nil {
			return nil, err
		}
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			c, err := decodeJSONObject(d, depth+1, m)
			if err != nil {
				return nil, err
			}
			return []*node{c}, nil
		case '[':
			if !arrayOK {
				return nil, &parseError{reason: ReasonBadJSON, msg: "JSON array inside an array"}
			}
			var out []*node
			for d.More() {
				v, err := decodeJSONValue(d, depth+1, false, m)
				if err != nil {
					return nil, err
				}
				out = append(out, v...)
			}
			if _, err := d.Token(); err != nil { // ']'
				return nil, jsonErr(err)
			}
			return out, nil
		}
		return nil, &parseError{reason: ReasonBadJSON, msg: "unexpected JSON delimiter"}
	case string:
		return []*node{{val: t}}, nil
	case json.Number:
		return []*node{{val: t.String()}}, nil
	case bool:
		if t {
			return []*node{{val: "true"}}, nil
		}
		return []*node{{val: "false"}}, nil
	case nil:
		return nil, nil
	}
	return nil, &parseError{reason: ReasonBadJSON, msg: "unexpected JSON token"}
}

// fhirNS is the namespace of FHIR XML elements.
const fhirNS = "http://hl7.org/fhir"

// decodeXML decodes one FHIR XML resource with a token loop. Any directive (DOCTYPE,
// ENTITY) is refused, so no entity can be declared or expanded; encoding/xml knows only
// the five predefined entities and refuses non-UTF-8 encodings without a CharsetReader.
// Narrative (text) is skipped unread beyond well-formedness. The root element names the
// resource type; the child element of `resource` and `contained` does too.
func decodeXML(b []byte) (*node, error) { return decodeXMLMetered(b, nil) }

// decodeXMLMetered is decodeXML charging every node to m, like decodeJSONMetered.
func decodeXMLMetered(b []byte, m *reservation) (*node, error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, xmlErr(err)
		}
		switch t := tok.(type) {
		case xml.Directive:
			return nil, &parseError{reason: ReasonXMLDoctype, msg: "XML DOCTYPE and entity declarations are not accepted"}
		case xml.StartElement:
			if t.Name.Space != fhirNS && t.Name.Space != "" {
				return nil, &parseError{reason: ReasonBadXML, msg: "root element is not in the FHIR namespace"}
			}
			n, err := decodeXMLElement(d, t, 1, m)
			if err != nil {
				return nil, err
			}
			n.kids["resourceType"] = []*node{{val: t.Name.Local}}
			if err := xmlTail(d); err != nil {
				return nil, err
			}
			return n, nil
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return nil, &parseError{reason: ReasonBadXML, msg: "text before the XML root element"}
			}
		}
	}
}

// xmlTail checks that only comments, processing instructions and space follow the root.
func xmlTail(d *xml.Decoder) error {
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return xmlErr(err)
		}
		switch t := tok.(type) {
		case xml.Directive:
			return &parseError{reason: ReasonXMLDoctype, msg: "XML DOCTYPE and entity declarations are not accepted"}
		case xml.StartElement:
			return &parseError{reason: ReasonBadXML, msg: "more than one XML root element"}
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return &parseError{reason: ReasonBadXML, msg: "text after the XML root element"}
			}
		}
	}
}

func xmlErr(err error) error {
	var pe *parseError
	if errors.As(err, &pe) {
		return pe
	}
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return &parseError{reason: ReasonBadXML, msg: "XML body is truncated or empty"}
	}
	var se *xml.SyntaxError
	if errors.As(err, &se) {
		return &parseError{reason: ReasonBadXML, msg: fmt.Sprintf("XML syntax error on line %d", se.Line)}
	}
	return &parseError{reason: ReasonBadXML, msg: "XML body does not parse"}
}

// decodeXMLElement reads the content of start up to its end element.
func decodeXMLElement(d *xml.Decoder, start xml.StartElement, depth int, m *reservation) (*node, error) {
	if depth > maxDepth {
		return nil, &parseError{reason: ReasonBadXML, msg: fmt.Sprintf("XML nested deeper than %d", maxDepth)}
	}
	if err := m.chargeNode(len(start.Name.Local)); err != nil {
		return nil, err
	}
	n := &node{kids: make(map[string][]*node)}
	for _, a := range start.Attr {
		if a.Name.Space != "" {
			continue // xmlns declarations, xsi:*, xml:lang
		}
		if err := m.chargeNode(len(a.Name.Local) + len(a.Value)); err != nil {
			return nil, err
		}
		if a.Name.Local == "value" {
			n.val = a.Value
			continue
		}
		n.add(a.Name.Local, &node{val: a.Value})
	}
	container := start.Name.Local == "resource" || start.Name.Local == "contained"
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, xmlErr(err)
		}
		switch t := tok.(type) {
		case xml.EndElement:
			return n, nil
		case xml.Directive:
			return nil, &parseError{reason: ReasonXMLDoctype, msg: "XML DOCTYPE and entity declarations are not accepted"}
		case xml.StartElement:
			if (t.Name.Local == "text" && !hasValueAttr(t)) || t.Name.Space == "http://www.w3.org/1999/xhtml" {
				// Narrative: a whole XHTML document that the mapping never reads.
				if err := skipXML(d, depth+1); err != nil {
					return nil, err
				}
				continue
			}
			c, err := decodeXMLElement(d, t, depth+1, m)
			if err != nil {
				return nil, err
			}
			if container && n.get("resourceType") == nil {
				// <resource><AuditEvent>…</AuditEvent></resource>: the resource's own
				// elements become the container's, as in JSON.
				for k, v := range c.kids {
					n.kids[k] = append(n.kids[k], v...)
				}
				n.kids["resourceType"] = []*node{{val: t.Name.Local}}
				continue
			}
			n.add(t.Name.Local, c)
		}
	}
}

// skipXML consumes an element's content without keeping it, still bounding depth and
// refusing directives.
func skipXML(d *xml.Decoder, depth int) error {
	level := 1
	for level > 0 {
		tok, err := d.Token()
		if err != nil {
			return xmlErr(err)
		}
		switch tok.(type) {
		case xml.StartElement:
			level++
			if depth+level > maxDepth {
				return &parseError{reason: ReasonBadXML, msg: fmt.Sprintf("XML nested deeper than %d", maxDepth)}
			}
		case xml.EndElement:
			level--
		case xml.Directive:
			return &parseError{reason: ReasonXMLDoctype, msg: "XML DOCTYPE and entity declarations are not accepted"}
		}
	}
	return nil
}

// clipKey makes a member name safe to quote in a diagnostic: it is a key, not a value,
// but is clipped and stripped of anything unusual all the same.
func clipKey(k string) string {
	if len(k) > 40 {
		k = k[:40]
	}
	return fmt.Sprintf("%q", strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, k))
}

func hasValueAttr(t xml.StartElement) bool {
	for _, a := range t.Attr {
		if a.Name.Space == "" && a.Name.Local == "value" {
			return true
		}
	}
	return false
}
