package clinical

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"sync"
	"testing"
)

// adtA08 is a typical ADT^A08 (update patient information) of an ADT feed, about 540 bytes,
// MLLP-framed, with a distinct control id per message.
func adtA08(conn, seq int) []byte {
	msg := fmt.Sprintf("MSH|^~\\&|HIS|HOSP|EDGEAUDIT|HOSP|20260315103000+0100||ADT^A08^ADT_A01|C%02dM%08d|P|2.5.1|||AL|NE||UNICODE UTF-8\r"+
		"EVN|A08|20260315103000|||TECH%d^Tech^Tina^^^^^^HOSP\r"+
		"PID|1||PAT%06d^^^HOSP&1.2.3.4&ISO^MR~%09d^^^SSA&2.16.840.1.113883.4.1&ISO^SS||Doe^Jane^Q^^^^L||19720304|F|||12 Main St^^Springfield^IL^62701^USA^H||^PRN^PH^^^217^5550100|||M||ACC%08d|123-45-6789\r"+
		"PV1|1|I|WARD1^101^A^HOSP||||1234^Attending^Anna^^^^MD|||MED||||ADM|||||VIS%08d|||||||||||||||||||||||||20260314080000\r"+
		"PV2|||^Chest pain\r"+
		"AL1|1|DA|^Penicillin||Rash\r",
		conn, seq, conn, seq%1000000, seq, seq, seq)
	return append(append([]byte{0x0b}, msg...), 0x1c, 0x0d)
}

// BenchmarkHL7MLLP sends ADT^A08 over N MLLP connections, each waiting for its CA (sent
// after the spool's fsync'd commit) before sending the next message.
func BenchmarkHL7MLLP(b *testing.B) {
	for _, conns := range []int{1, 8, 16} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) { benchHL7(b, conns) })
	}
}

func benchHL7(b *testing.B, conns int) {
	s := startDaemon(b)
	addr, _ := s.d.ClinicalAddrs()
	var cs []net.Conn
	for range conns {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	// Pre-build the messages so the sender costs little.
	frames := make([][][]byte, conns)
	for i := range conns {
		for j := range split(b.N, conns, i) {
			frames[i] = append(frames[i], adtA08(i, j))
		}
	}
	s.measure(b, b.N, func() {
		var wg sync.WaitGroup
		errs := make(chan error, conns)
		for i, c := range cs {
			wg.Go(func() {
				r := bufio.NewReader(c)
				for _, f := range frames[i] {
					if _, err := c.Write(f); err != nil {
						errs <- err
						return
					}
					ack, err := r.ReadSlice(0x1c)
					if err != nil {
						errs <- err
						return
					}
					// The message asks for a commit ACK (MSH-15 AL), so it gets CA.
					if !bytes.Contains(ack, []byte("\rMSA|CA|")) {
						errs <- fmt.Errorf("not CA: %q", ack)
						return
					}
					if _, err := r.ReadByte(); err != nil { // the CR after FS
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	})
}
