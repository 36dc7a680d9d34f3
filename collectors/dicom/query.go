package dicom

// Query subjects (issue 7 item 6): a Query event (110112) says who searched for what, so
// the query's identifier is read here to find whether it names one patient. Only the
// patient's token and the names of the keys used leave this file, never a value.

import (
	"bytes"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"io"
	"net/url"
	"strings"
)

// Query scopes (audit.Event.QueryScope).
const (
	ScopePatient = "patient"
	ScopeBroad   = "broad"
)

// Query formats, kept in detail "query.format".
const (
	formatDataset = "dicom"   // a C-FIND identifier: a DICOM dataset
	formatHL7     = "hl7"     // an HL7 v2 QBP message (PDQ ITI-21, PIX ITI-9)
	formatURL     = "url"     // a QIDO-RS or FHIR search URL (ITI-78, PDQm)
	formatXML     = "xml"     // HL7 v3 queryByParameter (ITI-47, ITI-55), ebXML AdhocQuery (ITI-18)
	formatUnknown = "unknown" // none of the above: the scope is broad, since nothing says otherwise
)

// Limits of the query readers.
const (
	maxQueryKeys     = 32  // keys listed in detail "query_keys"
	maxDatasetElems  = 512 // elements read from one identifier
	maxDatasetDepth  = 4   // sequence nesting
	maxQueryKeysText = 512 // bytes of detail "query_keys"
)

// queryInfo is what a query says about its subject.
type queryInfo struct {
	format    string
	level     string   // QueryRetrieveLevel of a C-FIND (PATIENT, STUDY, SERIES, IMAGE)
	keys      []string // matching keys with a value, as "gggg,eeee Name" or a parameter name
	patient   string   // the one patient's ID, "" if none or several
	authority string   // its assigning authority (IssuerOfPatientID, CX.4, system)
	named     int      // patient ID values seen (2 or more: several patients, broad)
	worklist  bool     // a worklist query (mwlitems/workitems URL)
}

func (q *queryInfo) addKey(k string) {
	for _, have := range q.keys {
		if have == k {
			return
		}
	}
	if len(q.keys) < maxQueryKeys {
		q.keys = append(q.keys, k)
	}
}

// setPatient records one patient ID value from the query: a single value without
// wildcards names one patient; wildcards, lists or a second value make the query broad.
func (q *queryInfo) setPatient(value, authority string) {
	value = strings.Trim(value, " \x00")
	if value == "" {
		return // universal matching: a return key, not a constraint
	}
	q.named++
	if q.named > 1 || strings.ContainsAny(value, `*?\,~%`) {
		q.patient, q.authority = "", ""
		q.named = 2
		return
	}
	q.patient, q.authority = value, strings.TrimSpace(authority)
}

// single reports the one patient the query names, if it names exactly one.
func (q *queryInfo) single() (string, string, bool) {
	if q.named == 1 && q.patient != "" {
		return q.patient, q.authority, true
	}
	return "", "", false
}

// keyList is detail "query_keys": the matching keys, never their values.
func (q *queryInfo) keyList() string {
	return truncate(strings.Join(q.keys, ";"), maxQueryKeysText)
}

