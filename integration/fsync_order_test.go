package integration

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestAckAfterFdatasync proves the acknowledgement ordering itself rather than its
// outcome (kill -9 keeps the page cache, so no kill -9 test can see a missing fsync):
// the real daemon runs under strace, and for every HL7 ACK and FHIR 201 the trace must
// show, between reading the message and writing its acknowledgement, a completed
// fdatasync of spool.db or of its journal, spool.db.journal (where AppendUrgent's events
// are durable first: spool/journal.go). The same check run on a binary whose spool skips fsync
// (build tag edgeaudit_unsafe_nosync) must fail: that is the test's negative control.
func TestAckAfterFdatasync(t *testing.T) {
	straceBin := peer(t, "strace", "STRACE")
	nosync := buildNoSyncBinary(t)
	const n = 15
	tests := []struct {
		name   string
		bin    string
		wantOK bool
	}{
		{"real binary", binPath, true},
		{"no-sync control", nosync, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, trace := startTraced(t, straceBin, tt.bin)
			var markers []string
			c, err := dialMLLP(d.mllp)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				ctrl := fmt.Sprintf("FSYNC%04d", i)
				ack, err := c.exchange(hl7Block(ctrl), 30*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if code, _, _, _ := ackMSA(ack); code != "AA" {
					t.Fatalf("ACK %s: %q, want AA", ctrl, code)
				}
				markers = append(markers, "|"+ctrl+"|")
			}
			c.Close()
			for i := range n {
				marker := fmt.Sprintf("fsync-fhir-%04d", i)
				postMarkedAuditEvent(t, "http://"+d.fhir+"/AuditEvent", marker)
				markers = append(markers, marker)
			}
			stopTracedProcess(t, d.process)
			covered, why := checkAckOrdering(t, trace, markers, traceAck)
			if tt.wantOK && covered != len(markers) {
				keep := filepath.Join(os.TempDir(), "edgeaudit-strace-"+strings.ReplaceAll(tt.name, " ", "-")+".txt")
				if b, err := os.ReadFile(trace); err == nil && os.WriteFile(keep, b, 0o600) == nil {
					t.Logf("trace kept at %s", keep)
				}
				t.Fatalf("%d of %d acknowledgements follow an fdatasync of spool.db that covers them; first problem: %s", covered, len(markers), why)
			}
			if !tt.wantOK && covered != 0 {
				t.Fatalf("the check passed %d acknowledgements of a binary that never syncs its spool: it proves nothing", covered)
			}
			t.Logf("%s: %d of %d acknowledgements covered by an fdatasync", tt.name, covered, len(markers))
		})
	}
}

// startTraced starts bin under strace with MLLP and FHIR listeners.
func startTraced(t *testing.T, straceBin, bin string) (*clinicalDaemon, string) {
	t.Helper()
	dir := t.TempDir()
	d := &clinicalDaemon{cfg: clinicalConfig{HL7: true, FHIR: true}, daemon: &daemon{
		dir: dir, config: filepath.Join(dir, "edgeaudit.yaml"), dataDir: filepath.Join(dir, "data"),
		tcp: freeAddr(t, "tcp"), admin: freeAddr(t, "tcp"),
	}}
	d.mllp, d.fhir = freeAddr(t, "tcp"), freeAddr(t, "tcp")
	d.listening = 3
	if err := os.WriteFile(d.config, []byte(d.yaml()), 0o600); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(dir, "strace.txt")
	cmd := straceCommand(straceBin, trace, bin, "run", "--config", d.config)
	d.process = startProcess(t, "edgeaudit-strace", dir, cmd)
	deadline := time.Now().Add(2 * startTimeout)
	for {
		if d.done() {
			t.Fatalf("traced daemon exited: %v\n%s", d.waitErr, d.log())
		}
		if strings.Count(d.log(), "msg=listening ") >= d.listening {
			if _, err := d.healthz(t.Context()); err == nil {
				return d, trace
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("traced daemon not ready\n%s", d.log())
		}
		time.Sleep(pollInterval)
	}
}

func postMarkedAuditEvent(t *testing.T, url, marker string) {
	t.Helper()
	body := `{"resourceType":"AuditEvent","type":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110110"},` +
		`"recorded":"2026-12-01T12:00:00Z","outcome":"0","agent":[{"requestor":true,"who":{"display":"` + marker + `"}}],` +
		`"source":{"observer":{"display":"pacs"}}}`
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST %s: %s, want 201", marker, resp.Status)
	}
}

