package hl7

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*/expected.json")

// goldenResult is what a golden case records: the ACK the sender got, the events the
// sink committed (without their random ids) and the rejects reported.
type goldenResult struct {
	ACKs    []string         `json:"acks"` // MSA-1 and MSA-3 of each ACK received
	Events  []map[string]any `json:"events"`
	Rejects []rejectRecord   `json:"rejects"`
}

// TestGolden sends each testdata/<case>/input.hl7 over a real socket (framed in MLLP
// unless it already holds an end block, as the .bin corpus samples do), half-closes,
// reads every ACK until the server closes, and compares what happened with
// expected.json. Run with -update to rewrite the expected files.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join("testdata", "*", "input.hl7"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no golden cases in testdata")
	}
	for _, in := range dirs {
		dir := filepath.Dir(in)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			raw, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			got := runGolden(t, raw)
			// No patient identifier, name, birth date, address or query value of the
			// input reaches any field of any event (corpus_test.go phiValues).
			for i, ev := range got.Events {
				enc, err := json.Marshal(ev)
				if err != nil {
					t.Fatal(err)
				}
				for _, v := range phiValues(raw) {
					if bytes.Contains(enc, []byte(v)) {
						t.Errorf("event %d holds the input's PHI value %q", i, v)
					}
				}
			}
			enc, err := json.MarshalIndent(got, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			enc = append(enc, '\n')
			want := filepath.Join(dir, "expected.json")
			if *update {
				if err := os.WriteFile(want, enc, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(exp, enc) {
				t.Fatalf("result differs from %s (run with -update after checking):\n%s", want, enc)
			}
		})
	}
}

func runGolden(t *testing.T, raw []byte) goldenResult {
	t.Helper()
	sink := &fakeSink{}
	rep := &fakeReporter{}
	c := startCollector(t, Config{}, sink, rep)
	cl := dialMLLP(t, c.Addr())
	if !bytes.ContainsRune(raw, endBlock) {
		raw = append(append([]byte{startBlock}, raw...), endBlock, carriage)
	}
	if _, err := cl.conn.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := cl.conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	res := goldenResult{ACKs: []string{}, Rejects: []rejectRecord{}}
	for {
		_ = cl.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := cl.fr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read ack: %v", err)
		}
		ack, err := Parse(b)
		if err != nil {
			t.Fatalf("parse ack: %v", err)
		}
		res.ACKs = append(res.ACKs, ackCode(ack)+" "+ack.Component(ack.Field("MSA", 3), 1))
	}
	for _, b := range sink.raw() {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("event JSON %s: %v", b, err)
		}
		delete(m, "id")
		res.Events = append(res.Events, m)
	}
	res.Rejects = append(res.Rejects, rep.getRejects()...)
	return res
}
