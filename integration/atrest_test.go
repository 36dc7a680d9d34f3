package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEncryptedAtRest: a copied spool.db and vault.db contain none of the event bytes in
// clear (issue 9 item 4). The real daemon, with the token vault on, takes syslog messages
// with distinctive text and HL7 messages with patient identifiers (so the vault fills);
// after it stops, the raw bytes of both files are scanned. With spool.encrypt: false the
// same scan finds the messages in spool.db, and the tokens (the vault's keys) in vault.db:
// the scan sees what is in the files. Either way `edgeaudit export` writes the events in
// clear, and the export verifies with `edgeaudit verify -key`.
func TestEncryptedAtRest(t *testing.T) {
	tests := []struct {
		name      string
		spool     string // spool: section; "" = the default
		wantClear bool
	}{
		{"default", "", false},
		{"encrypt on", "spool: {encrypt: true}\n", false},
		{"encrypt off", "spool: {encrypt: false}\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mllp := freeAddr(t, "tcp")
			mustLoopback(t, mllp)
			extra := fmt.Sprintf("hl7: {mllp: %s}\nprivacy: {vault: true}\n%s", strconv.Quote(mllp), tt.spool)
			d := startDaemon(t, daemonConfig{MaxAge: 200 * time.Millisecond, Extra: extra})
			const markers = 200
			sendSyslog(t, d.tcp, "qzx-at-rest-marker", 0, markers, 0)
			var mrns, names []string
			for i := range 5 {
				mrn, name := fmt.Sprintf("MRN-Q%06d", 918273+i), fmt.Sprintf("XYLOPHONE%d^QUENTINA", i)
				mrns, names = append(mrns, mrn), append(names, name)
				id := fmt.Sprintf("ATR%04d", i)
				msg := "MSH|^~\\&|RIS|SITE|PACS|SITE|20261201080000||ADT^A08|" + id + "|P|2.5\rEVN|A08|20261201080000\rPID|1||" + mrn + "^^^HOSP^MR||" + name + "||19550101|M\r"
				conn := dial(t, "tcp", mllp)
				fmt.Fprintf(conn, "\x0b%s\x1c\r", msg)
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 4096)
				n, err := conn.Read(buf)
				conn.Close()
				if err != nil || !strings.Contains(string(buf[:n]), "MSA|AA|"+id) {
					t.Fatalf("ACK %q (%v), want MSA|AA|%s", buf[:n], err, id)
				}
			}
			eventually(t, waitTimeout, func() (bool, string) {
				h := d.mustHealth(t)
				return h.Committed >= markers+5, fmt.Sprintf("committed %d", h.Committed)
			})
			d.stop(t)

			spoolDB, err := os.ReadFile(filepath.Join(d.dataDir, "spool.db"))
			if err != nil {
				t.Fatal(err)
			}
			vaultDB, err := os.ReadFile(filepath.Join(d.dataDir, "vault.db"))
			if err != nil {
				t.Fatal(err)
			}
			found := 0
			for i := range markers {
				// The whole message text, so that "-1" does not also count "-10".
				if bytes.Contains(spoolDB, fmt.Appendf(nil, "qzx-at-rest-marker-%d\"", i)) {
					found++
				}
			}
			if tt.wantClear && found != markers {
				t.Fatalf("spool.encrypt off: %d of %d messages found in spool.db, want all (the scan must see them)", found, markers)
			}
			if !tt.wantClear && found != 0 {
				t.Fatalf("%d of %d messages in spool.db in clear, want none", found, markers)
			}
			if bytes.Contains(spoolDB, []byte("qzx-at-rest-marker")) != tt.wantClear {
				t.Fatalf("marker prefix in spool.db=%v, want %v", !tt.wantClear, tt.wantClear)
			}
			for i := range mrns {
				for _, f := range []struct {
					name string
					b    []byte
				}{{"spool.db", spoolDB}, {"vault.db", vaultDB}} {
					if bytes.Contains(f.b, []byte(mrns[i])) || bytes.Contains(f.b, []byte(names[i])) {
						t.Fatalf("%s holds patient identifier %d in clear", f.name, i)
					}
				}
			}

			// The export central and auditors get carries the events in clear and
			// verifies with the public key alone.
			evs := exportEvents(t, d.dataDir, true)
			tokens := 0
			got := 0
			for _, e := range evs {
				if strings.HasPrefix(e.Message, "qzx-at-rest-marker-") {
					got++
				}
			}
			for _, e := range evs {
				if e.Source.Kind == "hl7" {
					tok := patientOf(t, d.dataDir, e.ID)
					if !strings.HasPrefix(tok, "pat_") {
						t.Fatalf("HL7 event without a patient token (%q)", tok)
					}
					// The vault's keys are the tokens, in clear: the scan reads the
					// vault's pages.
					if !bytes.Contains(vaultDB, []byte(tok)) {
						t.Fatalf("token %s not found in vault.db; the scan does not see the vault's pages", tok)
					}
					tokens++
				}
			}
			if got != markers || tokens != len(mrns) {
				t.Fatalf("export has %d messages and %d HL7 events, want %d and %d", got, tokens, markers, len(mrns))
			}
			wire := filepath.Join(t.TempDir(), "batches.eab")
			if res := runCLI(t, "export", "-data", d.dataDir, "-out", wire); res.code != 0 {
				t.Fatalf("export: %s", res)
			}
			wb, err := os.ReadFile(wire)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(wb, []byte("qzx-at-rest-marker-199\"")) {
				t.Fatal("the exported batches do not carry the events in clear")
			}
			if v, res := verify(t, "-key", d.pubKey(), wire); res.code != 0 || !v.OK || v.Events < markers+len(mrns) {
				t.Fatalf("verify -key of the export: ok=%v events=%d, want ok and at least %d\n%s", v.OK, v.Events, markers+len(mrns), res)
			}
			mustVerifyData(t, d.dataDir)
		})
	}
}
