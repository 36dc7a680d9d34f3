package fhir

// The JSON decoder before jsontext (encoding/json's Decoder.Token loop, a map per
// object), kept as the reference FuzzDecodeJSONReference compares the new one with.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// refNode is the tree the reference decoder built: a map of lists per object.
type refNode struct {
	val  string
	kids map[string][]*refNode
}

func (n *refNode) add(k string, c *refNode) {
	if n.kids == nil {
		n.kids = make(map[string][]*refNode)
	}
	n.kids[k] = append(n.kids[k], c)
}

// decodeJSON decodes one FHIR JSON resource. Duplicate member names are refused (the
// FHIR JSON format forbids them, and last-wins would let `"resourceType"` be smuggled),
// as are trailing data, nesting over maxDepth and arrays of arrays. Members starting
// with '_' (extensions of primitives) and nulls are skipped.
func refDecodeJSON(b []byte) (*refNode, error) { return refDecodeJSONMetered(b, nil) }

// refDecodeJSONMetered is decodeJSON charging every node to m (see reservation): a body of
// many tiny values decodes into a tree up to 30 times its size, which the in-flight
// budget must see. A charge that fails ends decoding with errOverBudget or errTooBig.
func refDecodeJSONMetered(b []byte, m *reservation) (*refNode, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	tok, err := d.Token()
	if err != nil {
		return nil, refJSONErr(err)
	}
	if tok != json.Delim('{') {
		return nil, &parseError{reason: ReasonBadJSON, msg: "JSON body must be an object"}
	}
	n, err := refDecodeJSONObject(d, 1, m)
	if err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, &parseError{reason: ReasonBadJSON, msg: "data after the JSON resource"}
	}
	return n, nil
}

