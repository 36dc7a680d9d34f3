package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/collectors"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
	"github.com/edgeaudit/edgeaudit/uplink"
)

// maxReceiptsBody bounds a receipts file posted to the admin endpoint: a receipt is a
// few hundred bytes, and a site imports one per device and trip.
const maxReceiptsBody = 4 << 20

// ReceiptsSummary is what an import of receipts did; the CLI prints it.
type ReceiptsSummary struct {
	Receipts  int      `json:"receipts"`
	Verified  int      `json:"verified"`
	Bad       []string `json:"bad,omitempty"`
	Incidents []string `json:"incidents,omitempty"`
	AckedSeq  uint64   `json:"acked_seq"`
	Moved     bool     `json:"moved"`
	EventID   string   `json:"event_id"`
}

// ImportReceipts applies receipts carried by hand from central (air-gapped sites) to an
// open spool while the daemon is stopped: the checks of the MQTT path (uplink.ApplyReceipts),
// the receipt kept beside the spool, then the ack; the import is recorded in the chain
// (and so is any rollback or fork it revealed). Central's key must be installed.
func ImportReceipts(ctx context.Context, cfg *Config, sp *spool.Spool, receipts [][]byte, by string) (ReceiptsSummary, error) {
	src := &lateSource{}
	src.sp.Store(sp)
	book := newReceiptBook(cfg)
	book.required = true
	k, err := ReadCentralKey(book.keyPath)
	if err != nil {
		return ReceiptsSummary{}, fmt.Errorf("import receipts: %w", err)
	}
	book.pub = k
	pos, err := sp.Position()
	if err != nil {
		return ReceiptsSummary{}, fmt.Errorf("import receipts: %w", err)
	}
	book.load(pos.Chain)
	rep := &syncReporter{ctx: ctx, sink: sp}
	return importReceipts(ctx, src, book, rep, sp, receipts, by)
}

func importReceipts(ctx context.Context, src uplink.Source, book *receiptBook, rep uplink.Reporter, sink collectors.Sink,
	receipts [][]byte, by string) (ReceiptsSummary, error) {
	res, err := uplink.ApplyReceipts(src, book, rep, receipts)
	sum := ReceiptsSummary{Receipts: res.Receipts, Verified: res.Verified, AckedSeq: res.AckedSeq, Moved: res.Moved}
	for _, b := range res.Bad {
		sum.Bad = append(sum.Bad, b.Error())
	}
	for _, in := range res.Incidents {
		sum.Incidents = append(sum.Incidents, fmt.Sprintf("%s at seq %d (local head %d)", in.Kind, in.Seq, in.LocalHead))
	}
	e := receiptsEvent(sum, by, err)
	if rerr := collectors.AppendSync(ctx, sink, &e); rerr != nil {
		return sum, fmt.Errorf("record the receipts import: %w", rerr)
	}
	sum.EventID = e.ID
	if err != nil {
		return sum, err
	}
	return sum, nil
}

func receiptsEvent(sum ReceiptsSummary, by string, err error) audit.Event {
	e := selfEvent(time.Now(), ActionReceiptsImported, audit.OutcomeSuccess, "")
	e.Actor = audit.Actor{User: by, Requestor: true}
	e.Count = sum.Verified
	e.Detail = map[string]string{"receipts": fmt.Sprint(sum.Receipts), "verified": fmt.Sprint(sum.Verified),
		"bad": fmt.Sprint(len(sum.Bad)), "acked_seq": fmt.Sprint(sum.AckedSeq)}
	switch {
	case err != nil:
		e.Outcome, e.Reason = audit.OutcomeSeriousFailure, err.Error()
	case len(sum.Incidents) > 0:
		e.Outcome, e.Reason = audit.OutcomeSeriousFailure, strings.Join(sum.Incidents, "; ")
	case len(sum.Bad) > 0:
		e.Outcome, e.Reason = audit.OutcomeMinorFailure, fmt.Sprintf("%d receipts did not verify", len(sum.Bad))
	}
	return e
}

// syncReporter records an incident found by a receipts import at once (no daemon runs
// to queue it).
type syncReporter struct {
	ctx  context.Context
	sink collectors.Sink
}

func (r *syncReporter) Report(in uplink.Incident) {
	e := incidentEvent(in, time.Now())
	_ = collectors.AppendSync(r.ctx, r.sink, &e) // on failure, the import's own event says it too
}

// receiptsHandler answers POST /v1/receipts (a receipts file) while the daemon runs:
// the admin token is required, since the import moves what may be pruned.
func (d *Daemon) receiptsHandler(src *lateSource, sink collectors.Sink, adminToken string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !adminAuthorized(w, r, adminToken) {
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxReceiptsBody+1))
		if err != nil || len(body) > maxReceiptsBody {
			http.Error(w, "receipts file unreadable or larger than 4 MiB", http.StatusBadRequest)
			return
		}
		receipts, err := ledger.ReadReceipts(bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		book, rep := d.receipts, d.reporter
		d.mu.Unlock()
		if book == nil { // no uplink: build one for this import
			sp, err := src.get()
			var pos spool.Position
			if err == nil {
				pos, err = sp.Position()
			}
			if err != nil {
				http.Error(w, "spool unreadable", http.StatusServiceUnavailable)
				return
			}
			book = newReceiptBook(&d.cfg)
			book.load(pos.Chain)
		}
		var reporter uplink.Reporter = rep
		if rep == nil {
			reporter = &syncReporter{ctx: r.Context(), sink: sink}
		}
		if err := book.keyStatus(); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		sum, err := importReceipts(r.Context(), src, book, reporter, sink, receipts, r.Header.Get("X-Edgeaudit-User"))
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(map[string]any{"error": err.Error(), "summary": sum})
			return
		}
		json.NewEncoder(w).Encode(sum)
	}
}
