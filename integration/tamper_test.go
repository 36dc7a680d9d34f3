package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// TestTamperDetectedByVerify builds a chain of small batches with the real daemon, then
// tampers with it, once in an export file and once in a copy of the spool itself, and
// checks that `edgeaudit verify` exits 1 naming the first bad seq and the right reason,
// and 0 for the untouched chain.
func TestTamperDetectedByVerify(t *testing.T) {
	t.Parallel()
	const messages = 60
	d := startDaemon(t, daemonConfig{MaxEvents: 5})
	var msgs []string
	for _, m := range markers("tamper", messages) {
		msgs = append(msgs, m+" some audit text")
	}
	sendOctet(t, d.tcp, msgs)
	d.waitMetric(t, messages, "edgeaudit_syslog_received_total", "transport", "tcp")
	d.stop(t)
	mustVerifyData(t, d.dataDir)

	wire := filepath.Join(t.TempDir(), "chain.eab")
	if res := runCLI(t, "export", "-data", d.dataDir, "-out", wire); res.code != 0 {
		t.Fatalf("export failed\n%s", res)
	}
	batches := readWire(t, wire)
	k := pickBatch(t, batches)
	t.Logf("%d batches; tampering with seq %d", len(batches), k)

	t.Run("export", func(t *testing.T) {
		tests := []struct {
			name       string
			tamper     func(t *testing.T, bs []*ledger.Batch) []*ledger.Batch
			wantSeq    uint64 // 0: the chain must verify
			wantReason string
		}{
			{
				name:   "untampered",
				tamper: func(t *testing.T, bs []*ledger.Batch) []*ledger.Batch { return bs },
			},
			{
				name: "event-byte-flipped",
				tamper: func(t *testing.T, bs []*ledger.Batch) []*ledger.Batch {
					flipMessageByte(t, bs[k-1].Events)
					return bs
				},
				wantSeq: k, wantReason: ledger.ReasonRoot,
			},
			{
				name: "header-site-changed",
				tamper: func(t *testing.T, bs []*ledger.Batch) []*ledger.Batch {
					bs[k-1].Header = changeSite(t, bs[k-1].Header)
					return bs
				},
				wantSeq: k, wantReason: ledger.ReasonSignature,
			},
			{
				name: "batch-deleted",
				tamper: func(t *testing.T, bs []*ledger.Batch) []*ledger.Batch {
					return append(bs[:k-1:k-1], bs[k:]...)
				},
				wantSeq: k + 1, wantReason: ledger.ReasonGap,
			},
			{
				name: "batches-swapped",
				tamper: func(t *testing.T, bs []*ledger.Batch) []*ledger.Batch {
					bs[k-1], bs[k] = bs[k], bs[k-1]
					return bs
				},
				wantSeq: k + 1, wantReason: ledger.ReasonGap,
			},
			{
				name: "re-signed-with-another-key",
				tamper: func(t *testing.T, bs []*ledger.Batch) []*ledger.Batch {
					bs[k-1] = resign(t, bs[k-1])
					return bs
				},
				wantSeq: k, wantReason: ledger.ReasonKey,
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				file := filepath.Join(t.TempDir(), "tampered.eab")
				writeWire(t, file, tt.tamper(t, cloneBatches(batches)))
				checkVerify(t, tt.wantSeq, tt.wantReason, "-key", d.pubKey(), file)
			})
		}
	})

	t.Run("spool", func(t *testing.T) {
		tests := []struct {
			name       string
			tamper     func(tx *bolt.Tx) error
			wantSeq    uint64
			wantReason string
		}{
			{
				name:   "untampered",
				tamper: func(tx *bolt.Tx) error { return nil },
			},
			{
				name: "event-byte-flipped",
				tamper: func(tx *bolt.Tx) error {
					b := tx.Bucket([]byte("events"))
					key := eventKey(k, messageIndex(t, batches[k-1].Events))
					v := bytes.Clone(b.Get(key))
					if v == nil {
						return fmt.Errorf("no event %x", key)
					}
					if v[0] != '{' {
						// Stored encrypted (spool.encrypt, the default): the message is
						// not there to find; any ciphertext byte is the event's.
						v[len(v)/2] ^= 0x01
						return b.Put(key, v)
					}
					flipMessageByte(t, [][]byte{v})
					return b.Put(key, v)
				},
				wantSeq: k, wantReason: ledger.ReasonRoot,
			},
			{
				// An encrypted event replaced by its bytes in clear, one byte flipped: an
				// event in clear is read as such (a spool from before encryption), and
				// the root still catches the change.
				name: "event-in-clear-byte-flipped",
				tamper: func(tx *bolt.Tx) error {
					b := tx.Bucket([]byte("events"))
					i := messageIndex(t, batches[k-1].Events)
					v := bytes.Clone(batches[k-1].Events[i])
					flipMessageByte(t, [][]byte{v})
					return b.Put(eventKey(k, i), v)
				},
				wantSeq: k, wantReason: ledger.ReasonRoot,
			},
			{
				name: "header-site-changed",
				tamper: func(tx *bolt.Tx) error {
					// Stored batch: u16 signature length | signature | header bytes.
					b := tx.Bucket([]byte("batches"))
					v := bytes.Clone(b.Get(seqKey(k)))
					if len(v) < 2 {
						return fmt.Errorf("no batch %d", k)
					}
					n := 2 + int(binary.BigEndian.Uint16(v))
					v = append(v[:n:n], changeSite(t, v[n:])...)
					return b.Put(seqKey(k), v)
				},
				wantSeq: k, wantReason: ledger.ReasonSignature,
			},
			{
				name: "last-event-deleted",
				tamper: func(tx *bolt.Tx) error {
					b := tx.Bucket([]byte("events"))
					last := uint32(len(batches[k-1].Events) - 1)
					if b.Get(eventKey(k, last)) == nil {
						return fmt.Errorf("no event %d of batch %d", last, k)
					}
					return b.Delete(eventKey(k, last))
				},
				wantSeq: k, wantReason: ledger.ReasonCount,
			},
			{
				name: "batch-deleted",
				tamper: func(tx *bolt.Tx) error {
					return tx.Bucket([]byte("batches")).Delete(seqKey(k))
				},
				wantSeq: k, wantReason: ledger.ReasonGap,
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "data")
				copyDir(t, d.dataDir, dir)
				db, err := bolt.Open(filepath.Join(dir, "spool.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				if err := db.Update(tt.tamper); err != nil {
					db.Close()
					t.Fatalf("tamper: %v", err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				checkVerify(t, tt.wantSeq, tt.wantReason, "-data", dir)
			})
		}
	})
}

