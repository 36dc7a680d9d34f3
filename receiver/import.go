package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// ImportResult is what Import did with one file.
type ImportResult struct {
	Batches  int      // batches read
	Refused  []error  // one *RefusedError per refused batch, in file order
	Receipts [][]byte // the last receipt of each device in the file, in order of first appearance
}

// Import handles each batch of an exported file (`edgeaudit export`, carried by hand
// from an air-gapped site) as if it had arrived on its device's topic, the site and
// device taken from its header. Refused batches are quarantined and listed, and do not
// stop the import; a file that cannot be read further, or a store error, does (what was
// stored until then stays stored). The receipts are for `edgeaudit receipts import` on
// the appliance.
func (r *Receiver) Import(ctx context.Context, rd io.Reader) (ImportResult, error) {
	var res ImportResult
	last := map[string]int{} // site/device → index in res.Receipts
	br := ledger.NewReader(rd)
	for {
		b, err := br.Next()
		if err == io.EOF {
			return res, nil
		}
		if err != nil {
			return res, fmt.Errorf("import batch %d: %w", res.Batches+1, err)
		}
		res.Batches++
		h, err := ledger.ParseHeader(b.Header)
		if err != nil {
			// No names to file it under: Handle refuses it as malformed.
			h = ledger.Header{}
		}
		rc, err := r.Handle(ctx, h.Site, h.Device, b.AppendWire(nil))
		var ref *RefusedError
		if errors.As(err, &ref) {
			res.Refused = append(res.Refused, err)
			continue
		}
		if err != nil {
			return res, fmt.Errorf("import batch %d: %w", res.Batches, err)
		}
		if rc == nil {
			continue
		}
		k := h.Site + "/" + h.Device
		if i, ok := last[k]; ok {
			res.Receipts[i] = rc
		} else {
			last[k] = len(res.Receipts)
			res.Receipts = append(res.Receipts, rc)
		}
	}
}
