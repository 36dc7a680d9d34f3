package fhir

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
)

// request is the per-request state the handler passes around.
type request struct {
	w         http.ResponseWriter
	r         *http.Request
	ip        string
	transport string
	resp      format // response format
	body      []byte
	sum       string // hex SHA-256 of body
	unread    bool   // the answer leaves body bytes unread: close the connection after it
}

func (c *Collector) serveHTTP(w http.ResponseWriter, r *http.Request) {
	c.inflight.Add(1)
	defer c.inflight.Done()
	c.stats.requests.Add(1)
	q := &request{w: w, r: r, ip: peerIP(r.RemoteAddr), transport: "http"}
	if r.TLS != nil {
		q.transport = "https"
	}
	defer closeUnread(q)
	reqFmt := mediaFormat(r.Header.Get("Content-Type"))
	q.resp = acceptFormat(r.Header.Get("Accept"), reqFmt)

	if !c.authorized(r) {
		// Not one byte of the body is read for a sender that may not send one.
		dontDrain(q)
		w.Header().Set("WWW-Authenticate", `Bearer realm="edgeaudit"`)
		c.fail(q, http.StatusUnauthorized, ReasonUnauthorized, issue{"error", "security", "a valid bearer token is required"})
		return
	}
	rel, ok := strings.CutPrefix(r.URL.Path, c.cfg.BasePath)
	if !ok || (rel != "" && rel != "AuditEvent" && !strings.HasPrefix(rel, "AuditEvent/")) {
		c.fail(q, http.StatusNotFound, ReasonNotFound, issue{"error", "not-found", "no such endpoint; POST AuditEvent or a batch/transaction Bundle to the base"})
		return
	}
	if r.Method != http.MethodPost || strings.HasPrefix(rel, "AuditEvent/") {
		w.Header().Set("Allow", http.MethodPost)
		c.fail(q, http.StatusMethodNotAllowed, ReasonMethodNotAllowed, issue{"error", "not-supported", "this is a write-only audit feed: only POST [base]AuditEvent and POST [base] with a Bundle are supported"})
		return
	}
	if reqFmt == formatNone {
		c.fail(q, http.StatusUnsupportedMediaType, ReasonUnsupportedMediaType, issue{"error", "not-supported", "Content-Type must be application/fhir+json, application/json, application/fhir+xml or application/xml"})
		return
	}
	res := c.budget.reserve()
	defer res.releaseAll()
	if !c.readBody(q, res) {
		return
	}
	// From here on the connection waits for us, not for its peer: not evictable.
	defer holdConn(r.Context())()
	if !utf8.Valid(q.body) {
		c.fail(q, http.StatusBadRequest, ReasonInvalidUTF8, issue{"error", "invalid", "body is not valid UTF-8"})
		return
	}
	root, err := decode(q.body, reqFmt, res)
	if err != nil {
		if errors.Is(err, errOverBudget) || errors.Is(err, errTooBig) {
			c.overBudget(q, err, int64(len(q.body)))
			return
		}
		var pe *parseError
		if !errors.As(err, &pe) {
			pe = &parseError{reason: ReasonBadJSON, msg: "body does not parse"}
		}
		c.fail(q, http.StatusBadRequest, pe.reason, issue{"error", "structure", pe.msg})
		return
	}
	rt := root.str("resourceType")
	switch {
	case rel == "AuditEvent" && rt == "AuditEvent":
		c.postOne(q, root)
	case rel == "AuditEvent":
		c.fail(q, http.StatusBadRequest, ReasonWrongResourceType, issue{"error", "invalid", "expected AuditEvent, got resourceType " + clipKey(rt)})
	case rt == "Bundle":
		c.postBundle(q, root)
	default:
		c.fail(q, http.StatusBadRequest, ReasonWrongResourceType, issue{"error", "invalid", "expected a Bundle at the base (or POST AuditEvent to [base]AuditEvent), got resourceType " + clipKey(rt)})
	}
}

