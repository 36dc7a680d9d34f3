package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

// Self-audit actions of exports and verifications.
const (
	// ActionExport records every export of the chain (edgeaudit export), through the
	// running daemon or from a stopped spool.
	ActionExport = "audit.export"
	// ActionVerifyFailed records an edgeaudit verify of this appliance's chain that
	// found a bad batch.
	ActionVerifyFailed = "audit.verify_failed"
)

// CodeExport is the DICOM event an export is (DCM 110106 Export), kept beside the
// taxonomy code as the DICOM collector keeps the source's codes.
var CodeExport = audit.Code{System: "DCM", Code: "110106", Text: "Export"}

// AdminAddrFile is the file in the data folder that holds the bound admin address while
// the daemon runs, for CLI commands given only -data DIR.
const AdminAddrFile = "admin.addr"

// UserHeader names, on an admin request, the login of the person the CLI runs for; it
// is recorded in the chain.
const UserHeader = "X-Edgeaudit-User"

// Headers of GET /v1/export: the chain position the export was cut at, sent before the
// body, and trailers after it: the outcome ("ok", or what went wrong) and the counts.
// A stream whose status trailer is not "ok" is incomplete, whatever it holds.
const (
	HeaderChain      = "X-Edgeaudit-Chain"
	HeaderHeadSeq    = "X-Edgeaudit-Head-Seq"
	HeaderHeadHash   = "X-Edgeaudit-Head-Hash"
	HeaderAckedSeq   = "X-Edgeaudit-Acked-Seq"
	HeaderPrunedSeq  = "X-Edgeaudit-Pruned-Seq"
	HeaderPrunedHash = "X-Edgeaudit-Pruned-Hash"
	TrailerStatus    = "X-Edgeaudit-Status"
	TrailerBatches   = "X-Edgeaudit-Batches"
	TrailerEvents    = "X-Edgeaudit-Events"
	TrailerFirstSeq  = "X-Edgeaudit-First-Seq"
	TrailerLastSeq   = "X-Edgeaudit-Last-Seq"
	TrailerEventID   = "X-Edgeaudit-Event-Id"
)

// Export purposes: an export is recorded in the chain; the read a verify does is not
// (it writes nothing out, and a failure is recorded through POST /v1/verify/failed).
const (
	PurposeExport = "export"
	PurposeVerify = "verify"
)

// ExportRequest is what an export selects. GET /v1/export takes it as query
// parameters (Values); the CLI's export of a stopped spool uses the same type.
type ExportRequest struct {
	// From is the first seq (0 or 1: the first batch kept); To the last (0: the head
	// when the export starts).
	From, To uint64
	// Events writes the events as JSON lines instead of batches in the wire format.
	Events bool
	// Open adds, with Events, the committed events after the last exported batch.
	Open bool
	// Filter selects events; in the wire format it selects whole batches that hold at
	// least one matching event (a batch is verifiable only whole).
	Filter audit.Filter
	// Purpose is PurposeExport ("" too) or PurposeVerify.
	Purpose string
}

// Values encodes r as URL query parameters.
func (r *ExportRequest) Values() url.Values {
	v := r.Filter.Values()
	if r.From > 1 {
		v.Set("from", strconv.FormatUint(r.From, 10))
	}
	if r.To > 0 {
		v.Set("to", strconv.FormatUint(r.To, 10))
	}
	if r.Events {
		v.Set("events", "1")
	}
	if r.Open {
		v.Set("open", "1")
	}
	if r.Purpose != "" && r.Purpose != PurposeExport {
		v.Set("purpose", r.Purpose)
	}
	return v
}

// ParseExportRequest is the inverse of Values, and checks what Values cannot express.
func ParseExportRequest(v url.Values) (ExportRequest, error) {
	var r ExportRequest
	var err error
	for _, p := range []struct {
		key string
		dst *uint64
	}{{"from", &r.From}, {"to", &r.To}} {
		if s := v.Get(p.key); s != "" {
			if *p.dst, err = strconv.ParseUint(s, 10, 64); err != nil {
				return r, fmt.Errorf("%s %q is not a seq", p.key, s)
			}
		}
	}
	r.Events, r.Open = v.Get("events") == "1", v.Get("open") == "1"
	if r.Filter, err = audit.ParseFilter(v); err != nil {
		return r, err
	}
	r.Purpose = v.Get("purpose")
	if r.Purpose == "" {
		r.Purpose = PurposeExport
	}
	return r, r.Check()
}