// checkVerify runs verify -json with args and checks the verdict: an intact chain when
// wantSeq is 0, else exit status 1 naming wantSeq and wantReason, in the JSON and in the
// message on stderr.
func checkVerify(t testing.TB, wantSeq uint64, wantReason string, args ...string) {
	t.Helper()
	v, res := verify(t, args...)
	if wantSeq == 0 {
		if res.code != 0 || !v.OK {
			t.Fatalf("untampered chain: ok=%v, want ok\n%s", v.OK, res)
		}
		return
	}
	if got, want := res.code, 1; got != want {
		t.Errorf("exit status %d, want %d\n%s", got, want, res)
	}
	if v.OK {
		t.Errorf("ok=true for a tampered chain")
	}
	if v.BadSeq != wantSeq || v.Reason != wantReason {
		t.Errorf("bad_seq=%d reason=%q, want bad_seq=%d reason=%q\n%s", v.BadSeq, v.Reason, wantSeq, wantReason, res)
	}
	if want := fmt.Sprintf("verify: seq %d: %s:", wantSeq, wantReason); !strings.Contains(res.stderr, want) {
		t.Errorf("stderr %q does not contain %q", res.stderr, want)
	}
}

// readWire decodes an export file and checks that it holds seqs 1..n in order.
func readWire(t testing.TB, file string) []*ledger.Batch {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := ledger.NewReader(f)
	var bs []*ledger.Batch
	for {
		b, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		h, err := ledger.ParseHeader(b.Header)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := h.Seq, uint64(len(bs)+1); got != want {
			t.Fatalf("export: batch %d has seq %d, want %d", len(bs), got, want)
		}
		bs = append(bs, b)
	}
	return bs
}

