package central

import "github.com/edgeaudit/edgeaudit/receiver"

// setReceiverHooks sets what receiver.Config has for central beyond ReceiverConfig: the
// refusal hook and the shared subscription group.
func setReceiverHooks(rc *receiver.Config, cfg Config, onRefuse func(*receiver.RefusedError)) {
	rc.OnRefuse = onRefuse
	rc.SharedGroup = cfg.SharedGroup
}