// readQuery decodes a query body (already base64-decoded) of any known format.
// transferSyntax is the TransferSyntax detail of the query object, "" if none.
func readQuery(b []byte, transferSyntax string) queryInfo {
	var q queryInfo
	t := bytes.TrimLeft(b, " \t\r\n\ufeff")
	switch {
	case len(t) == 0:
		q.format = formatUnknown
	case bytes.HasPrefix(t, []byte("MSH")) && len(t) > 8:
		q.format = formatHL7
		readHL7Query(t, &q)
	case t[0] == '<':
		q.format = formatXML
		if !readXMLQuery(t, &q) {
			q = queryInfo{format: formatUnknown}
		}
	case looksDataset(b):
		q.format = formatDataset
		if err := readDatasetQuery(b, transferSyntax, &q); err != nil {
			q = queryInfo{format: formatUnknown}
		}
	case isText(t) && (bytes.IndexByte(t, '=') >= 0 || bytes.HasPrefix(t, []byte("http")) || t[0] == '/'):
		q.format = formatURL
		readURLQuery(string(t), &q)
	default:
		q.format = formatUnknown
	}
	return q
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// looksDataset reports whether b starts like a little- or big-endian DICOM dataset: an
// even group below 0x7FE1 (C-FIND identifiers start with group 0008 or 0010).
func looksDataset(b []byte) bool {
	if len(b) < 8 {
		return false
	}
	le := binary.LittleEndian.Uint16(b)
	be := binary.BigEndian.Uint16(b)
	return (le != 0 && le%2 == 0 && le <= 0x0100) || (be != 0 && be%2 == 0 && be <= 0x0100)
}

// Data element tags (group<<16 | element) the query reader needs.
const (
	tagCharset        = 0x00080005
	tagQueryLevel     = 0x00080052
	tagPatientID      = 0x00100020
	tagIssuer         = 0x00100021
	tagItem           = 0xFFFEE000
	tagItemDelim      = 0xFFFEE00D
	tagSequenceDelim  = 0xFFFEE0DD
	undefinedLength   = 0xFFFFFFFF
	transferImplicit  = "1.2.840.10008.1.2"
	transferExplicit  = "1.2.840.10008.1.2.1"
	transferBigEndian = "1.2.840.10008.1.2.2"
)

var errDataset = errors.New("not a dicom dataset")

// longVR are the explicit VRs with a 2-byte reserved field and a 4-byte length.
var longVR = map[string]bool{
	"OB": true, "OD": true, "OF": true, "OL": true, "OV": true, "OW": true, "SQ": true,
	"SV": true, "UC": true, "UN": true, "UR": true, "UT": true, "UV": true,
}

var shortVR = map[string]bool{
	"AE": true, "AS": true, "AT": true, "CS": true, "DA": true, "DS": true, "DT": true,
	"FL": true, "FD": true, "IS": true, "LO": true, "LT": true, "PN": true, "SH": true,
	"SL": true, "SS": true, "ST": true, "TM": true, "UI": true, "UL": true, "US": true,
}

// dataset reads a DICOM dataset: explicit or implicit VR, little or big endian, with
// sequences of defined or undefined length.
type dataset struct {
	b        []byte
	explicit bool
	order    binary.ByteOrder
	elems    int
	visit    func(path string, tag uint32, value []byte)
}

func readDatasetQuery(b []byte, ts string, q *queryInfo) error {
	d := dataset{b: b, order: binary.LittleEndian}
	switch strings.TrimRight(strings.TrimSpace(ts), "\x00") {
	case transferImplicit:
	case transferExplicit:
		d.explicit = true
	case transferBigEndian:
		d.explicit, d.order = true, binary.BigEndian
	default:
		// No (or an unknown) transfer syntax: guess from the first element.
		if g := binary.LittleEndian.Uint16(b); g == 0 || g%2 == 1 || g > 0x0100 {
			d.order = binary.BigEndian
		}
		d.explicit = shortVR[string(b[4:6])] || longVR[string(b[4:6])]
	}
	var issuer, id string
	var haveID bool
	d.visit = func(path string, tag uint32, value []byte) {
		v := strings.Trim(string(value), " \x00")
		switch {
		case path == "" && tag == tagPatientID:
			id, haveID = v, true
		case path == "" && tag == tagIssuer:
			issuer = v
		case path == "" && tag == tagQueryLevel:
			switch v {
			case "PATIENT", "STUDY", "SERIES", "IMAGE":
				q.level = v
			}
			return
		case tag == tagCharset || tag&0xFFFF == 0: // character set, group lengths
			return
		}
		if v != "" {
			q.addKey(path + keyName(tag))
		}
	}
	end, err := d.elements(0, len(b), "", 0)
	if err != nil || end != len(b) || d.elems == 0 {
		return errDataset
	}
	if haveID {
		q.setPatient(id, issuer)
	}
	return nil
}

func (d *dataset) tag(off int) uint32 {
	return uint32(d.order.Uint16(d.b[off:]))<<16 | uint32(d.order.Uint16(d.b[off+2:]))
}

// elements reads elements from off up to end; with end < 0 (an item of undefined length)
// it reads up to and including the item delimiter. It returns the offset after them.
func (d *dataset) elements(off, end int, path string, depth int) (int, error) {
	limit := end
	if limit < 0 {
		limit = len(d.b)
	}
	for off < limit {
		if off+8 > limit {
			return 0, errDataset
		}
		if d.elems++; d.elems > maxDatasetElems {
			return 0, errDataset
		}
		tag := d.tag(off)
		if tag == tagItemDelim {
			if end >= 0 {
				return 0, errDataset
			}
			return off + 8, nil
		}
		if tag>>16 == 0xFFFE {
			return 0, errDataset
		}
		var (
			vr     string
			length uint32
			hdr    int
		)
		if d.explicit {
			vr = string(d.b[off+4 : off+6])
			switch {
			case longVR[vr]:
				if off+12 > limit {
					return 0, errDataset
				}
				length, hdr = d.order.Uint32(d.b[off+8:]), 12
			case shortVR[vr]:
				length, hdr = uint32(d.order.Uint16(d.b[off+6:])), 8
			default:
				return 0, errDataset
			}
		} else {
			length, hdr = d.order.Uint32(d.b[off+4:]), 8
		}
		off += hdr
		seq := vr == "SQ" || length == undefinedLength ||
			(!d.explicit && length >= 8 && int(length) <= limit-off && d.tag(off) == tagItem)
		if seq {
			if depth >= maxDatasetDepth {
				return 0, errDataset
			}
			next, err := d.items(off, length, limit, path+keyTag(tag)+">", depth+1)
			if err != nil {
				return 0, err
			}
			off = next
			continue
		}
		if int(length) > limit-off {
			return 0, errDataset
		}
		d.visit(path, tag, d.b[off:off+int(length)])
		off += int(length)
	}
	if end < 0 {
		return 0, errDataset // an item of undefined length without its delimiter
	}
	return off, nil
}

// items reads the items of a sequence starting at off: length bytes, or up to the
// sequence delimiter when the length is undefined.
func (d *dataset) items(off int, length uint32, limit int, path string, depth int) (int, error) {
	end := limit
	if length != undefinedLength {
		if int(length) > limit-off {
			return 0, errDataset
		}
		end = off + int(length)
	}
	for off < end {
		if off+8 > end {
			return 0, errDataset
		}
		if d.elems++; d.elems > maxDatasetElems {
			return 0, errDataset
		}
		tag, n := d.tag(off), d.order.Uint32(d.b[off+4:])
		off += 8
		switch tag {
		case tagSequenceDelim:
			if length != undefinedLength {
				return 0, errDataset
			}
			return off, nil
		case tagItem:
			if n == undefinedLength {
				next, err := d.elements(off, -1, path, depth)
				if err != nil {
					return 0, err
				}
				off = next
				continue
			}
			if int(n) > end-off {
				return 0, errDataset
			}
			next, err := d.elements(off, off+int(n), path, depth)
			if err != nil {
				return 0, err
			}
			off = next
		default:
			return 0, errDataset
		}
	}
	if length == undefinedLength {
		return 0, errDataset // no sequence delimiter
	}
	return off, nil
}

func keyTag(tag uint32) string {
	const hex = "0123456789ABCDEF"
	var b [9]byte
	for i, shift := 0, 28; i < 9; i++ {
		if i == 4 {
			b[i] = ','
			continue
		}
		b[i] = hex[(tag>>shift)&0xF]
		shift -= 4
	}
	return string(b[:])
}

// keyName is "gggg,eeee Keyword" for the matching keys of the query/retrieve and
// worklist models, "gggg,eeee" for others.
func keyName(tag uint32) string {
	if name, ok := queryKeywords[tag]; ok {
		return keyTag(tag) + " " + name
	}
	return keyTag(tag)
}

var queryKeywords = map[uint32]string{
	0x00080018: "SOPInstanceUID",
	0x00080020: "StudyDate",
	0x00080030: "StudyTime",
	0x00080050: "AccessionNumber",
	0x00080060: "Modality",
	0x00080061: "ModalitiesInStudy",
	0x00080062: "SOPClassesInStudy",
	0x00080090: "ReferringPhysicianName",
	0x00081030: "StudyDescription",
	0x0008103E: "SeriesDescription",
	0x00100010: "PatientName",
	0x00100020: "PatientID",
	0x00100021: "IssuerOfPatientID",
	0x00100030: "PatientBirthDate",
	0x00100040: "PatientSex",
	0x00101000: "OtherPatientIDs",
	0x00101002: "OtherPatientIDsSequence",
	0x0020000D: "StudyInstanceUID",
	0x0020000E: "SeriesInstanceUID",
	0x00200010: "StudyID",
	0x00200011: "SeriesNumber",
	0x00200013: "InstanceNumber",
	0x00321060: "RequestedProcedureDescription",
	0x00400001: "ScheduledStationAETitle",
	0x00400002: "ScheduledProcedureStepStartDate",
	0x00400003: "ScheduledProcedureStepStartTime",
	0x00400006: "ScheduledPerformingPhysicianName",
	0x00400007: "ScheduledProcedureStepDescription",
	0x00400009: "ScheduledProcedureStepID",
	0x00400010: "ScheduledStationName",
	0x00400011: "ScheduledProcedureStepLocation",
	0x00400100: "ScheduledProcedureStepSequence",
	0x00401001: "RequestedProcedureID",
}

// readHL7Query reads the QPD segment of an HL7 v2 query: PDQ (ITI-21, QPD-3 a list of
// "@PID.x.y^value" pairs) or PIX (ITI-9, QPD-3 a CX).
func readHL7Query(b []byte, q *queryInfo) {
	fs := b[3]
	comp, rep, sub := byte('^'), byte('~'), byte('&')
	segs := bytes.FieldsFunc(b, func(r rune) bool { return r == '\r' || r == '\n' })
	if len(segs) > 0 {
		if f := bytes.SplitN(segs[0], []byte{fs}, 3); len(f) > 1 && len(f[1]) >= 4 {
			comp, rep, sub = f[1][0], f[1][1], f[1][3]
		}
	}
	for _, seg := range segs {
		f := bytes.Split(seg, []byte{fs})
		if string(f[0]) != "QPD" || len(f) < 4 {
			continue
		}
		qpd3 := f[3]
		if len(qpd3) > 0 && qpd3[0] == '@' {
			var authority string
			var ids []string
			for _, r := range bytes.Split(qpd3, []byte{rep}) {
				name, value, _ := bytes.Cut(bytes.TrimPrefix(r, []byte("@")), []byte{comp})
				field := limit(string(name))
				if field == "" {
					continue
				}
				if len(bytes.Trim(value, " ")) > 0 && keyShape(field) {
					q.addKey(field)
				}
				switch field {
				case "PID.3.1", "PID.3":
					v, _, _ := bytes.Cut(value, []byte{comp})
					ids = append(ids, string(v))
				case "PID.3.4.1", "PID.3.4":
					v, _, _ := bytes.Cut(value, []byte{sub})
					authority = string(v)
				}
			}
			for _, id := range ids {
				q.setPatient(id, authority)
			}
		} else if len(qpd3) > 0 {
			q.addKey("QPD-3")
			c := bytes.Split(qpd3, []byte{comp})
			var authority string
			if len(c) > 3 {
				a, _, _ := bytes.Cut(c[3], []byte{sub})
				authority = string(a)
			}
			if bytes.IndexByte(qpd3, rep) >= 0 {
				q.named = 2 // several identifiers
			}
			q.setPatient(string(c[0]), authority)
		}
		return
	}
}

// readURLQuery reads a QIDO-RS or FHIR search: PatientID / 00100020 (QIDO),
// identifier, patient.identifier, subject.identifier ("system|value"), patient, subject
// ("Patient/id") and _id on a Patient search name the patient.
func readURLQuery(s string, q *queryInfo) {
	path, raw, ok := strings.Cut(s, "?")
	if !ok {
		if i := strings.LastIndexByte(s, '/'); i >= 0 {
			path, raw = s[:i+1], s[i+1:]
		} else {
			path, raw = "", s
		}
	}
	lp := strings.ToLower(path)
	if strings.Contains(lp, "/mwlitems") || strings.Contains(lp, "/workitems") {
		q.worklist = true
	}
	patientSearch := strings.HasSuffix(strings.TrimRight(lp, "/"), "/patient")
	var issuer string
	var ids []string
	for _, kv := range strings.Split(raw, "&") {
		k, v, _ := strings.Cut(kv, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		name, _, _ := strings.Cut(k, ":") // FHIR modifiers (identifier:exact)
		lname := strings.ToLower(name)
		switch lname {
		case "", "limit", "offset", "includefield", "fuzzymatching", "orderby", "_format", "_count", "_sort", "_include", "_revinclude", "_elements", "_summary", "_total":
			continue
		}
		if v == "" || !keyShape(name) {
			continue
		}
		q.addKey(name)
		switch lname {
		case "patientid", "00100020":
			ids = append(ids, v)
		case "issuerofpatientid", "00100021":
			issuer = v
		case "identifier", "patient.identifier", "subject.identifier", "patient:patient.identifier":
			if patientSearch || lname != "identifier" {
				sys, val, found := strings.Cut(v, "|")
				if !found {
					sys, val = "", v
				}
				q.setPatient(val, sys)
			}
		case "patient", "subject":
			if id, ok := strings.CutPrefix(v, "Patient/"); ok || lname == "patient" {
				if !ok {
					id = v
				}
				q.setPatient(id, "")
			}
		case "_id":
			if patientSearch {
				q.setPatient(v, "")
			}
		}
	}
	for _, id := range ids {
		q.setPatient(id, issuer)
	}
}

// keyShape reports whether a parameter name is fit to be listed: a name (letters,
// digits, '.', '_', '-'; at most 64 bytes) starting with a letter or '_', or a tag in
// QIDO's 8-hex-digit form. A sender's odd parameter cannot put a value into the list.
func keyShape(k string) bool {
	if k == "" || len(k) > maxKeyPart {
		return false
	}
	if len(k) == 8 && strings.Trim(k, "0123456789abcdefABCDEF") == "" {
		return true
	}
	c := k[0]
	if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '$') {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// xdsPatientSlots are the ebXML stored-query parameters that name the patient.
var xdsPatientSlots = map[string]bool{
	"$XDSDocumentEntryPatientId": true, "$XDSSubmissionSetPatientId": true,
	"$XDSFolderPatientId": true, "$patientId": true,
}

// readXMLQuery reads an HL7 v3 queryByParameter (livingSubjectId value@extension,
// @root) or an ebXML AdhocQuery (a $...PatientId slot holding a CX). It reports false
// for XML it cannot read (a DTD, a syntax error).
func readXMLQuery(b []byte, q *queryInfo) bool {
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	d.Entity = nil
	var (
		stack    []string
		slot     string
		inParams bool
		inValue  bool
		elems    int
	)
	for {
		tok, err := d.Token()
		if err != nil {
			return err == io.EOF
		}
		switch t := tok.(type) {
		case xml.Directive:
			return false
		case xml.StartElement:
			if elems++; elems > MaxElements || len(stack) >= MaxDepth {
				return false
			}
			name := t.Name.Local
			parent := ""
			if len(stack) > 0 {
				parent = stack[len(stack)-1]
			}
			stack = append(stack, name)
			switch {
			case name == "parameterList":
				inParams = true
			case inParams && parent == "parameterList":
				if keyShape(name) {
					q.addKey(name)
				}
			case name == "value" && parent == "livingSubjectId":
				q.setPatient(attrOf(t, "extension"), attrOf(t, "root"))
			case name == "Slot":
				slot = attrOf(t, "name")
				if keyShape(slot) {
					q.addKey(slot)
				}
			case name == "Value" && xdsPatientSlots[slot]:
				inValue = true
			}
		case xml.CharData:
			if inValue {
				v := strings.Trim(strings.TrimSpace(string(t)), "()'")
				c := strings.Split(v, "^")
				var authority string
				if len(c) > 3 {
					parts := strings.Split(c[3], "&")
					authority = parts[0]
					if authority == "" && len(parts) > 1 {
						authority = parts[1]
					}
				}
				q.setPatient(c[0], authority)
			}
		case xml.EndElement:
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			switch t.Name.Local {
			case "parameterList":
				inParams = false
			case "Slot":
				slot = ""
			case "Value":
				inValue = false
			}
		}
	}
}

func attrOf(t xml.StartElement, name string) string {
	for _, a := range t.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}