func decode(b []byte, f format, m *reservation) (*node, error) {
	if f == formatXML {
		return decodeXMLMetered(b, m)
	}
	return decodeJSONMetered(b, m)
}

// readBody reads the whole body within MaxBodyBytes, every byte of it charged to res
// before it is read; on failure it has answered. With a Content-Length the whole body is
// reserved up front, so a request that cannot fit is refused before its first byte is
// read; a chunked body is reserved as its buffer grows.
func (c *Collector) readBody(q *request, res *reservation) bool {
	limit := c.cfg.MaxBodyBytes
	cl := q.r.ContentLength
	if cl > limit {
		dontDrain(q) // the body stays unread
		c.rejectSized(q, http.StatusRequestEntityTooLarge, ReasonTooLarge, "", cl, tooLong(limit))
		return false
	}
	var body []byte
	var err error
	if cl >= 0 {
		if err := res.charge(cl); err != nil {
			c.overBudget(q, err, cl)
			return false
		}
		body = make([]byte, cl)
		var n int
		n, err = io.ReadFull(q.r.Body, body)
		body = body[:n]
	} else {
		body, err = readChunked(q.r.Body, limit, res)
		switch {
		case errors.Is(err, errTooBig):
			dontDrain(q)
			c.rejectSized(q, http.StatusRequestEntityTooLarge, ReasonTooLarge, sha256Hex(body), int64(len(body)), tooLong(limit))
			return false
		case errors.Is(err, errOverBudget):
			c.overBudget(q, err, int64(len(body)))
			return false
		}
	}
	if err != nil {
		// The sender went away or stalled past read_timeout: what it held is released
		// when the handler returns.
		dontDrain(q)
		c.rejectSized(q, http.StatusBadRequest, ReasonReadError, sha256Hex(body), int64(len(body)),
			issue{"error", "incomplete", "body could not be read completely"})
		return false
	}
	q.body = body
	q.sum = sha256Hex(body)
	return true
}

// readChunked reads a body of unknown length, at most limit bytes, growing its buffer by
// doubling (up to limit) and charging each growth to res first. It returns what it read
// with errTooBig past limit (then the first limit bytes) or past the whole budget,
// errOverBudget when others hold the budget the next growth needs, or the read error.
func readChunked(r io.Reader, limit int64, res *reservation) ([]byte, error) {
	var buf []byte
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				// Full at the limit: one more byte, read aside, tells a body of exactly
				// limit bytes from a longer one without charging for it.
				var probe [1]byte
				n, err := io.ReadFull(r, probe[:])
				switch {
				case n == 1:
					return buf, errTooBig
				case err == io.EOF:
					return buf, nil
				default:
					return buf, err
				}
			}
			n := min(max(2*int64(cap(buf)), reserveChunk), limit)
			if err := res.charge(n - int64(cap(buf))); err != nil {
				return buf, err
			}
			nb := make([]byte, len(buf), n)
			copy(nb, buf)
			buf = nb
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// dontDrain makes the answer the last on its connection and keeps net/http from reading
// what is left of the body: the server drains up to 256 KiB of an unread body to reuse
// the connection, whatever the response's Connection header says, unless the read fails.
// A read deadline in the past makes it fail at once (only reads; the answer is still
// written). Without a real connection (httptest) only the header is set.
func dontDrain(q *request) {
	q.unread = true
	q.w.Header().Set("Connection", "close")
	_ = http.NewResponseController(q.w).SetReadDeadline(time.Unix(1, 0))
}

// lingerDelay is how long a connection closed with body bytes unread stays half-open
// after the answer, as net/http's own rstAvoidanceDelay: closing a socket with unread
// data sends a RST, which can make the sender's kernel drop the answer before the
// sender has read it. A FIN first, then this pause, lets the answer arrive.
const lingerDelay = 500 * time.Millisecond

