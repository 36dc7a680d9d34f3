// Package dicom turns DICOM audit messages (PS3.15 A.5, IHE ATNA ITI-20, RFC 3881 style)
// into audit.Event values, tokenizing patient identifiers and dropping what is not needed.
package dicom

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Limits of the XML reader. A DICOM audit message is a few KiB; these bound what a hostile
// or broken sender can make the parser do.
const (
	MaxSize       = 1 << 20 // bytes of XML
	MaxDepth      = 32      // element nesting
	MaxElements   = 20000   // elements in one document
	MaxAttributes = 100000  // attributes in one document
	maxAttrsElem  = 64      // attributes on one element
)

// Parse errors. Each has a reason keyword (Reason) usable as a reject reason. Their texts
// never carry document content.
var (
	ErrDoctype         = errors.New("xml doctype/entities not allowed")
	ErrMalformed       = errors.New("malformed xml")
	ErrTooDeep         = errors.New("xml nesting too deep")
	ErrTooLarge        = errors.New("xml document too large")
	ErrNotAuditMessage = errors.New("xml root is not AuditMessage")
	ErrInvalidUTF8     = errors.New("xml is not valid utf-8")
	ErrNoTokenizer     = errors.New("no tokenizer configured")
)

// Reason keywords, one per sentinel error.
const (
	ReasonDoctype         = "xml_doctype"
	ReasonMalformed       = "xml_malformed"
	ReasonTooDeep         = "xml_too_deep"
	ReasonTooLarge        = "xml_too_large"
	ReasonNotAuditMessage = "xml_not_audit_message"
	ReasonInvalidUTF8     = "xml_invalid_utf8"
	ReasonNoTokenizer     = "dicom_no_tokenizer"
)

var reasons = []struct {
	err    error
	reason string
}{
	{ErrDoctype, ReasonDoctype},
	{ErrMalformed, ReasonMalformed},
	{ErrTooDeep, ReasonTooDeep},
	{ErrTooLarge, ReasonTooLarge},
	{ErrNotAuditMessage, ReasonNotAuditMessage},
	{ErrInvalidUTF8, ReasonInvalidUTF8},
	{ErrNoTokenizer, ReasonNoTokenizer},
}

// Reason returns the reason keyword of an error returned by Parse, or "xml_malformed" for
// any other non-nil error and "" for nil.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ReasonMalformed
}

var bom = []byte{0xEF, 0xBB, 0xBF}

// Looks reports whether msg looks like an XML document that may be a DICOM audit message:
// after an optional UTF-8 BOM and white space it starts with "<?xml" or "<AuditMessage".
// It is cheap and says nothing about validity.
func Looks(msg string) bool {
	// A string, because callers hold the syslog MSG as one: the test costs no copy for the
	// messages (nearly all) that are not XML.
	msg = strings.TrimLeft(strings.TrimPrefix(msg, "\uFEFF"), " \t\r\n")
	return strings.HasPrefix(msg, "<?xml") || strings.HasPrefix(msg, "<AuditMessage")
}

func trimLead(b []byte) []byte {
	b = bytes.TrimPrefix(b, bom)
	return bytes.TrimLeft(b, " \t\r\n")
}

// node is one element of the document: the tree is small (a few dozen elements), and
// building it keeps the mapping code readable.
type node struct {
	name     string
	attrs    []xml.Attr
	children []*node
	text     []byte
}

