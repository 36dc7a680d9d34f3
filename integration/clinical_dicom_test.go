package integration

import "testing"

// TestClinicalDICOMOverSyslogTLS sends every DICOM audit sample of the shared corpus as
// the MSG of an RFC 5424 frame over one mutual-TLS syslog connection. Each must become
// exactly one event of kind "dicom" over "tls", and the chain must verify.
func TestClinicalDICOMOverSyslogTLS(t *testing.T) {
	t.Parallel()
	clinicalCorpus(t)
	ca := newPKI(t, t.TempDir(), "dicom")
	d := startClinical(t, clinicalConfig{SyslogTLS: &serverTLS{Cert: ca.ServerCert, Key: ca.ServerKey, ClientCA: ca.CAFile}})
	sums := sendDICOMCorpus(t, d.tls, ca.clientTLS(t, ca.ClientCert, ca.ClientKey))
	d.waitMetric(t, float64(len(sums)), "edgeaudit_syslog_received_total", "transport", "tls")
	d.stop(t)

	evs := exportClinical(t, d.dataDir, false)
	checkDICOMEvents(t, evs, sums)
	rejected := rejectedReasons(evs, "syslog")
	for r, n := range rejected {
		t.Errorf("%d syslog inputs rejected (%s), want none", n, r)
	}
	v := mustVerifyData(t, d.dataDir)
	t.Logf("DICOM samples sent: %d; dicom events: %d; rejected: %d; chain: %d batches, %d events",
		len(sums), len(eventsOfKind(evs, "dicom")), len(rejected), v.Batches, v.Events)
}