// closeUnread, after an answer that left the body unread, sends it, shuts the write
// side (FIN) and waits lingerDelay before net/http closes the connection; it reads
// nothing. It needs the connection, which Run's server puts in the request context.
func closeUnread(q *request) {
	if !q.unread {
		return
	}
	conn, ok := q.r.Context().Value(connKey{}).(net.Conn)
	if !ok {
		return
	}
	if err := http.NewResponseController(q.w).Flush(); err != nil {
		return
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	t := time.NewTimer(lingerDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-q.r.Context().Done(): // Run is aborting
	}
}

// connKey is the request-context key of the request's connection.
type connKey struct{}

func tooLong(limit int64) issue {
	return issue{"error", "too-long", "body exceeds " + strconv.FormatInt(limit, 10) + " bytes"}
}

// overBudget answers a request the in-flight budget cannot hold: 503 with Retry-After
// while other requests hold the budget (errOverBudget), 413 when the request alone needs
// more than all of it (errTooBig: a body that decodes into a tree many times its size).
// The connection is closed, since the body may be partly unread. Budget refusals are
// reported like connection refusals: they are a sign of a flood, worth the chain.
func (c *Collector) overBudget(q *request, err error, size int64) {
	dontDrain(q)
	sum := ""
	if q.body != nil {
		sum = sha256Hex(q.body)
	}
	if errors.Is(err, errTooBig) {
		c.rejectSized(q, http.StatusRequestEntityTooLarge, ReasonTooComplex, sum, size,
			issue{"error", "too-costly", "the resource decodes into more than fhir.max_inflight_bytes"})
		return
	}
	c.stats.overloaded.Add(1)
	c.reject(q, ReasonOverloaded, sum, size)
	if ok, n := c.limit.Allow("overloaded", c.now()); ok {
		c.log.Warn("fhir requests refused: in-flight byte budget held by other requests",
			attrPeer, q.ip, attrSize, size, attrInflight, c.budget.inUse(), attrSuppressed, n)
	}
	q.w.Header().Set("Retry-After", retryAfter)
	writeBody(q.w, q.resp, http.StatusServiceUnavailable,
		encodeOutcome(q.resp, issue{"error", "transient", "too many request bytes in flight; retry later"}))
}

// fail answers with an OperationOutcome and reports the rejected request.
func (c *Collector) fail(q *request, status int, reason string, is issue) {
	sum := q.sum
	if sum == "" && q.body != nil {
		sum = sha256Hex(q.body)
	}
	c.rejectSized(q, status, reason, sum, int64(len(q.body)), is)
}

func (c *Collector) rejectSized(q *request, status int, reason, sum string, size int64, is issue) {
	c.reject(q, reason, sum, size)
	writeBody(q.w, q.resp, status, encodeOutcome(q.resp, is))
}

func (c *Collector) reject(q *request, reason, sum string, size int64) {
	if i := reasonIndex(reason); i >= 0 {
		c.stats.rejects[i].Add(1)
	}
	c.rep.Reject(audit.KindFHIR, q.transport, q.ip, reason, sum, size)
	if ok, n := c.limit.Allow("reject/"+reason, c.now()); ok {
		c.log.Debug("fhir request rejected", attrPeer, q.ip, attrReason, reason, attrSize, size, attrSuppressed, n)
	}
}

// newEvent maps one AuditEvent of the request.
func (c *Collector) newEvent(q *request, res *node) *audit.Event {
	ev := &audit.Event{Received: c.now().UTC()}
	c.mapper.event(res, ev)
	if ev.Time.IsZero() {
		ev.Time = ev.Received
	}
	ev.Source.IP = q.ip
	ev.Source.Transport = q.transport
	ev.RawSHA256 = q.sum
	return ev
}

// unavailable answers 503 because the sink refused the event(s).
func (c *Collector) unavailable(q *request, n int, err error) {
	c.noteUnavailable(q, n, err)
	q.w.Header().Set("Retry-After", retryAfter)
	writeBody(q.w, q.resp, http.StatusServiceUnavailable,
		encodeOutcome(q.resp, issue{"error", "transient", "audit store cannot accept events now; retry later"}))
}

// noteUnavailable counts and logs (rate-limited) n events the sink refused.
func (c *Collector) noteUnavailable(q *request, n int, err error) {
	if q.r.Context().Err() != nil {
		// The client went away or Run is aborting: nobody reads this answer, and the
		// sink did not refuse anything.
		c.log.Debug("fhir request cancelled before its commit", attrPeer, q.ip, attrErr, err)
		return
	}
	c.stats.unavailable.Add(uint64(n))
	if ok, sup := c.limit.Allow("unavailable", c.now()); ok {
		c.log.Warn("fhir events refused: sink cannot store them now", attrPeer, q.ip, attrErr, err, attrSuppressed, sup)
	}
}

// postOne handles POST [base]AuditEvent: 201 only after the commit.
func (c *Collector) postOne(q *request, res *node) {
	ev := c.newEvent(q, res)
	ctx, cancel := context.WithTimeout(q.r.Context(), c.cfg.ReadTimeout)
	defer cancel()
	if err := collectors.AppendSync(ctx, c.sink, ev); err != nil {
		c.unavailable(q, 1, err)
		return
	}
	c.stats.events.Add(1)
	q.w.Header().Set("Location", c.cfg.BasePath+"AuditEvent/"+ev.ID)
	if strings.Contains(q.r.Header.Get("Prefer"), "return=minimal") {
		q.w.WriteHeader(http.StatusCreated)
		return
	}
	writeBody(q.w, q.resp, http.StatusCreated,
		encodeOutcome(q.resp, issue{"information", "informational", "AuditEvent stored as " + ev.ID}))
}

// postBundle handles POST [base] with a batch or transaction Bundle of AuditEvents.
func (c *Collector) postBundle(q *request, root *node) {
	typ := root.str("type")
	if typ != "batch" && typ != "transaction" {
		c.fail(q, http.StatusBadRequest, ReasonUnsupportedBundle, issue{"error", "not-supported", "Bundle.type must be batch or transaction, got " + clipKey(typ)})
		return
	}
	entries := root.all("entry")
	resp := make([]respEntry, len(entries))
	var evs []*audit.Event
	var idx []int // entry index of each event
	for i, e := range entries {
		code, reason, is := checkEntry(e)
		if code != 0 {
			if typ == "transaction" {
				is.diag = "entry " + strconv.Itoa(i) + ": " + is.diag + "; transaction not applied"
				c.fail(q, http.StatusBadRequest, reason, is)
				return
			}
			c.reject(q, reason, q.sum, int64(len(q.body)))
			resp[i] = respEntry{status: statusLine(code), outcome: &is}
			continue
		}
		ev := c.newEvent(q, e.get("resource"))
		if ev.Detail == nil {
			ev.Detail = make(map[string]string, 1)
		}
		ev.Detail["bundle.entry"] = strconv.Itoa(i)
		evs = append(evs, ev)
		idx = append(idx, i)
	}
	if typ == "transaction" {
		c.postTransaction(q, evs, resp)
		return
	}
	ctx, cancel := context.WithTimeout(q.r.Context(), c.cfg.ReadTimeout)
	defer cancel()
	errs := appendEach(ctx, c.sink, evs)
	failed := 0
	var firstErr error
	for k, err := range errs {
		i := idx[k]
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
			resp[i] = respEntry{status: statusLine(http.StatusServiceUnavailable),
				outcome: &issue{"error", "transient", "audit store cannot accept this entry now; retry it later"}}
			continue
		}
		c.stats.events.Add(1)
		resp[i] = respEntry{status: statusLine(http.StatusCreated), location: "AuditEvent/" + evs[k].ID}
	}
	// A batch is answered per entry, as FHIR asks, even when no entry could be stored:
	// each entry carries its own status, and the refused ones say 503. Retry-After tells
	// when to resend those.
	if failed > 0 {
		c.noteUnavailable(q, failed, firstErr)
		q.w.Header().Set("Retry-After", retryAfter)
	}
	writeBody(q.w, q.resp, http.StatusOK, encodeBundle(q.resp, "batch-response", resp))
}

