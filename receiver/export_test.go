package receiver

import "context"

// HandleGroup handles the payloads of site/dev in order as one group, as Run handles
// what it has queued, and returns the last receipt, after the group's commit.
func HandleGroup(ctx context.Context, r *Receiver, site, dev string, payloads [][]byte) ([]byte, error) {
	g := &group{}
	var rc []byte
	for _, p := range payloads {
		o, err := r.handle(ctx, g, site, dev, p)
		if err != nil {
			return nil, err
		}
		rc = o.receipt
	}
	if err := r.commit(ctx, g); err != nil {
		return nil, err
	}
	return rc, nil
}
