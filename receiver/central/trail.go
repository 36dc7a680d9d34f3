package central

import (
	"log/slog"

	"github.com/edgeaudit/edgeaudit/receiver"
)

var _ Trail = (*receiver.AuditTrail)(nil)

// newTrail opens central's own audit trail in store, signed with central's key.
func newTrail(store receiver.Store, signer receiver.Signer, site, device string, logger *slog.Logger) (Trail, error) {
	return receiver.NewAuditTrail(store, signer, site, device, logger)
}
