package spool

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/ledger"
)

var (
	testDataKey  = bytes.Repeat([]byte{7}, 32)
	otherDataKey = bytes.Repeat([]byte{8}, 32)
)

func openWith(t testing.TB, path string, cfg Config, opts Options) *Spool {
	t.Helper()
	cfg.MinFreeBytes = 1
	opts.Site, opts.Device = "s1", "d1"
	s, err := Open(path, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func encOpts(sig Signer) Options {
	return Options{Signer: sig, DataKey: testDataKey, Encrypt: true}
}

// secretEv is an event whose message is a marker that must not be on disk in clear.
func secretEv(i int) *audit.Event {
	e := ev(i)
	e.Message = fmt.Sprintf("SECRET-MARKER-%04d Jane Doe MRN 12345678", i)
	return e
}

func eventKey(seq uint64, idx uint32) []byte {
	k := make([]byte, 12)
	copy(k, seqKey(seq))
	k[8], k[9], k[10], k[11] = byte(idx>>24), byte(idx>>16), byte(idx>>8), byte(idx)
	return k
}

// storedFormats returns the first byte of every stored event, in key order.
func storedFormats(t testing.TB, path string) []byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []byte
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).ForEach(func(_, v []byte) error { out = append(out, v[0]); return nil })
	})
	return out
}

// The events of an encrypted spool are nowhere in its file in clear, and read back, after
// a reopen that recovers the open batch too, as the same bytes the chain's roots and
// signatures cover. The same run with encryption off finds them (the scan works).
func TestEncryptedRoundTrip(t *testing.T) {
	tests := []struct {
		name      string
		encrypt   bool
		wantClear bool
	}{
		{"encrypted", true, false},
		{"clear", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sig := newSigner(t)
			path := filepath.Join(t.TempDir(), "spool.db")
			opts := Options{Signer: sig, DataKey: testDataKey, Encrypt: tt.encrypt}
			cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
			s := openWith(t, path, cfg, opts)
			for i := range 12 { // two sealed batches and two events in the open one
				appendSync(t, s, secretEv(i))
			}
			s.Close()

			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := bytes.Contains(raw, []byte("SECRET-MARKER-")); got != tt.wantClear {
				t.Fatalf("marker in the file in clear=%v, want %v", got, tt.wantClear)
			}
			if got := bytes.Contains(raw, []byte("12345678")); got != tt.wantClear {
				t.Fatalf("identifier in the file in clear=%v, want %v", got, tt.wantClear)
			}
			want := byte(eventClear)
			if tt.encrypt {
				want = eventFormatV2
			}
			for i, f := range storedFormats(t, path) {
				if f != want {
					t.Fatalf("stored event %d format 0x%02x, want 0x%02x", i, f, want)
				}
			}

			s = openWith(t, path, cfg, opts)
			if inc := s.Incidents(); len(inc) != 0 {
				t.Fatalf("reopen found %+v", inc)
			}
			if err := s.Seal(t.Context()); err != nil { // the recovered open batch
				t.Fatal(err)
			}
			events := verifyAll(t, s)
			s.Close()
			if got, want := len(events), 12; got != want {
				t.Fatalf("events=%d, want %d", got, want)
			}
			for i, e := range events {
				if got, want := e.Message, secretEv(i).Message; got != want {
					t.Fatalf("event %d message=%q, want %q", i, got, want)
				}
			}

			r, err := OpenReaderWithKey(path, testDataKey)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if got := len(verifyWith(t, r, sig)); got != 12 {
				t.Fatalf("reader events=%d, want 12", got)
			}
			// The wire format central gets carries the events in clear: central has no
			// data key.
			var wire []byte
			r.Batches(1, func(b *ledger.Batch) error { wire = b.AppendWire(wire); return nil })
			if !bytes.Contains(wire, []byte("SECRET-MARKER-0011")) {
				t.Fatal("wire format does not carry the events in clear")
			}
		})
	}
}