// Check refuses requests that make no sense.
func (r *ExportRequest) Check() error {
	switch {
	case r.Open && !r.Events:
		return errors.New("open needs events (unsealed events are not a batch)")
	case r.Open && r.To > 0:
		return errors.New("open with to: the open events follow the head, not seq to")
	case r.To > 0 && r.To < max(r.From, 1):
		return fmt.Errorf("to %d is before from %d", r.To, max(r.From, 1))
	case r.Purpose != "" && r.Purpose != PurposeExport && r.Purpose != PurposeVerify:
		return fmt.Errorf("purpose %q: want %s or %s", r.Purpose, PurposeExport, PurposeVerify)
	case r.Purpose == PurposeVerify && (r.Events || !r.Filter.IsZero()):
		return errors.New("a verify reads whole batches without filters")
	}
	return nil
}

// ExportResult counts what an export wrote.
type ExportResult struct {
	Batches  int    // batches written (or, with Events, that held a written event)
	Scanned  int    // batches read
	Events   int    // events written (with Events), or events in the written batches
	FirstSeq uint64 // first and last seq written; 0 when none
	LastSeq  uint64
	Bytes    int64
}

// ErrPrunedDuringExport means batches within the export's range were pruned while it
// ran (they were acknowledged and past retention): the export would have a gap.
var ErrPrunedDuringExport = errors.New("batches pruned during the export")

// errDaemonStopping ends an export that runs when the daemon stops.
var errDaemonStopping = errors.New("the daemon is stopping")

// errStop ends a Batches walk at the export's last seq.
var errStop = errors.New("stop")

// WriteExport writes the sealed batches from req.From to last (inclusive) that req
// selects to w, reading them through batches (spool.Spool.Batches or
// spool.Reader.Batches: one short read transaction per batch), then with req.Open the
// events after last that openEvents returns. progress, when not nil, is called after
// each batch read. It stops, with ctx's cause, when ctx is done. The daemon's export
// endpoint and the CLI's export of a stopped spool both write through it.
func WriteExport(ctx context.Context, w io.Writer, batches func(from uint64, fn func(*ledger.Batch) error) error, req ExportRequest, last uint64,
	openEvents func(after uint64) ([][]byte, error), progress func(ExportResult)) (ExportResult, error) {
	var res ExportResult
	bw := bufio.NewWriterSize(w, 256<<10)
	var buf []byte
	var next uint64 // the seq expected next; 0 before the first
	writeEvent := func(e []byte) error {
		if !req.Filter.MatchJSON(e) {
			return nil
		}
		res.Events++
		res.Bytes += int64(len(e)) + 1
		bw.Write(e)
		return bw.WriteByte('\n')
	}
	err := batches(max(req.From, 1), func(b *ledger.Batch) error {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		h, err := ledger.ParseHeader(b.Header)
		if err != nil {
			return fmt.Errorf("batch header: %w", err)
		}
		if h.Seq > last {
			return errStop
		}
		if next != 0 && h.Seq != next {
			return fmt.Errorf("%w: expected seq %d, the spool now starts at %d (export again with -from %d)", ErrPrunedDuringExport, next, h.Seq, h.Seq)
		}
		next = h.Seq + 1
		res.Scanned++
		defer func() {
			if progress != nil {
				progress(res)
			}
		}()
		if req.Events {
			n := res.Events
			for _, e := range b.Events {
				if err := writeEvent(e); err != nil {
					return err
				}
			}
			if res.Events > n {
				res.note(h.Seq)
			}
			return nil
		}
		if !req.Filter.IsZero() && !matchAny(&req.Filter, b.Events) {
			return nil
		}
		buf = b.AppendWire(buf[:0])
		res.note(h.Seq)
		res.Events += len(b.Events)
		res.Bytes += int64(len(buf))
		_, err = bw.Write(buf)
		return err
	})
	if err != nil && !errors.Is(err, errStop) {
		return res, err
	}
	if req.Open && openEvents != nil {
		evs, err := openEvents(last)
		if err != nil {
			return res, err
		}
		for _, e := range evs {
			if err := writeEvent(e); err != nil {
				return res, err
			}
		}
	}
	return res, bw.Flush()
}

func (r *ExportResult) note(seq uint64) {
	if r.FirstSeq == 0 {
		r.FirstSeq = seq
	}
	r.LastSeq = seq
	r.Batches++
}

func matchAny(f *audit.Filter, events [][]byte) bool {
	for _, e := range events {
		if f.MatchJSON(e) {
			return true
		}
	}
	return false
}

