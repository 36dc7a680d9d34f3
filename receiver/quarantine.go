package receiver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
)

// quarantineNote is the .json written beside a quarantined batch.
type quarantineNote struct {
	Site     string `json:"site"`
	Device   string `json:"device"`
	Seq      uint64 `json:"seq"`
	Reason   string `json:"reason"`
	Detail   string `json:"detail"`
	Received string `json:"received"`
	Bytes    int    `json:"bytes"`
	SHA256   string `json:"sha256"`
}

// refuse counts, logs and quarantines a refused batch and returns ref. The payload is
// written only when the names are valid path elements and the budget allows.
func (r *Receiver) refuse(_ context.Context, ref *RefusedError, payload []byte) error {
	reason := ref.Reason()
	r.stats.refusedMu.Lock()
	r.stats.refused[reason]++
	r.stats.refusedMu.Unlock()
	if payload != nil {
		ref.Quarantined, ref.QuarantineErr = r.quarantine(ref, payload)
		if ref.QuarantineErr != nil {
			r.stats.quarantineSkipped.Add(1)
		} else {
			r.stats.quarantined.Add(1)
		}
	}
	r.log.Warn("batch refused", attrSite, ref.Site, attrDevice, ref.Device, attrSeq, ref.Seq, attrReason, reason,
		"detail", ref.Detail, attrBytes, len(payload), attrFile, ref.Quarantined)
	return ref
}

func (r *Receiver) quarantine(ref *RefusedError, payload []byte) (string, error) {
	if n := r.stats.quarantineBytes.Add(int64(len(payload))); n > r.cfg.MaxQuarantineBytes {
		r.stats.quarantineBytes.Add(-int64(len(payload)))
		return "", fmt.Errorf("quarantine budget of %d bytes used up", r.cfg.MaxQuarantineBytes)
	}
	now := r.now().UTC()
	dir := filepath.Join(r.cfg.Quarantine, ref.Site, ref.Device)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("quarantine: %w", err)
	}
	// The time to the ns makes names unique within one receiver; O_EXCL (below) makes
	// sure nothing earlier is ever replaced.
	base := filepath.Join(dir, fmt.Sprintf("%s-%s-%s", now.Format("20060102T150405.000000000Z"), SeqName(ref.Seq), ref.Reason()))
	f, err := os.OpenFile(base+".eab", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("quarantine: %w", err)
	}
	_, err = f.Write(payload)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("quarantine: %w", err)
	}
	sum := sha256.Sum256(payload)
	note, _ := json.MarshalIndent(quarantineNote{Site: ref.Site, Device: ref.Device, Seq: ref.Seq, Reason: ref.Reason(),
		Detail: ref.Detail, Received: now.Format(time.RFC3339Nano), Bytes: len(payload), SHA256: hex.EncodeToString(sum[:])}, "", "  ")
	if err := atomicfile.WriteFile(base+".json", append(note, '\n'), 0o600); err != nil {
		return base + ".eab", fmt.Errorf("quarantine note: %w", err)
	}
	return base + ".eab", nil
}