// postTransaction commits a transaction's events, every entry already valid, all at once:
// 200 with a transaction-response after the one commit that holds all of them, or a
// single OperationOutcome (503) when the sink stored none of them. A resend after a 503
// whose commit was only late duplicates the whole transaction, never a part of it.
func (c *Collector) postTransaction(q *request, evs []*audit.Event, resp []respEntry) {
	if c.atomic == nil {
		c.fail(q, http.StatusNotImplemented, ReasonUnsupportedBundle, issue{"error", "not-supported",
			"this audit store cannot commit a transaction Bundle all at once; post a batch Bundle instead"})
		return
	}
	if len(evs) > 0 {
		ctx, cancel := context.WithTimeout(q.r.Context(), c.cfg.ReadTimeout)
		defer cancel()
		if err := collectors.AppendAllSync(ctx, c.atomic, evs); err != nil {
			c.unavailable(q, len(evs), err)
			return
		}
	}
	for k, ev := range evs {
		c.stats.events.Add(1)
		resp[k] = respEntry{status: statusLine(http.StatusCreated), location: "AuditEvent/" + ev.ID}
	}
	writeBody(q.w, q.resp, http.StatusOK, encodeBundle(q.resp, "transaction-response", resp))
}

// checkEntry validates one Bundle entry: an AuditEvent POSTed to AuditEvent.
func checkEntry(e *node) (int, string, issue) {
	res := e.get("resource")
	if rt := res.str("resourceType"); rt != "AuditEvent" {
		return http.StatusBadRequest, ReasonWrongResourceType, issue{"error", "invalid", "expected AuditEvent, got resourceType " + clipKey(rt)}
	}
	if req := e.get("request"); req != nil {
		if m := req.str("method"); m != http.MethodPost {
			return http.StatusMethodNotAllowed, ReasonMethodNotAllowed, issue{"error", "not-supported", "entry request.method must be POST"}
		}
		u := req.str("url")
		if i := strings.IndexAny(u, "?#"); i >= 0 {
			u = u[:i]
		}
		if u != "AuditEvent" && !strings.HasSuffix(u, "/AuditEvent") {
			return http.StatusBadRequest, ReasonInvalidEntry, issue{"error", "invalid", "entry request.url must be AuditEvent"}
		}
	}
	return 0, "", issue{}
}

