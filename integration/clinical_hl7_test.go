package integration

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bounds of the kill -9 part.
const (
	hl7Kills          = 5
	hl7KillMaxDelay   = 800 * time.Millisecond // the daemon is killed this long at most after the sender starts
	hl7MessagesBound  = 20000                  // messages one sender run sends at most
	hl7AfterLastStart = 20                     // messages acknowledged after the last restart
)

// TestClinicalMLLPAckAfterCommit sends every HL7 v2 sample of the shared corpus over
// MLLP and reads each ACK: AA with MSA-2 = MSH-10 for the accepted ones, AR for the two
// documented rejects; each acknowledged message must be an hl7 event. Then it kills the
// daemon with SIGKILL at random moments while a sender waits for each ACK, restarting it
// on the same data folder, and requires every acknowledged control id in the export and
// an intact chain.
func TestClinicalMLLPAckAfterCommit(t *testing.T) {
	t.Parallel()
	clinicalCorpus(t)
	d := startClinical(t, clinicalConfig{HL7: true})

	res := sendHL7Corpus(t, d.mllp)
	d.stop(t)
	evs := exportClinical(t, d.dataDir, false)
	checkHL7Events(t, evs, res.accepted)
	rej := rejectedReasons(evs, "hl7")
	if rej["bad_msh"] != 1 || rej["malformed"] != 1 || len(rej) != 2 {
		t.Errorf("audit.input_rejected of hl7: %v, want bad_msh 1 and malformed 1", rej)
	}
	mustVerifyData(t, d.dataDir)
	var messages int
	for _, n := range res.accepted {
		messages += n
	}
	t.Logf("corpus: %d blocks sent, %d AA (%d messages, %d hl7 events), %d AR %v",
		res.sent, res.aaBlocks, messages, len(eventsOfKind(evs, "hl7")), res.arBlocks, rej)

	// kill -9 while a sender waits for each ACK.
	seed := uint64(time.Now().UnixNano())
	t.Logf("kill -9 part: seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	d.restart(t)
	var acked []string
	next := 0
	for kill := 1; kill <= hl7Kills; kill++ {
		delay := time.Duration(rng.Int64N(int64(hl7KillMaxDelay)))
		done := make(chan senderResult, 1)
		go func(addr string, start int) { done <- sendNumbered(addr, start, hl7MessagesBound) }(d.mllp, next)
		time.Sleep(delay)
		if err := d.cmd.Process.Kill(); err != nil {
			t.Fatalf("SIGKILL: %v", err)
		}
		<-d.exited
		r := <-done
		acked = append(acked, r.acked...)
		t.Logf("kill %d after %v: %d messages acknowledged in this run (K%d..), sender ended with: %v",
			kill, delay, len(r.acked), next, r.err)
		next = r.next // the unacknowledged message is sent again
		d.restart(t)
	}
	r := sendNumbered(d.mllp, next, hl7AfterLastStart)
	if r.err != nil || len(r.acked) != hl7AfterLastStart {
		t.Fatalf("after the last restart: %d of %d acknowledged: %v\n%s", len(r.acked), hl7AfterLastStart, r.err, d.log())
	}
	acked = append(acked, r.acked...)
	d.stop(t)

	for _, f := range mustGlob(t, filepath.Join(d.dir, "edgeaudit-clinical-*.log")) {
		if strings.Contains(string(mustRead(t, f)), "WARNING: DATA RACE") {
			t.Errorf("%s reports a data race", f)
		}
	}
	evs = exportClinical(t, d.dataDir, false)
	stored := map[string]int{}
	for _, e := range eventsOfKind(evs, "hl7") {
		stored[e.CorrelationID]++
	}
	var lost, dup int
	for _, id := range acked {
		switch n := stored[id]; {
		case n == 0:
			if lost++; lost <= 10 {
				t.Errorf("acknowledged message %s is not in the export", id)
			}
		case n > 1:
			dup++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged messages lost", lost, len(acked))
	}
	if len(acked) == 0 {
		t.Error("no message was acknowledged in the kill -9 part")
	}
	v := mustVerifyData(t, d.dataDir)
	t.Logf("kill -9 part: %d kills, %d messages acknowledged, %d lost, %d stored more than once (resent after a kill); chain: %d batches, %d events",
		hl7Kills, len(acked), lost, dup, v.Batches, v.Events)
}

func mustGlob(t testing.TB, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// senderResult is what one sendNumbered run did.
type senderResult struct {
	acked []string // control ids answered with AA
	next  int      // the first number not acknowledged
	err   error    // why it stopped early
}

// numberedADT is an ADT^A01 with control id K<n>.
func numberedADT(n int) []byte {
	return fmt.Appendf(nil, "MSH|^~\\&|KILLTEST|IT|EDGEAUDIT|IT|20261127080000||ADT^A01^ADT_A01|K%d|P|2.5\r"+
		"EVN|A01|20261127080000\rPID|1||KMRN%d^^^IT||Kill^Test\r", n, n)
}

// sendNumbered sends ADT messages K<start>, K<start+1>, … over one MLLP connection, each
// after the ACK of the one before, until count are acknowledged or the connection fails
// (the daemon was killed). An AE is answered by sending the same message again.
func sendNumbered(addr string, start, count int) senderResult {
	res := senderResult{next: start}
	c, err := dialMLLP(addr)
	if err != nil {
		res.err = err
		return res
	}
	defer c.Close()
	for attempts := 0; len(res.acked) < count && attempts < 2*count; attempts++ {
		id := fmt.Sprintf("K%d", res.next)
		ack, err := c.exchange(numberedADT(res.next), 30*time.Second)
		if err != nil {
			res.err = err
			return res
		}
		code, ctrl, text, err := ackMSA(ack)
		if err != nil {
			res.err = err
			return res
		}
		if code == "AE" {
			continue
		}
		if code != "AA" || ctrl != id {
			res.err = fmt.Errorf("%s: ACK %s for %q (%s), want AA", id, code, ctrl, text)
			return res
		}
		res.acked = append(res.acked, id)
		res.next++
	}
	return res
}