// A spool written in clear opens with encryption on: old events are read as clear (their
// format says so), new ones are stored encrypted, and the one chain verifies. Without the
// key such a spool's encrypted events are refused by name, its position still readable.
func TestClearSpoolStillReads(t *testing.T) {
	sig := newSigner(t)
	path := filepath.Join(t.TempDir(), "spool.db")
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
	s := openWith(t, path, cfg, Options{Signer: sig})
	for i := range 7 {
		appendSync(t, s, secretEv(i))
	}
	s.Close()

	s = openWith(t, path, cfg, encOpts(sig))
	for i := 7; i < 15; i++ {
		appendSync(t, s, secretEv(i))
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	events := verifyAll(t, s)
	s.Close()
	if got, want := len(events), 15; got != want {
		t.Fatalf("events=%d, want %d", got, want)
	}
	formats := storedFormats(t, path)
	var clear, enc int
	for _, f := range formats {
		switch f {
		case eventClear:
			clear++
		case eventFormatV2:
			enc++
		}
	}
	// 7 clear ones, then 8 more encrypted and the reopen's nothing (no incident).
	if clear != 7 || enc != 8 {
		t.Fatalf("stored %d clear and %d encrypted, want 7 and 8", clear, enc)
	}

	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Encrypted() {
		t.Fatal("Encrypted()=false for a spool with encrypted events")
	}
	if p, err := r.Position(); err != nil || p.HeadSeq == 0 {
		t.Fatalf("position without the key=%+v, %v; want the head", p, err)
	}
	if err := r.Batches(1, func(*ledger.Batch) error { return nil }); !errors.Is(err, ErrKeyRequired) {
		t.Fatalf("batches without the key err=%v, want ErrKeyRequired", err)
	}
}

// A wrong or missing data key is refused at Open by name, as a key problem, with the
// file byte for byte as it was and nothing quarantined: it is not damage. Only keys
// recover, which made a new data key, quarantines it.
func TestWrongKeyRefused(t *testing.T) {
	sig := newSigner(t)
	src := filepath.Join(t.TempDir(), "spool.db")
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
	s := openWith(t, src, cfg, encOpts(sig))
	for i := range 12 {
		appendSync(t, s, secretEv(i))
	}
	s.Close()
	orig, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		opts Options
		want error
	}{
		{"other key", Options{Signer: sig, DataKey: otherDataKey, Encrypt: true}, ErrWrongKey},
		{"other key, encrypt off", Options{Signer: sig, DataKey: otherDataKey}, ErrWrongKey},
		{"no key", Options{Signer: sig}, ErrKeyRequired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			if err := os.WriteFile(path, orig, 0o600); err != nil {
				t.Fatal(err)
			}
			tt.opts.Site, tt.opts.Device = "s1", "d1"
			c := cfg
			c.MinFreeBytes = 1
			s, err := Open(path, c, tt.opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			var oe *OpenError
			if !errors.Is(err, tt.want) || !errors.As(err, &oe) {
				t.Fatalf("err=%v, want an *OpenError with %v", err, tt.want)
			}
			got, _ := os.ReadFile(path)
			if !bytes.Equal(got, orig) {
				t.Fatal("the spool file changed")
			}
			if m, _ := filepath.Glob(path + ".quarantine-*"); len(m) != 0 {
				t.Fatalf("quarantined %v", m)
			}
		})
	}
	t.Run("reader", func(t *testing.T) {
		if _, err := OpenReaderWithKey(src, otherDataKey); !errors.Is(err, ErrWrongKey) {
			t.Fatalf("err=%v, want ErrWrongKey", err)
		}
	})
	t.Run("key replaced", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "spool.db")
		os.WriteFile(path, orig, 0o600)
		s := openWith(t, path, cfg, Options{Signer: sig, DataKey: otherDataKey, Encrypt: true, KeyReplaced: true})
		if err := s.Seal(t.Context()); err != nil {
			t.Fatal(err)
		}
		events := verifyAll(t, s)
		s.Close()
		m, _ := filepath.Glob(path + ".quarantine-*")
		if len(m) != 1 || !hasAction(events, ActionQuarantined) {
			t.Fatalf("quarantined %v, events %+v; want the old spool moved aside and named", m, events)
		}
		if q, _ := os.ReadFile(m[0]); !bytes.Equal(q, orig) {
			t.Fatal("the quarantined file is not the old spool")
		}
	})
}