var (
	// pid syscall(fd<path>, "data"... ) or <... syscall resumed> ...
	traceCall    = regexp.MustCompile(`^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)`)
	traceSpoolFd = regexp.MustCompile(`^\d+\s+(?:fdatasync\(\d+<[^>]*/spool\.db(?:\.journal)?>\)\s+= 0|<\.\.\. fdatasync resumed>\)\s+= 0)`)
	// HL7 ACK and FHIR 201; RELP's is traceRELPAck.
	traceAck     = regexp.MustCompile(`(MSA\|AA\||HTTP/1\.1 201 )`)
	traceRELPAck = regexp.MustCompile(`\d+ rsp 6 200 OK\\n`)
)

// checkAckOrdering walks the trace. For each marker (in the order sent) it finds the
// read that brought the message in, then the first acknowledgement written after it,
// and requires a completed fdatasync of spool.db in between. It returns how many
// acknowledgements were covered and why the first uncovered one was not.
func checkAckOrdering(t testing.TB, trace string, markers []string, ackRE *regexp.Regexp) (covered int, why string) {
	t.Helper()
	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	// fdatasyncs of the spool: their completion lines.
	unfinished := map[string]bool{} // pid → an fdatasync of spool.db is in flight
	synced := make([]bool, len(lines))
	for i, l := range lines {
		pid, _, _ := strings.Cut(l, " ")
		switch {
		case strings.Contains(l, "fdatasync(") && (strings.Contains(l, "spool.db>") || strings.Contains(l, "spool.db.journal>")) && strings.Contains(l, "<unfinished ..."):
			unfinished[pid] = true
		case strings.Contains(l, "<... fdatasync resumed>") && unfinished[pid]:
			delete(unfinished, pid)
			synced[i] = strings.Contains(l, "= 0")
		case traceSpoolFd.MatchString(l):
			synced[i] = true
		}
	}
	pos := 0
	for _, m := range markers {
		read := -1
		for i := pos; i < len(lines); i++ {
			if c := traceCall.FindStringSubmatch(lines[i]); c != nil && (c[1] == "read" || c[1] == "recvfrom") && strings.Contains(lines[i], m) {
				read = i
				break
			}
		}
		if read < 0 {
			return covered, fmt.Sprintf("no read of %s in the trace", m)
		}
		ack := -1
		for i := read + 1; i < len(lines); i++ {
			if c := traceCall.FindStringSubmatch(lines[i]); c != nil && (c[1] == "write" || c[1] == "writev" || c[1] == "sendto" || c[1] == "sendmsg") &&
				strings.Contains(lines[i], "socket:[") && ackRE.MatchString(lines[i]) {
				ack = i
				break
			}
		}
		if ack < 0 {
			return covered, fmt.Sprintf("no acknowledgement of %s in the trace", m)
		}
		ok := false
		for i := read + 1; i < ack; i++ {
			if synced[i] {
				ok = true
				break
			}
		}
		if ok {
			covered++
		} else if why == "" {
			why = fmt.Sprintf("%s: read at trace line %d, acknowledged at line %d, no fdatasync of spool.db completed in between", m, read+1, ack+1)
		}
		pos = ack + 1
	}
	if why == "" && covered < len(markers) {
		why = "?"
	}
	return covered, why
}

// buildNoSyncBinary builds the daemon with the edgeaudit_unsafe_nosync tag (bbolt
// NoSync), the negative control of the fsync-ordering tests.
func buildNoSyncBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "edgeaudit-nosync")
	build := exec.CommandContext(t.Context(), "go", "build", "-tags", "edgeaudit_unsafe_nosync", "-o", bin, "github.com/edgeaudit/edgeaudit/cmd/edgeaudit")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the no-sync control binary: %v\n%s", err, out)
	}
	return bin
}

// straceCommand runs bin with args under strace, writing the syscalls the ordering
// check reads (socket reads and writes, spool writes and syncs, with fd paths) to trace.
func straceCommand(straceBin, trace, bin string, args ...string) *exec.Cmd {
	return exec.Command(straceBin, append([]string{"-f", "-qq", "-y", "-s", "1024", "-o", trace,
		"-e", "trace=read,write,writev,sendto,sendmsg,recvfrom,pwrite64,fdatasync,fsync", bin}, args...)...)
}
