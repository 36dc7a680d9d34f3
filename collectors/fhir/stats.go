package fhir

import (
	"sync/atomic"

	"github.com/edgeaudit/edgeaudit/internal/connset"
)

// Reject reasons, reported through collectors.Reporter.Reject and counted in Stats.
const (
	ReasonBadJSON              = "bad_json"
	ReasonBadXML               = "bad_xml"
	ReasonXMLDoctype           = "xml_doctype"
	ReasonInvalidUTF8          = "invalid_utf8"
	ReasonWrongResourceType    = "wrong_resource_type"
	ReasonTooLarge             = "too_large"
	ReasonUnsupportedMediaType = "unsupported_media_type"
	ReasonUnauthorized         = "unauthorized"
	ReasonMethodNotAllowed     = "method_not_allowed"
	ReasonNotFound             = "not_found"
	ReasonUnsupportedBundle    = "unsupported_bundle"
	ReasonInvalidEntry         = "invalid_bundle_entry"
	ReasonReadError            = "read_error"
	ReasonTLSHandshake         = "tls_handshake"
	// ReasonOverloaded is a 503 because other requests held the in-flight byte budget.
	ReasonOverloaded = "overloaded"
	// ReasonTooComplex is a 413 for a body whose decoded tree alone would need more than
	// the whole in-flight budget.
	ReasonTooComplex = "too_complex"
	// Connection refusals and evictions by the fhir.max_connections and
	// max_connections_per_ip limits (the shared connset keywords).
	ReasonTooManyConnections = connset.ReasonTooManyConnections
	ReasonTooManyPerIP       = connset.ReasonTooManyPerIP
	ReasonEvictedIdle        = connset.ReasonEvictedIdle
	// ReasonHandshakeTimeout is a TLS handshake that did not finish in time.
	ReasonHandshakeTimeout = connset.ReasonHandshakeTimeout
)

var rejectReasons = [...]string{
	ReasonBadJSON, ReasonBadXML, ReasonXMLDoctype, ReasonInvalidUTF8, ReasonWrongResourceType,
	ReasonTooLarge, ReasonUnsupportedMediaType, ReasonUnauthorized, ReasonMethodNotAllowed,
	ReasonNotFound, ReasonUnsupportedBundle, ReasonInvalidEntry, ReasonReadError, ReasonTLSHandshake,
	ReasonOverloaded, ReasonTooComplex, ReasonTooManyConnections, ReasonTooManyPerIP, ReasonEvictedIdle,
	ReasonHandshakeTimeout,
}

func reasonIndex(reason string) int {
	for i, r := range rejectReasons {
		if r == reason {
			return i
		}
	}
	return -1
}

type counters struct {
	requests    atomic.Uint64
	events      atomic.Uint64
	unavailable atomic.Uint64
	overloaded  atomic.Uint64
	rejects     [len(rejectReasons)]atomic.Uint64
}

// Stats is a snapshot of the collector's counters, for metrics and health checks.
type Stats struct {
	// Requests counts HTTP requests served, whatever their outcome.
	Requests uint64
	// Events counts AuditEvents the sink committed (a Bundle counts each entry).
	Events uint64
	// Unavailable counts AuditEvents answered with 503 because the sink refused them.
	Unavailable uint64
	// Overloaded counts requests answered 503 because the in-flight byte budget was
	// held by other requests (also in Rejects["overloaded"]).
	Overloaded uint64
	// InflightBytes is how much of fhir.max_inflight_bytes requests hold now.
	InflightBytes int64
	// Connections is how many connections are open now.
	Connections int64
	// Rejects counts refused requests (and refused Bundle entries) per reason.
	Rejects map[string]uint64
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (c *Collector) Stats() Stats {
	s := &c.stats
	st := Stats{
		Requests:    s.requests.Load(),
		Events:      s.events.Load(),
		Unavailable: s.unavailable.Load(),
		Overloaded:  s.overloaded.Load(),
		Rejects:     make(map[string]uint64, len(rejectReasons)),
	}
	for i, r := range rejectReasons {
		st.Rejects[r] = s.rejects[i].Load()
	}
	if c.budget != nil {
		st.InflightBytes = c.budget.inUse()
	}
	if c.conns != nil {
		st.Connections = c.conns.Open()
	}
	return st
}