func writeWire(t testing.TB, file string, bs []*ledger.Batch) {
	t.Helper()
	var buf []byte
	for _, b := range bs {
		buf = b.AppendWire(buf)
	}
	if err := os.WriteFile(file, buf, 0o600); err != nil {
		t.Fatal(err)
	}
}

// pickBatch returns the seq of a batch to tamper with: not the first, followed by
// another one, and holding at least two syslog events.
func pickBatch(t testing.TB, bs []*ledger.Batch) uint64 {
	t.Helper()
	for i := 1; i+1 < len(bs); i++ {
		n := 0
		for _, e := range bs[i].Events {
			if bytes.Contains(e, []byte(`"kind":"syslog"`)) {
				n++
			}
		}
		if n >= 2 {
			return uint64(i + 1)
		}
	}
	t.Fatalf("no batch after seq 1 with two syslog events and a successor among %d batches", len(bs))
	return 0
}

func cloneBatches(bs []*ledger.Batch) []*ledger.Batch {
	out := make([]*ledger.Batch, len(bs))
	for i, b := range bs {
		c := &ledger.Batch{Header: bytes.Clone(b.Header), Signature: bytes.Clone(b.Signature)}
		for _, e := range b.Events {
			c.Events = append(c.Events, bytes.Clone(e))
		}
		out[i] = c
	}
	return out
}

// tamperMessage starts the message of each event this test sends.
const tamperMessage = `"message":"tamper-`

// messageIndex returns the index of the first event among evs that this test sent.
func messageIndex(t testing.TB, evs [][]byte) uint32 {
	t.Helper()
	for i, e := range evs {
		if bytes.Contains(e, []byte(tamperMessage)) {
			return uint32(i)
		}
	}
	t.Fatal("no tamper- message among the events")
	return 0
}

// flipMessageByte changes one byte of the first message this test sent among evs, in
// place: the first letter of "tamper" becomes upper case. The JSON stays valid and the
// count the same; only the Merkle root can tell.
func flipMessageByte(t testing.TB, evs [][]byte) {
	t.Helper()
	e := evs[messageIndex(t, evs)]
	i := bytes.Index(e, []byte(tamperMessage))
	e[i+len(`"message":"`)] = 'T'
}

// changeSite replaces the site in header bytes by another of the same length.
func changeSite(t testing.TB, header []byte) []byte {
	t.Helper()
	old := []byte(`"site":"` + testSite + `"`)
	site := []byte(testSite)
	site[len(site)-1] ^= 0x01
	out := bytes.Replace(header, old, []byte(`"site":"`+string(site)+`"`), 1)
	if bytes.Equal(out, header) {
		t.Fatalf("header has no %s: %s", old, header)
	}
	return out
}

// resign re-seals b's header with a fresh key: a well-formed batch with a valid
// signature, by a key that is not trusted.
func resign(t testing.TB, b *ledger.Batch) *ledger.Batch {
	t.Helper()
	h, err := ledger.ParseHeader(b.Header)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	if h.KeyID, err = ledger.KeyID(&key.PublicKey); err != nil {
		t.Fatal(err)
	}
	var root ledger.Hash
	if _, err := hex.Decode(root[:], []byte(h.Root)); err != nil {
		t.Fatal(err)
	}
	header, sig, err := h.Seal(root, h.Count, func(digest []byte) ([]byte, error) {
		return ecdsa.SignASN1(rand.Reader, key, digest)
	})
	if err != nil {
		t.Fatal(err)
	}
	return &ledger.Batch{Header: header, Signature: sig, Events: b.Events}
}

// seqKey and eventKey are the spool's bbolt keys: 8-byte big-endian seq, plus a 4-byte
// big-endian index for events.
func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func eventKey(seq uint64, i uint32) []byte {
	return binary.BigEndian.AppendUint32(seqKey(seq), i)
}

// copyDir copies the regular files of a stopped daemon's data folder.
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if de.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}