func refJSONErr(err error) error {
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

// refDecodeJSONObject reads the members of an object whose '{' was consumed.
func refDecodeJSONObject(d *json.Decoder, depth int, m *reservation) (*refNode, error) {
	if depth > maxDepth {
		return nil, &parseError{reason: ReasonBadJSON, msg: fmt.Sprintf("JSON nested deeper than %d", maxDepth)}
	}
	if err := m.chargeNode(0); err != nil {
		return nil, err
	}
	n := &refNode{kids: make(map[string][]*refNode)}
	seen := make(map[string]struct{})
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, refJSONErr(err)
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
		vals, err := refDecodeJSONValue(d, depth, true, m)
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

// refDecodeJSONValue reads one value; an array (when allowed) yields its elements.
func refDecodeJSONValue(d *json.Decoder, depth int, arrayOK bool, m *reservation) ([]*refNode, error) {
	tok, err := d.Token()
	if err != nil {
		return nil, refJSONErr(err)
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
			c, err := refDecodeJSONObject(d, depth+1, m)
			if err != nil {
				return nil, err
			}
			return []*refNode{c}, nil
		case '[':
			if !arrayOK {
				return nil, &parseError{reason: ReasonBadJSON, msg: "JSON array inside an array"}
			}
			var out []*refNode
			for d.More() {
				v, err := refDecodeJSONValue(d, depth+1, false, m)
				if err != nil {
					return nil, err
				}
				out = append(out, v...)
			}
			if _, err := d.Token(); err != nil { // ']'
				return nil, refJSONErr(err)
			}
			return out, nil
		}
		return nil, &parseError{reason: ReasonBadJSON, msg: "unexpected JSON delimiter"}
	case string:
		return []*refNode{{val: t}}, nil
	case json.Number:
		return []*refNode{{val: t.String()}}, nil
	case bool:
		if t {
			return []*refNode{{val: "true"}}, nil
		}
		return []*refNode{{val: "false"}}, nil
	case nil:
		return nil, nil
	}
	return nil, &parseError{reason: ReasonBadJSON, msg: "unexpected JSON token"}
}

// FuzzDecodeJSONReference checks the jsontext decoder against the encoding/json one it
// replaced: the same tree, the same charge to the budget, and the same error, but for
// the byte offset of a syntax error (encoding/json's Decoder counted it from the start
// of the scalar being read, jsontext from the start of the body).
func FuzzDecodeJSONReference(f *testing.F) {
	fuzzSeeds(f, ".json")
	for _, s := range []string{
		``, ` `, `{}`, `{} `, `{}{}`, `{} x`, `[]`, `"x"`, `{"a":1,"a":2}`, `{"a":null,"a":1}`,
		`{"_a":1,"_a":2}`, `{"a":[],"a":1}`, `{"a":[[1]]}`, `{"a":[1,null,{"b":true}],"c":false}`,
		`{"a":-0.5e+3}`, `{"a":01}`, `{"a":"\ud800"}`, `{"a":"\ud83d\ude00"}`, "{\"a\":\"\xff\xfe\"}",
		"{\"\xc3\":1,\"\xc3\":2}", `{"a":"b\u0000c"}`, `{"a":"unterminated`, `{"a":1`, `{"a" 1}`,
		`{"a":1 "b":2}`, `{1:2}`, `{"a":tru}`, `{"a":[1,]}`, `{"a":{"b":{"c":{}}}}`,
		strings.Repeat(`{"a":`, 70) + strings.Repeat(`}`, 70),
		`{"a0":1,"a1":1,"a2":1,"a3":1,"a4":1,"a5":1,"a6":1,"a7":1,"a8":1,"a9":1,"b0":1,"b1":1,"b2":1,"b3":1,"b4":1,"b5":1,"b6":1,"b7":1,"a3":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rres := newBudget(1 << 40).reserve()
		want, wantErr := refDecodeJSONMetered(b, rres)
		nres := newBudget(1 << 40).reserve()
		got, err := decodeJSONMetered(b, nres)
		if !sameJSONErr(err, wantErr) {
			t.Fatalf("error %v, encoding/json gave %v", err, wantErr)
		}
		if err == nil {
			if diff := diffTree("", got, want); diff != "" {
				t.Fatalf("tree differs at %s", diff)
			}
		}
		if err == nil && nres.spent != rres.spent {
			t.Fatalf("charged %d, encoding/json's decoder %d", nres.spent, rres.spent)
		}
	})
}

// sameJSONErr compares errors but for the offset of a syntax error.
func sameJSONErr(a, b error) bool {
	if a == nil || b == nil {
		return a == b
	}
	const syntax = "JSON syntax error at byte "
	if strings.HasPrefix(a.Error(), syntax) && strings.HasPrefix(b.Error(), syntax) {
		return true
	}
	return a.Error() == b.Error()
}

// diffTree is "" when n holds what r does, else the path where they part.
func diffTree(path string, n *node, r *refNode) string {
	if n.val != r.val || len(n.kids) != len(r.kids) {
		return path
	}
	if (n.idx != nil) != (len(n.kids) > indexAt) {
		return path + " (index)"
	}
	for _, kv := range n.kids {
		rl, ok := r.kids[kv.name]
		if !ok || len(rl) != len(kv.vals) {
			return path + "/" + kv.name
		}
		if n.all(kv.name) == nil {
			return path + "/" + kv.name + " (lookup)"
		}
		for i := range rl {
			if d := diffTree(fmt.Sprintf("%s/%s/%d", path, kv.name, i), kv.vals[i], rl[i]); d != "" {
				return d
			}
		}
	}
	return ""
}

// TestDecodeJSONInvalidUTF8 pins what invalid UTF-8 in a string becomes: U+FFFD for
// each byte that is not part of a valid sequence, as encoding/json did.
func TestDecodeJSONInvalidUTF8(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
	}{
		{"lone continuation", "a\x80b", "a\uFFFDb"},
		{"two bad bytes", "\xff\xfe", "\uFFFD\uFFFD"},
		{"truncated sequence", "x\xe2\x82", "x\uFFFD\uFFFD"},
		{"valid", "é€", "é€"},
		{"lone surrogate escape", `\ud800z`, "\uFFFDz"},
		{"surrogate pair escape", `\ud83d\ude00`, "😀"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte(`{"resourceType":"AuditEvent","id":"` + tt.in + `","k` + tt.in + `":"v"}`)
			n, err := decodeJSON(body)
			if err != nil {
				t.Fatalf("decodeJSON: %v", err)
			}
			r, err := refDecodeJSON(body)
			if err != nil {
				t.Fatalf("refDecodeJSON: %v", err)
			}
			if got, want := n.str("id"), tt.want; got != want {
				t.Fatalf("id=%q, want %q", got, want)
			}
			if got, want := n.str("id"), r.kids["id"][0].val; got != want {
				t.Fatalf("id=%q, encoding/json %q", got, want)
			}
			if got := n.str("k" + tt.want); got != "v" {
				t.Fatalf("member k%q=%q, want \"v\"", tt.want, got)
			}
		})
	}
}