// ExportEvent is the self-audit event of one export: who (by), through what (via:
// "daemon" or "spool"), what it selected and what it wrote; outcome minor_failure with
// the reason when it did not complete (err). A patient filter is also the event's
// patient, so that the patient's trail shows who exported their events.
func ExportEvent(by, via string, req ExportRequest, res ExportResult, err error, now time.Time) audit.Event {
	e := selfEvent(now, ActionExport, audit.OutcomeSuccess, "")
	e.ActionCode = "R"
	e.Codes = []audit.Code{CodeExport}
	e.Actor = audit.Actor{User: by, Requestor: true}
	e.Patient = req.Filter.Patient
	e.QueryScope = audit.QueryScopeBroad
	if e.Patient != "" {
		e.QueryScope = audit.QueryScopePatient
	}
	e.Count = res.Events
	d := req.Filter.Detail()
	d["via"] = via
	d["format"] = "batches"
	if req.Events {
		d["format"] = "events"
	}
	if req.Open {
		d["open"] = "true"
	}
	d["from_seq"] = strconv.FormatUint(max(req.From, 1), 10)
	if req.To > 0 {
		d["to_seq"] = strconv.FormatUint(req.To, 10)
	}
	d["batches"] = strconv.Itoa(res.Batches)
	d["bytes"] = strconv.FormatInt(res.Bytes, 10)
	if res.FirstSeq > 0 {
		d["first_seq"] = strconv.FormatUint(res.FirstSeq, 10)
		d["last_seq"] = strconv.FormatUint(res.LastSeq, 10)
	}
	d["result"] = "complete"
	if err != nil {
		e.Outcome, e.Reason, d["result"] = audit.OutcomeMinorFailure, err.Error(), "incomplete"
	}
	e.Detail = d
	return e
}

// VerifyFailure is the body of POST /v1/verify/failed: what a verify of this
// appliance's chain found.
type VerifyFailure struct {
	By     string `json:"by"`
	Seq    uint64 `json:"seq"`
	Reason string `json:"reason"` // a ledger.Reason*
	Detail string `json:"detail"`
	// Via is how the chain was read: "daemon" or "spool".
	Via string `json:"via"`
}

// VerifyFailedEvent is the self-audit event of a verify that failed.
func VerifyFailedEvent(f VerifyFailure, now time.Time) audit.Event {
	e := selfEvent(now, ActionVerifyFailed, audit.OutcomeSeriousFailure, f.Reason+": "+f.Detail)
	e.Actor = audit.Actor{User: f.By, Requestor: true}
	e.Detail = map[string]string{"seq": strconv.FormatUint(f.Seq, 10), "reason": f.Reason, "via": f.Via}
	return e
}