// appendEach queues every event as its own commit and waits for each: a batch's
// entries stand alone. An Append refused because ctx ended ends the queuing (the rest
// get the same error); another refusal only fails its own entry.
func appendEach(ctx context.Context, sink collectors.Sink, evs []*audit.Event) []error {
	errs := make([]error, len(evs))
	type result struct {
		k   int
		err error
	}
	ch := make(chan result, len(evs))
	queued := make([]bool, len(evs))
	pending := 0
	var stop error
	for k, ev := range evs {
		if stop != nil {
			errs[k] = stop
			continue
		}
		if err := sink.Append(ctx, ev, func(err error) { ch <- result{k, err} }); err != nil {
			errs[k] = err
			if ctx.Err() != nil {
				stop = err
			}
			continue
		}
		queued[k] = true
		pending++
	}
	for ; pending > 0; pending-- {
		select {
		case r := <-ch:
			errs[r.k] = r.err
			queued[r.k] = false
		case <-ctx.Done():
			// Commits still outstanding may yet happen; the sender gets no 201 for them.
			for k := range errs {
				if queued[k] {
					errs[k] = ctx.Err()
				}
			}
			return errs
		}
	}
	return errs
}

// peerIP is the IP of a "host:port" remote address, without zone.
func peerIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i]
	}
	return host
}
