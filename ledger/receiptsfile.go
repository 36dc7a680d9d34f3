package ledger

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
)

// A receipts file carries receipts by hand, from central to an air-gapped appliance
// (`edgeaudit receive import` writes one, `edgeaudit receipts import` reads it). It is
// JSON lines, one object per receipt, so that the signed notes (which end in signature
// lines, not in a delimiter) stay whole and the file stays readable:
//
//	{"receipt":"edgeaudit.receipt/v1\nsite s1\n…\n\n— edgeaudit/central …\n"}
//
// Unknown fields are ignored so that later versions may add some.
type receiptLine struct {
	Receipt string `json:"receipt"`
}

// WriteReceipts writes receipts as a receipts file.
func WriteReceipts(w io.Writer, receipts [][]byte) error {
	bw := bufio.NewWriter(w)
	for _, rc := range receipts {
		b, err := json.Marshal(receiptLine{Receipt: string(rc)})
		if err != nil {
			return fmt.Errorf("write receipts: %w", err)
		}
		bw.Write(b)
		bw.WriteByte('\n')
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write receipts: %w", err)
	}
	return nil
}

// ReadReceipts reads a receipts file. It checks the shape of each receipt
// (ParseReceipt), not its signature: the reader verifies with central's key.
func ReadReceipts(r io.Reader) ([][]byte, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 2*MaxReceiptSize)
	var out [][]byte
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var rl receiptLine
		if err := json.Unmarshal(line, &rl); err != nil {
			return nil, fmt.Errorf("read receipts line %d: %w", n, err)
		}
		if _, err := ParseReceipt([]byte(rl.Receipt)); err != nil {
			return nil, fmt.Errorf("read receipts line %d: %w", n, err)
		}
		out = append(out, []byte(rl.Receipt))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read receipts: %w", err)
	}
	return out, nil
}