func flipLastByte(t *testing.T, path string, k []byte) {
	t.Helper()
	editDB(t, path, func(tx *bolt.Tx) error {
		v := bytes.Clone(tx.Bucket(bucketEvents).Get(k))
		v[len(v)-1] ^= 1
		return tx.Bucket(bucketEvents).Put(k, v)
	})
}

// A ciphertext altered under the right key is damage: the scrub reports an old batch, Open
// quarantines what its tail check or the open batch covers.
func TestTamperedCiphertext(t *testing.T) {
	sig := newSigner(t)
	src := filepath.Join(t.TempDir(), "spool.db")
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
	s := openWith(t, src, cfg, encOpts(sig))
	for i := range 102 { // 20 sealed batches and two open events
		appendSync(t, s, secretEv(i))
	}
	s.Close()
	orig, _ := os.ReadFile(src)
	copyTo := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "spool.db")
		if err := os.WriteFile(p, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("old batch, scrub", func(t *testing.T) {
		p := copyTo(t)
		flipLastByte(t, p, eventKey(2, 3))
		s := openWith(t, p, cfg, encOpts(sig))
		defer s.Close()
		if inc := s.Incidents(); len(inc) != 0 {
			t.Fatalf("Open found %+v; the damage is older than its tail check", inc)
		}
		res, err := s.Scrub(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Damaged) != 1 || res.Damaged[0] != 2 {
			t.Fatalf("scrub damaged=%v, want [2]", res.Damaged)
		}
	})
	for _, k := range []struct {
		name string
		key  []byte
	}{{"tail batch", eventKey(20, 0)}, {"open batch", eventKey(21, 1)}} {
		t.Run(k.name+", open", func(t *testing.T) {
			p := copyTo(t)
			flipLastByte(t, p, k.key)
			s := openWith(t, p, cfg, encOpts(sig))
			s.Close()
			if !hasIncident(s.Incidents(), ActionQuarantined) {
				t.Fatalf("incidents %+v, want a quarantine", s.Incidents())
			}
		})
	}
}

// The additional data binds each encrypted event to its chain, seq and index: a valid
// ciphertext moved to another place, or into another spool under the same key, is refused.
func TestMovedEventRefused(t *testing.T) {
	sig := newSigner(t)
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
	build := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "spool.db")
		s := openWith(t, p, cfg, encOpts(sig))
		for i := range 10 {
			appendSync(t, s, secretEv(i))
		}
		s.Close()
		return p
	}
	get := func(t *testing.T, path string, k []byte) []byte {
		var v []byte
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		db.View(func(tx *bolt.Tx) error { v = bytes.Clone(tx.Bucket(bucketEvents).Get(k)); return nil })
		db.Close()
		return v
	}
	put := func(t *testing.T, path string, k, v []byte) {
		editDB(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketEvents).Put(k, v) })
	}
	tests := []struct {
		name string
		move func(t *testing.T, path string)
	}{
		{"other index", func(t *testing.T, p string) { put(t, p, eventKey(1, 1), get(t, p, eventKey(1, 0))) }},
		{"other seq", func(t *testing.T, p string) { put(t, p, eventKey(2, 0), get(t, p, eventKey(1, 0))) }},
		{"other spool", func(t *testing.T, p string) { put(t, p, eventKey(1, 0), get(t, build(t), eventKey(1, 0))) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := build(t)
			tt.move(t, p)
			r, err := OpenReaderWithKey(p, testDataKey)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			err = r.Batches(1, func(*ledger.Batch) error { return nil })
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("err=%v, want ErrDamaged", err)
			}
		})
	}
}

