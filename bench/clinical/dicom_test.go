package clinical

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// dicomQuery is a typical DICOM audit message for a C-FIND (EventID 110112 Query), as a
// PACS sends it (adapted from collectors/dicom/testdata/query-base64-patient): requestor
// and PACS participants, the audit source, the query object (SOP class, base64 query,
// transfer syntax) and the patient. About 2.3 KiB.
func dicomQuery(seq int) string {
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<AuditMessage xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <EventIdentification EventActionCode="E" EventDateTime="2026-01-02T10:00:00.000+00:00" EventOutcomeIndicator="0">
    <EventID csd-code="110112" codeSystemName="DCM" originalText="Query"/>
  </EventIdentification>
  <ActiveParticipant UserID="FINDSCU" AlternativeUserID="AETITLE=FINDSCU" UserIsRequestor="true" NetworkAccessPointID="10.9.8.7" NetworkAccessPointTypeCode="2">
    <RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>
  </ActiveParticipant>
  <ActiveParticipant UserID="PACS1" AlternativeUserID="AETITLE=PACS1" UserIsRequestor="false" NetworkAccessPointID="pacs1.example" NetworkAccessPointTypeCode="1">
    <RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID"/>
  </ActiveParticipant>
  <ActiveParticipant UserID="dr.house" UserName="House^Gregory" UserIsRequestor="false" NetworkAccessPointID="ws12.example" NetworkAccessPointTypeCode="1">
    <RoleIDCode csd-code="110154" codeSystemName="DCM" originalText="Destination Media"/>
  </ActiveParticipant>
  <AuditSourceIdentification AuditSourceID="PACS1" AuditEnterpriseSiteID="HOSP">
    <AuditSourceTypeCode csd-code="4"/>
  </AuditSourceIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="1.2.840.10008.5.1.4.1.2.2.1" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="24">
    <ParticipantObjectIDTypeCode csd-code="110181" codeSystemName="DCM" originalText="SOP Class UID"/>
    <ParticipantObjectQuery>UXVlcnlSZXRyaWV2ZUxldmVsPVNUVURZClBhdGllbnRJRD1QSURRNzcwMDEKUGF0aWVudE5hbWU9RE9FXkpBTkUKU3R1ZHlEYXRlPTIwMjUwMTAxLQ==</ParticipantObjectQuery>
    <ParticipantObjectDetail type="TransferSyntax" value="MS4yLjg0MC4xMDAwOC4xLjIuMQ=="/>
  </ParticipantObjectIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="PIDQ%06d^^^HOSP&amp;1.2.3.4&amp;ISO" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">
    <ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/>
    <ParticipantObjectName>DOE^JANE</ParticipantObjectName>
  </ParticipantObjectIdentification>
</AuditMessage>`, seq%1000000)
}

// dicomFrame wraps the XML in RFC 5424 (PS3.15 A.6: MSGID IHE+RFC-3881) with octet
// counting (RFC 6587).
func dicomFrame(seq int) []byte {
	msg := "<85>1 2026-01-02T10:00:00.123Z pacs1.example DCM4CHEE 1234 IHE+RFC-3881 - " + dicomQuery(seq)
	return []byte(strconv.Itoa(len(msg)) + " " + msg)
}

// BenchmarkDICOMSyslogTCP sends DICOM audit messages (110112 Query, ~2.3 KiB) in
// octet-counted RFC 5424 over one TCP connection without waiting (syslog has no
// acknowledgement) and stops the clock when /healthz counts them all as committed.
func BenchmarkDICOMSyslogTCP(b *testing.B) {
	s := startDaemon(b)
	_, tcp, _ := s.d.SyslogAddrs()
	var frames [][]byte
	for i := range 1024 {
		frames = append(frames, dicomFrame(i))
	}
	conn, err := net.Dial("tcp", tcp.String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	base := s.committed(b) // the start event
	malformed := s.metrics(b)["edgeaudit_syslog_malformed_total"]
	s.measure(b, b.N, func() {
		sendErr := make(chan error, 1)
		go func() {
			w := bufio.NewWriterSize(conn, 256<<10)
			for i := range b.N {
				if _, err := w.Write(frames[i%len(frames)]); err != nil {
					sendErr <- err
					return
				}
			}
			sendErr <- w.Flush()
		}()
		if err := <-sendErr; err != nil {
			b.Fatal(err)
		}
		for s.committed(b) < base+uint64(b.N) {
			time.Sleep(2 * time.Millisecond)
		}
	})
	if m := s.metrics(b)["edgeaudit_syslog_malformed_total"]; m != malformed {
		b.Fatalf("%v messages did not parse as DICOM audit messages", m-malformed)
	}
}
