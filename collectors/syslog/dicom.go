package syslog

// DICOM audit messages (IHE ATNA, DICOM PS3.15 A.6/A.7) arrive as the MSG of a syslog
// message. This file is the hook that hands them to collectors/dicom.

import (
	"bytes"
	"strings"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors/dicom"
)

// DetailDICOMError is the Detail key holding the reason keyword (dicom.Reason*) of a
// DICOM audit message that could not be turned into a dicom event.
const DetailDICOMError = "dicom.error"

// ReasonDICOMInMalformed is the reason of a frame that is not valid syslog but carries
// a DICOM AuditMessage: its text is not kept either.
const ReasonDICOMInMalformed = "dicom_in_malformed_syslog"

// SetTokenizer gives the collector the tokenizer that DICOM audit messages need for their
// patient identifiers. Call it before Run; parsers built before the call keep the
// previous value. Without a tokenizer, DICOM audit messages are kept as malformed syslog
// events without their XML body (Detail "dicom.error" = "dicom_no_tokenizer") and
// reported as rejects.
func (c *Collector) SetTokenizer(t *audit.Tokenizer) { c.tok.Store(t) }

// newParserFor returns a parser with the collector's tokenizer.
func (c *Collector) newParserFor() *parser {
	p := newParser(c.loc)
	p.tok = c.tok.Load()
	p.redact = c.redact.Load()
	return p
}

// SetRedactor gives the collector the redaction rules for free text. Call it before Run.
func (c *Collector) SetRedactor(r *audit.Redactor) { c.redact.Store(r) }

// parseDICOM is called with every well-formed syslog message. When its MSG looks like XML
// it is parsed as a DICOM audit message and ev becomes a dicom event. If that fails, ev
// stays a syslog event but loses its text (the XML may hold patient data in clear): it is
// marked malformed and the reason is kept in Detail and in p.dicomErr for the reject
// report; raw_sha256 still evidences the bytes.
func (p *parser) parseDICOM(ev *audit.Event) {
	if !dicom.Looks(ev.Message) {
		// Some senders put a tag or a second header before the XML. Parse it from where
		// it starts; kept as free text, it would store the patient in clear.
		i := strings.Index(ev.Message, "<AuditMessage")
		if i < 0 {
			return
		}
		if j := strings.LastIndex(ev.Message[:i], "<?xml"); j >= 0 {
			i = j
		}
		if !dicom.Looks(ev.Message[i:]) {
			p.dicomFailed(ev, ReasonDICOMInMalformed)
			return
		}
		ev.Message = ev.Message[i:]
	}
	msg := []byte(ev.Message)
	err := dicom.Parse(msg, p.tok, ev) // a nil tokenizer gives ErrNoTokenizer
	if err == nil {
		return
	}
	p.dicomFailed(ev, dicom.Reason(err))
}

// redactMalformedDICOM drops the text of a frame kept as malformed syslog when it
// carries a DICOM AuditMessage.
func (p *parser) redactMalformedDICOM(ev *audit.Event, frame []byte) {
	if bytes.Contains(frame, []byte("<AuditMessage")) {
		p.dicomFailed(ev, ReasonDICOMInMalformed)
	}
}

func (p *parser) dicomFailed(ev *audit.Event, reason string) {
	ev.Message = ""
	ev.Malformed = true
	if ev.Detail == nil {
		ev.Detail = make(map[string]string, 1)
	}
	ev.Detail[DetailDICOMError] = reason
	p.dicomErr = reason
}
