package central

import (
	"context"
	"crypto/ecdsa"

	"github.com/edgeaudit/edgeaudit/receiver"
)

var _ receiver.KeyRotator = (*TOFUKeys)(nil)

// Rotate implements receiver.KeyRotator: a rotation announced in a batch the enrolled
// key signed replaces the enrolled key (the old one stays beside it), under the lock
// that Offer takes, so a trust-on-first-use enrolment cannot race it.
func (k *TOFUKeys) Rotate(ctx context.Context, site, device string, next *ecdsa.PublicKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.Folder.Rotate(ctx, site, device, next)
}
