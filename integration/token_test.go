package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTokenReveal drives `edgeaudit token reveal` on a stopped daemon (the CLI records
// the reveal in the spool itself) and on a running one (through the admin endpoint), and
// checks that each reveal is in the chain, naming the token but never the value.
func TestTokenReveal(t *testing.T) {
	dir := t.TempDir()
	d := &daemon{dir: dir, config: filepath.Join(dir, "edgeaudit.yaml"), dataDir: filepath.Join(dir, "data"),
		tcp: freeAddr(t, "tcp"), admin: freeAddr(t, "tcp")}
	mllp := freeAddr(t, "tcp")
	for _, a := range []string{d.tcp, d.admin, mllp} {
		mustLoopback(t, a)
	}
	q := strconv.Quote
	cfg := fmt.Sprintf("site: %s\ndevice: %s\ndata_dir: %s\nsyslog: {tcp: %s}\nhl7: {mllp: %s}\nadmin: %s\nprivacy: {vault: true}\nlog_level: debug\n",
		testSite, testDevice, q(d.dataDir), q(d.tcp), q(mllp), q(d.admin))
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(name string) {
		d.process = startProcess(t, name, dir, exec.Command(binPath, "run", "--config", d.config))
		if err := d.waitReady(t); err != nil {
			t.Fatalf("daemon did not start: %v\n%s", err, d.log())
		}
	}

	start("edgeaudit-1")
	const mrn = "PAT-4711"
	conn := dial(t, "tcp", mllp)
	msg := "MSH|^~\\&|RIS|SITE|PACS|SITE|20261127080000||ADT^A08|TOK0001|P|2.5\rEVN|A08|20261127080000\rPID|1||" + mrn + "^^^HOSP^MR||ROE^RICHARD||19550101|M\r"
	fmt.Fprintf(conn, "\x0b%s\x1c\r", msg)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	conn.Close()
	if err != nil || !strings.Contains(string(buf[:n]), "MSA|AA|TOK0001") {
		t.Fatalf("ACK %q (%v), want MSA|AA|TOK0001", buf[:n], err)
	}
	d.stop(t)

	token := ""
	for _, e := range exportEvents(t, d.dataDir, true) {
		if e.Source.Kind == "hl7" {
			token = patientOf(t, d.dataDir, e.ID)
		}
	}
	if !strings.HasPrefix(token, "pat_") {
		t.Fatalf("no patient token in the HL7 event (got %q)", token)
	}

	// Without a reason nothing is revealed.
	if res := runCLI(t, "token", "reveal", "-config", d.config, token); res.code != 2 || strings.Contains(res.stdout, mrn) {
		t.Fatalf("reveal without -reason: %s, want exit 2 and no value", res)
	}
	// Daemon stopped: offline path.
	res := runCLI(t, "token", "reveal", "-config", d.config, "-reason", "offline check", token)
	if res.code != 0 || !strings.Contains(res.stdout, mrn) {
		t.Fatalf("offline reveal: %s, want the identifier", res)
	}
	// Daemon running: online path through the admin endpoint.
	start("edgeaudit-2")
	res = runCLI(t, "token", "reveal", "-config", d.config, "-reason", "online check", token)
	if res.code != 0 || !strings.Contains(res.stdout, mrn) {
		t.Fatalf("online reveal: %s, want the identifier", res)
	}
	// An unknown token is refused, and that attempt is recorded too.
	res = runCLI(t, "token", "reveal", "-config", d.config, "-reason", "probe", "pat_00000000000000000000000000000000")
	if res.code == 0 {
		t.Fatalf("unknown token: %s, want failure", res)
	}
	d.stop(t)

	var reasons []string
	for _, e := range exportEvents(t, d.dataDir, true) {
		if e.Action == "audit.token_reveal" {
			reasons = append(reasons, e.Reason+"/"+e.Outcome)
			if e.Detail["token"] == "" {
				t.Errorf("reveal event without the token: %+v", e)
			}
		}
	}
	if got, want := strings.Join(reasons, ","), "offline check/success,online check/success,probe/minor_failure"; got != want {
		t.Fatalf("reveal events %s, want %s", got, want)
	}
	// The identifier itself is nowhere in the chain or the spool file.
	raw, err := os.ReadFile(filepath.Join(d.dataDir, "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), mrn) || strings.Contains(string(raw), "ROE^RICHARD") {
		t.Fatal("spool.db holds the identifier or the name in clear")
	}
	mustVerifyData(t, d.dataDir)
}

// patientOf returns the `patient` field of the exported event with id.
func patientOf(t testing.TB, dataDir, id string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "e.jsonl")
	if res := runCLI(t, "export", "-data", dataDir, "-out", out, "-events", "-open"); res.code != 0 {
		t.Fatalf("export: %s", res)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"id":"`+id+`"`) {
			if i := strings.Index(line, `"patient":"`); i >= 0 {
				rest := line[i+len(`"patient":"`):]
				return rest[:strings.IndexByte(rest, '"')]
			}
		}
	}
	return ""
}