func (n *node) attr(name string) string {
	for _, a := range n.attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func (n *node) child(name string) *node {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

// readTree parses the document into a tree, enforcing every limit. Errors wrap a sentinel
// and carry at most a line number.
func readTree(b []byte) (*node, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("read audit xml (%d bytes): %w", len(b), ErrTooLarge)
	}
	b = trimLead(b)
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("read audit xml: %w", ErrInvalidUTF8)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("read audit xml: empty document: %w", ErrMalformed)
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	d.Entity = nil // only the five predefined entities; any other is a syntax error
	// No CharsetReader: a document declaring anything but UTF-8 is refused.

	var (
		root     *node
		stack    []*node
		elements int
		attrs    int
		done     bool
	)
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, syntaxErr(d, err)
		}
		switch t := tok.(type) {
		case xml.Directive:
			return nil, fmt.Errorf("read audit xml line %d: %w", line(d), ErrDoctype)
		case xml.ProcInst:
			if done || root != nil || t.Target != "xml" {
				return nil, fmt.Errorf("read audit xml line %d: processing instruction: %w", line(d), ErrMalformed)
			}
		case xml.Comment:
			// ignored anywhere
		case xml.CharData:
			if len(stack) == 0 {
				if len(bytes.TrimSpace(t)) != 0 {
					return nil, fmt.Errorf("read audit xml line %d: text outside the root: %w", line(d), ErrMalformed)
				}
				continue
			}
			top := stack[len(stack)-1]
			if top.wantText() {
				top.text = append(top.text, t...)
			}
		case xml.StartElement:
			if done {
				return nil, fmt.Errorf("read audit xml line %d: data after the root element: %w", line(d), ErrMalformed)
			}
			if len(stack) >= MaxDepth {
				return nil, fmt.Errorf("read audit xml line %d: %w", line(d), ErrTooDeep)
			}
			elements++
			attrs += len(t.Attr)
			if elements > MaxElements || attrs > MaxAttributes || len(t.Attr) > maxAttrsElem {
				return nil, fmt.Errorf("read audit xml line %d: too many elements or attributes: %w", line(d), ErrTooLarge)
			}
			n := &node{name: t.Name.Local, attrs: t.Attr}
			if len(stack) == 0 {
				if t.Name.Local != "AuditMessage" || t.Name.Space != "" {
					return nil, fmt.Errorf("read audit xml: %w", ErrNotAuditMessage)
				}
				root = n
			} else {
				p := stack[len(stack)-1]
				p.children = append(p.children, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1] // Strict mode has checked the match
			if len(stack) == 0 {
				done = true
			}
		}
	}
	if root == nil {
		return nil, fmt.Errorf("read audit xml: no root element: %w", ErrMalformed)
	}
	if !done {
		return nil, fmt.Errorf("read audit xml: truncated: %w", ErrMalformed)
	}
	return root, nil
}

// wantText reports whether the text content of the element is used; other text (mostly
// indentation) is not kept.
func (n *node) wantText() bool {
	switch n.name {
	case "EventOutcomeDescription", "ParticipantObjectQuery", "ParticipantObjectName":
		return true
	}
	return false
}

func line(d *xml.Decoder) int {
	l, _ := d.InputPos()
	return l
}

// syntaxErr maps a decoder error to a sentinel without its text, which may quote content
// (entity names, element names, characters).
func syntaxErr(d *xml.Decoder, err error) error {
	var se *xml.SyntaxError
	if errors.As(err, &se) {
		msg := se.Msg
		switch {
		case strings.Contains(msg, "unexpected EOF"):
			return fmt.Errorf("read audit xml line %d: truncated: %w", se.Line, ErrMalformed)
		case strings.Contains(msg, "entity") && !strings.Contains(msg, "&#"):
			// A named entity that is not one of the five predefined ones: only a DTD
			// could define it. (A bad character reference "&#..." is just malformed.)
			return fmt.Errorf("read audit xml line %d: %w", se.Line, ErrDoctype)
		case strings.Contains(msg, "UTF-8"):
			return fmt.Errorf("read audit xml line %d: %w", se.Line, ErrInvalidUTF8)
		}
		return fmt.Errorf("read audit xml line %d: %w", se.Line, ErrMalformed)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("read audit xml line %d: truncated: %w", line(d), ErrMalformed)
	}
	// Charset declarations other than UTF-8 and anything else the decoder refuses.
	return fmt.Errorf("read audit xml line %d: %w", line(d), ErrMalformed)
}