// A spool written before per-batch keys (format 0x01: one key for every event) still
// reads and verifies; new events go in under their batch's key.
func TestFormatV1StillReads(t *testing.T) {
	sig := newSigner(t)
	path := filepath.Join(t.TempDir(), "spool.db")
	cfg := Config{MaxEvents: 5, MaxAge: time.Hour}
	s := openWith(t, path, cfg, encOpts(sig))
	for i := range 10 {
		appendSync(t, s, secretEv(i))
	}
	chain := s.st.chain
	s.Close()

	// Rewrite every stored event as the old format did.
	c, err := newEventCipher(testDataKey)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		type kv struct{ k, v []byte }
		var old []kv
		if err := b.ForEach(func(k, v []byte) error {
			plain, err := openEvent(c, chain, k, v)
			if err != nil {
				return err
			}
			var out []byte
			if c.randomNonce { // FIPS mode: the module draws the nonce
				out = c.v1.Seal([]byte{eventFormatV1}, nil, plain, eventAAD(nil, chain, k))
			} else {
				nonce := make([]byte, nonceSize)
				rand.Read(nonce)
				out = c.v1.Seal(append([]byte{eventFormatV1}, nonce...), nonce, plain, eventAAD(nil, chain, k))
			}
			old = append(old, kv{append([]byte(nil), k...), out})
			return nil
		}); err != nil {
			return err
		}
		for _, e := range old {
			if err := b.Put(e.k, e.v); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range storedFormats(t, path) {
		if f != eventFormatV1 {
			t.Fatalf("rewritten format 0x%02x, want 0x01", f)
		}
	}

	s = openWith(t, path, cfg, encOpts(sig))
	if inc := s.Incidents(); len(inc) != 0 {
		t.Fatalf("reopen of a v1 spool found %+v", inc)
	}
	for i := 10; i < 15; i++ {
		appendSync(t, s, secretEv(i))
	}
	if err := s.Seal(t.Context()); err != nil {
		t.Fatal(err)
	}
	events := verifyAll(t, s)
	s.Close()
	if got, want := len(events), 15; got != want {
		t.Fatalf("events=%d, want %d", got, want)
	}
	var v1, v2 int
	for _, f := range storedFormats(t, path) {
		switch f {
		case eventFormatV1:
			v1++
		case eventFormatV2:
			v2++
		}
	}
	if v1 != 10 || v2 != 5 {
		t.Fatalf("stored %d v1 and %d v2 events, want 10 and 5", v1, v2)
	}
}

// Each batch has its own key: the same plaintext, nonce and additional data seal to
// different bytes in two batches, and an event's bytes do not open as another batch's.
func TestBatchKeysDiffer(t *testing.T) {
	c, err := newEventCipher(testDataKey)
	if err != nil {
		t.Fatal(err)
	}
	const chain = "0123456789abcdef0123456789abcdef"
	a1, err := c.batch(chain, 1)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := c.batch(chain, 2)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, nonceSize)
	aad := eventAAD(nil, chain, eventKey(1, 0))
	s1 := c.seal(nil, a1, aad, nonce, []byte(`{"m":1}`))
	s2 := c.seal(nil, a2, aad, nonce, []byte(`{"m":1}`))
	if bytes.Equal(s1, s2) {
		t.Fatal("two batches sealed the same event to the same bytes: one key for both")
	}
	if _, err := c.open(a2, s1[1:], aad); err == nil {
		t.Fatal("batch 1's event opened with batch 2's key")
	}
	if got, err := c.open(a1, s1[1:], aad); err != nil || string(got) != `{"m":1}` {
		t.Fatalf("open=%q, %v", got, err)
	}
}
