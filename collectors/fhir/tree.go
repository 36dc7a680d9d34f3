package fhir

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// maxDepth bounds nesting in both encodings. A Bundle entry's AuditEvent with an
// identifier type coding is about 9 levels deep; 64 leaves room for extensions.
const maxDepth = 64

// node is one element of a FHIR resource in a form both encodings decode into: a
// primitive has val, a complex element has kids. Every child is a list, whether the
// resource used a single value or an array, so the mapping code reads R4 and R5, JSON
// and XML alike and tolerates 0..1 versus 0..* differences between versions.
//
// kids is a list, not a map: a FHIR element has a handful of children, which a scan
// finds as fast as a hash, and a map per object was most of the decoder's allocations.
// An element with more than indexAt children (only a hostile body has them) also gets
// idx, so that neither building nor reading it is quadratic.
type node struct {
	val  string
	kids []member
	idx  map[string]int // name → index in kids; nil unless len(kids) > indexAt
}

// member is one child name of a node with its values, in document order.
type member struct {
	name string
	vals []*node
}

// indexAt is the number of children up to which a node is searched by a scan.
const indexAt = 16

// find is the index of child k in n.kids, or -1.
func (n *node) find(k string) int {
	if n.idx != nil {
		if i, ok := n.idx[k]; ok {
			return i
		}
		return -1
	}
	for i := range n.kids {
		if n.kids[i].name == k {
			return i
		}
	}
	return -1
}

func (n *node) get(k string) *node {
	if l := n.all(k); len(l) > 0 {
		return l[0]
	}
	return nil
}

func (n *node) all(k string) []*node {
	if n == nil {
		return nil
	}
	if i := n.find(k); i >= 0 {
		return n.kids[i].vals
	}
	return nil
}

// str is the primitive value of the first child k, or "".
func (n *node) str(k string) string {
	if c := n.get(k); c != nil {
		return c.val
	}
	return ""
}

// add appends cs to child k (the XML decoder: an element repeated is a list).
func (n *node) add(k string, cs ...*node) {
	if i := n.find(k); i >= 0 {
		n.kids[i].vals = append(n.kids[i].vals, cs...)
		return
	}
	n.kids = append(n.kids, member{name: k, vals: append([]*node(nil), cs...)})
	n.indexed()
}

// set makes c the only value of child k.
func (n *node) set(k string, c *node) {
	if i := n.find(k); i >= 0 {
		n.kids[i].vals = []*node{c}
		return
	}
	n.kids = append(n.kids, member{name: k, vals: []*node{c}})
	n.indexed()
}

// indexed keeps idx up to date after a child was appended to kids.
func (n *node) indexed() {
	switch {
	case n.idx != nil:
		n.idx[n.kids[len(n.kids)-1].name] = len(n.kids) - 1
	case len(n.kids) > indexAt:
		n.idx = make(map[string]int, 2*len(n.kids))
		for i, kv := range n.kids {
			n.idx[kv.name] = i
		}
	}
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
// with '_' (extensions of primitives) and nulls are skipped. Invalid UTF-8 in a string
// becomes U+FFFD (the handler refuses such bodies before decoding).
func decodeJSON(b []byte) (*node, error) { return decodeJSONMetered(b, nil) }

// jsonOptions: jsontext's own duplicate check is off because ours gives the diagnostic
// (and a body with duplicates is refused either way); invalid UTF-8 is replaced by
// U+FFFD, as encoding/json did, rather than refused.
var jsonOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}

// jsonDecoder is the state of one decodeJSONMetered. Decoders are pooled for their
// scratch stacks and the jsontext.Decoder's; the tree itself is never reused.
type jsonDecoder struct {
	rd bytes.Buffer // the body: jsontext reads a bytes.Buffer in place, without a copy
	d  jsontext.Decoder
	m  *reservation

	// The tree is carved from slabs: one allocation for many nodes, and for many value
	// lists, instead of one each.
	nodes []node
	lists []*node
	kids  []member

	// Scratch: the members of the objects and the elements of the arrays being read,
	// innermost last; each object or array copies its own into the tree at its end.
	mstack []member
	estack []*node
}

var jsonDecoders = sync.Pool{New: func() any { return new(jsonDecoder) }}

const (
	nodeSlab = 64
	listSlab = 64
	kidsSlab = 32
)

// decodeJSONMetered is decodeJSON charging every node to m (see reservation): a body of
// many tiny values decodes into a tree up to 30 times its size, which the in-flight
// budget must see. A charge that fails ends decoding with errOverBudget or errTooBig.
func decodeJSONMetered(b []byte, m *reservation) (*node, error) {
	jd := jsonDecoders.Get().(*jsonDecoder)
	defer jd.release()
	jd.rd = *bytes.NewBuffer(b)
	jd.d.Reset(&jd.rd, jsonOptions...)
	jd.m = m
	tok, err := jd.d.ReadToken()
	if err != nil {
		return nil, jsonErr(err)
	}
	if tok.Kind() != '{' {
		return nil, &parseError{reason: ReasonBadJSON, msg: "JSON body must be an object"}
	}
	n, err := jd.object(1)
	if err != nil {
		return nil, err
	}
	if _, err := jd.d.ReadToken(); err != io.EOF {
		return nil, &parseError{reason: ReasonBadJSON, msg: "data after the JSON resource"}
	}
	return n, nil
}