// exportHandler answers GET /v1/export: the sealed batches up to the head at the start
// of the request (HeaderHeadSeq), streamed in the wire format or as JSON lines, then
// the trailers. Each batch is read in its own short read transaction, so a long export
// (or a slow client) never holds one open: bbolt's writer would wait for it whenever it
// grows the file, and the pages it pins would grow the file meanwhile. Sealed batches do
// not change, so the result is the chain as it was at the start; only a prune (of
// acknowledged batches past retention) could remove one meanwhile, and that ends the
// export with ErrPrunedDuringExport. The export is recorded in the chain (ActionExport)
// after the last byte and before the trailers; a status trailer other than "ok" tells
// the client not to keep what it got.
//
// An export still running when the daemon stops (runCtx done) ends there, incomplete,
// so that it does not hold the admin endpoint's shutdown for the whole budget.
func exportHandler(runCtx context.Context, sp *spool.Spool, sink collectors.Sink, adminToken string, log *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !adminAuthorized(w, r, adminToken) {
			return
		}
		req, err := ParseExportRequest(r.URL.Query())
		if err != nil {
			http.Error(w, "export: "+err.Error(), http.StatusBadRequest)
			return
		}
		pos, err := sp.Position()
		if err != nil {
			http.Error(w, "export: read the chain position: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		last := pos.HeadSeq
		if req.To > 0 {
			last = min(last, req.To)
		}
		hd := w.Header()
		hd.Set("Content-Type", "application/octet-stream")
		if req.Events {
			hd.Set("Content-Type", "application/x-ndjson")
		}
		hd.Set(HeaderChain, pos.Chain)
		hd.Set(HeaderHeadSeq, strconv.FormatUint(last, 10))
		if last == pos.HeadSeq {
			hd.Set(HeaderHeadHash, pos.HeadHash)
		}
		hd.Set(HeaderAckedSeq, strconv.FormatUint(pos.AckedSeq, 10))
		hd.Set(HeaderPrunedSeq, strconv.FormatUint(pos.PrunedSeq, 10))
		hd.Set(HeaderPrunedHash, pos.PrunedHash)
		hd.Set("Trailer", strings.Join([]string{TrailerStatus, TrailerBatches, TrailerEvents, TrailerFirstSeq, TrailerLastSeq, TrailerEventID}, ", "))
		w.WriteHeader(http.StatusOK)
		begin := time.Now()
		ctx, cancel := context.WithCancelCause(r.Context())
		defer cancel(nil)
		defer context.AfterFunc(runCtx, func() { cancel(errDaemonStopping) })()
		if runCtx.Err() != nil {
			cancel(errDaemonStopping) // AfterFunc runs in its own goroutine, maybe later
		}
		res, err := WriteExport(ctx, w, sp.Batches, req, last, sp.EventsAfter, nil)
		if err == nil && ctx.Err() != nil {
			err = context.Cause(ctx) // the client went away: what it got is not an export
		}
		status := "ok"
		if err != nil {
			status = "error: " + err.Error()
		}
		if req.Purpose != PurposeVerify {
			by := r.Header.Get(UserHeader)
			ev := ExportEvent(by, "daemon", req, res, err, time.Now())
			// Recorded even when the client is gone: the bytes it got left the appliance.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
			rerr := collectors.AppendSync(rctx, sink, &ev)
			cancel()
			switch {
			case rerr != nil:
				log.Error("record export", "err", rerr)
				if err == nil {
					status = "error: could not record the export in the chain: " + rerr.Error()
				}
			default:
				hd.Set(TrailerEventID, ev.ID)
			}
			log.Info("export", "by", by, "batches", res.Batches, "events", res.Events, "first_seq", res.FirstSeq,
				"last_seq", res.LastSeq, "bytes", res.Bytes, "took", time.Since(begin).Round(time.Millisecond), "status", status)
		}
		hd.Set(TrailerStatus, status)
		hd.Set(TrailerBatches, strconv.Itoa(res.Batches))
		hd.Set(TrailerEvents, strconv.Itoa(res.Events))
		hd.Set(TrailerFirstSeq, strconv.FormatUint(res.FirstSeq, 10))
		hd.Set(TrailerLastSeq, strconv.FormatUint(res.LastSeq, 10))
	}
}

// verifyFailedHandler answers POST /v1/verify/failed: a verify of this chain (the CLI
// checks the batches against the public key itself, which is better evidence than the
// daemon vouching for its own spool) found a bad batch; the finding is recorded.
func verifyFailedHandler(sink collectors.Sink, adminToken string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !adminAuthorized(w, r, adminToken) {
			return
		}
		var f VerifyFailure
		if err := json.NewDecoder(io.LimitReader(r.Body, 16<<10)).Decode(&f); err != nil || f.Reason == "" {
			http.Error(w, `body must be {"by":...,"seq":...,"reason":...,"detail":...}`, http.StatusBadRequest)
			return
		}
		ev := VerifyFailedEvent(f, time.Now())
		if err := collectors.AppendSync(r.Context(), sink, &ev); err != nil {
			http.Error(w, "could not record the failed verify: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"event_id": ev.ID})
	}
}

// publishAdminAddr writes the bound admin address to AdminAddrFile in the data folder
// (atomically, mode 0600), so that CLI commands given only -data DIR find the running
// daemon, and returns the function that removes it at stop. A file left by a daemon
// that was killed names an address nobody (or another daemon, which refuses this data
// folder's admin token) answers on; the CLI then works on the stopped spool.
func publishAdminAddr(dataDir string, addr net.Addr, log *slog.Logger) func() {
	path := filepath.Join(dataDir, AdminAddrFile)
	if err := atomicfile.WriteFile(path, []byte(adminSpec(addr)+"\n"), 0o600); err != nil {
		log.Warn("write admin address file (CLI commands given -data find the daemon only with -config)", "path", path, "err", err)
		return func() {}
	}
	return func() {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("remove admin address file", "path", path, "err", err)
		}
	}
}

// ReadAdminAddr returns the admin address the daemon running on dataDir published, or
// "" when there is none.
func ReadAdminAddr(dataDir string) string {
	b, err := os.ReadFile(filepath.Join(dataDir, AdminAddrFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