// release returns jd to the pool holding nothing of the body or the tree.
func (jd *jsonDecoder) release() {
	jd.rd = bytes.Buffer{}
	jd.d.Reset(&jd.rd) // drops the decoder's alias of the body
	jd.m = nil
	jd.nodes, jd.lists, jd.kids = nil, nil, nil
	clear(jd.mstack[:cap(jd.mstack)])
	clear(jd.estack[:cap(jd.estack)])
	jsonDecoders.Put(jd)
}

func jsonErr(err error) error {
	var pe *parseError
	if errors.As(err, &pe) {
		return pe
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &parseError{reason: ReasonBadJSON, msg: "JSON body is truncated"}
	}
	// Only the offset is used: jsontext's message carries a JSON pointer made of the
	// body's member names.
	var se *jsontext.SyntacticError
	if errors.As(err, &se) {
		return &parseError{reason: ReasonBadJSON, msg: fmt.Sprintf("JSON syntax error at byte %d", se.ByteOffset)}
	}
	return &parseError{reason: ReasonBadJSON, msg: "JSON body does not parse"}
}

func (jd *jsonDecoder) newNode(val string) *node {
	if len(jd.nodes) == cap(jd.nodes) {
		jd.nodes = make([]node, 0, nodeSlab)
	}
	jd.nodes = jd.nodes[:len(jd.nodes)+1]
	n := &jd.nodes[len(jd.nodes)-1]
	n.val = val
	return n
}

// list copies ns into the tree. Its capacity is its length, so an append to it (the
// XML decoder's add; JSON never appends) copies rather than writing over a neighbour.
func (jd *jsonDecoder) list(ns ...*node) []*node {
	if len(ns) == 0 {
		return nil
	}
	if cap(jd.lists)-len(jd.lists) < len(ns) {
		jd.lists = make([]*node, 0, max(listSlab, len(ns)))
	}
	i := len(jd.lists)
	jd.lists = append(jd.lists, ns...)
	return jd.lists[i:len(jd.lists):len(jd.lists)]
}

// object reads the members of an object whose '{' was consumed.
func (jd *jsonDecoder) object(depth int) (*node, error) {
	if depth > maxDepth {
		return nil, &parseError{reason: ReasonBadJSON, msg: fmt.Sprintf("JSON nested deeper than %d", maxDepth)}
	}
	if err := jd.m.chargeNode(0); err != nil {
		return nil, err
	}
	n := jd.newNode("")
	// Every member so far is on mstack, the skipped ones ('_', null, []) with no values,
	// so duplicates are found there: by a scan while the object is small, by seen when
	// it is not.
	base := len(jd.mstack)
	defer func() { jd.mstack = jd.mstack[:base] }()
	var seen map[string]struct{}
	for {
		switch jd.d.PeekKind() {
		case '"':
		case '}', 0: // the end, or an error PeekKind saw and ReadToken returns
			if _, err := jd.d.ReadToken(); err != nil {
				return nil, jsonErr(err)
			}
			return jd.endObject(n, base), nil
		default:
			// A value where a name must be is a syntax error at its first byte, as
			// encoding/json saw it; jsontext would first read the value, and call a
			// cut-off "{{" or "{n" truncated.
			return nil, jd.syntaxErrorAtNext()
		}
		raw, err := jd.d.ReadValue()
		if err != nil {
			return nil, jsonErr(err)
		}
		key := unquote(raw, true)
		if jd.dup(base, &seen, key) {
			return nil, &parseError{reason: ReasonBadJSON, msg: "duplicate JSON member " + clipKey(key)}
		}
		if err := jd.m.charge(int64(len(key))); err != nil {
			return nil, err
		}
		vals, err := jd.value(depth, true)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(key, "_") {
			vals = nil
		}
		jd.mstack = append(jd.mstack, member{name: key, vals: vals})
	}
}

// endObject gives n the members of mstack[base:] that have values.
func (jd *jsonDecoder) endObject(n *node, base int) *node {
	kept := 0
	for _, kv := range jd.mstack[base:] {
		if len(kv.vals) > 0 {
			kept++
		}
	}
	if kept == 0 {
		return n
	}
	if cap(jd.kids)-len(jd.kids) < kept {
		jd.kids = make([]member, 0, max(kidsSlab, kept))
	}
	i := len(jd.kids)
	for _, kv := range jd.mstack[base:] {
		if len(kv.vals) > 0 {
			jd.kids = append(jd.kids, kv)
		}
	}
	n.kids = jd.kids[i:len(jd.kids):len(jd.kids)]
	if kept > indexAt {
		n.idx = make(map[string]int, kept)
		for j, kv := range n.kids {
			n.idx[kv.name] = j
		}
	}
	return n
}

// syntaxErrorAtNext is a syntax error at the first byte of the next token.
func (jd *jsonDecoder) syntaxErrorAtNext() error {
	off := jd.d.InputOffset()
	rest := jd.d.UnreadBuffer()
	i := 0
	for i < len(rest) && strings.IndexByte(" \t\r\n,:", rest[i]) >= 0 {
		i++
	}
	return &parseError{reason: ReasonBadJSON, msg: fmt.Sprintf("JSON syntax error at byte %d", off+int64(i))}
}

// dup reports whether key is already a member of the object whose members start at
// mstack[base], and records it in *seen once the object has more than indexAt.
func (jd *jsonDecoder) dup(base int, seen *map[string]struct{}, key string) bool {
	ms := jd.mstack[base:]
	if *seen == nil && len(ms) < indexAt {
		for _, kv := range ms {
			if kv.name == key {
				return true
			}
		}
		return false
	}
	if *seen == nil {
		*seen = make(map[string]struct{}, 2*len(ms))
		for _, kv := range ms {
			(*seen)[kv.name] = struct{}{}
		}
	}
	if _, ok := (*seen)[key]; ok {
		return true
	}
	(*seen)[key] = struct{}{}
	return false
}

// value reads one value; an array (when allowed) yields its elements, null none.
func (jd *jsonDecoder) value(depth int, arrayOK bool) ([]*node, error) {
	var val string
	switch jd.d.PeekKind() {
	case '"', '0':
		raw, err := jd.d.ReadValue()
		if err != nil {
			return nil, jsonErr(err)
		}
		if raw.Kind() == '"' {
			val = unquote(raw, false)
		} else {
			val = string(raw) // a number as its literal text
		}
		if err := jd.m.chargeNode(len(val)); err != nil {
			return nil, err
		}
		return jd.list(jd.newNode(val)), nil
	}
	// Delimiters, literals, and whatever error PeekKind saw.
	tok, err := jd.d.ReadToken()
	if err != nil {
		return nil, jsonErr(err)
	}
	switch tok.Kind() {
	case '{':
		c, err := jd.object(depth + 1)
		if err != nil {
			return nil, err
		}
		return jd.list(c), nil
	case '[':
		if !arrayOK {
			return nil, &parseError{reason: ReasonBadJSON, msg: "JSON array inside an array"}
		}
		base := len(jd.estack)
		defer func() { jd.estack = jd.estack[:base] }()
		for jd.d.PeekKind() != ']' {
			// On an error PeekKind is not ']' and the value's ReadToken returns it.
			v, err := jd.value(depth+1, false)
			if err != nil {
				return nil, err
			}
			jd.estack = append(jd.estack, v...)
		}
		if _, err := jd.d.ReadToken(); err != nil { // ']'
			return nil, jsonErr(err)
		}
		return jd.list(jd.estack[base:]...), nil
	case 'n':
		return nil, nil
	case 't':
		val = "true"
	case 'f':
		val = "false"
	default:
		return nil, &parseError{reason: ReasonBadJSON, msg: "unexpected JSON token"}
	}
	// A boolean is charged as a node without a value, as encoding/json's decoder did.
	if err := jd.m.chargeNode(0); err != nil {
		return nil, err
	}
	return jd.list(jd.newNode(val)), nil
}

// unquote is the text of a JSON string jsontext has validated. A string without
// escapes, control characters and non-ASCII bytes is its raw bytes; the others go
// through AppendUnquote, which turns invalid UTF-8 into U+FFFD (its error says only
// that it did). A member name that FHIR defines is the interned constant, so the
// names of a tree cost no allocation.
func unquote(raw jsontext.Value, name bool) string {
	s := raw[1 : len(raw)-1]
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			b, _ := jsontext.AppendUnquote(nil, raw)
			return string(b)
		}
	}
	if name {
		if k, ok := fhirNames[string(s)]; ok {
			return k
		}
	}
	return string(s)
}

// fhirNames interns the member names of AuditEvent, Bundle, OperationOutcome and the
// data types they use.
var fhirNames = func() map[string]string {
	m := make(map[string]string)
	for _, k := range strings.Fields(`
		resourceType id meta versionId lastUpdated profile security tag text status div
		language implicitRules contained extension modifierExtension url
		valueString valueCode valueCoding valueCodeableConcept valueIdentifier valueReference
		valueInteger valueBoolean valueOid valueUri valueBase64Binary valueDateTime valueUuid
		type subtype action period start end recorded outcome outcomeDesc purposeOfEvent
		category code coding system version display userSelected detail details
		severity occurredPeriod occurredDateTime authorization basedOn patient encounter
		agent role who identifier value assigner use reference requestor location policy
		media network address networkString networkUri networkReference purposeOfUse altId name
		source site observer entity what lifecycle securityLabel description query
		resource entry fullUrl request method response search mode issue diagnostics
		expression total link relation timestamp signature
		`) {
		m[k] = k
	}
	return m
}()

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
			n.set("resourceType", &node{val: t.Name.Local})
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
	n := &node{}
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
				for _, kv := range c.kids {
					n.add(kv.name, kv.vals...)
				}
				n.set("resourceType", &node{val: t.Name.Local})
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
