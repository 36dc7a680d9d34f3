package receiver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// step is one batch handed to the receiver and what must come back.
type step struct {
	site, device string // topic levels; empty: the appliance's own
	payload      []byte
	wantSeq      uint64 // seq the receipt names; 0: no receipt
	wantErr      error  // a refusal sentinel; nil: accepted
}

func TestHandle(t *testing.T) {
	a := newAppliance(t, "s1", "d1")
	main := a.extend(t, nil, 5, "a")
	clone := a.extend(t, main[:2], 3, "clone") // seq 3.. of a copied data folder
	other := *a
	other.chain = strings.Repeat("cd", 16)
	newChain := other.extend(t, nil, 2, "new")
	stranger := newAppliance(t, "s1", "d9")
	strangerBatches := stranger.extend(t, nil, 1, "x")
	wrongKey := *a
	wrongKey.key = genKey(t)
	byWrongKey := wrongKey.extend(t, main[:1], 1, "a")

	tamperedEvent := func() []byte {
		b := *main[1]
		b.Events = slices.Clone(b.Events)
		b.Events[1] = bytes.Replace(b.Events[1], []byte("phi.view"), []byte("phi.edit"), 1)
		return wire(&b)
	}()
	droppedEvent := func() []byte {
		b := *main[1]
		b.Events = b.Events[1:]
		return wire(&b)
	}()
	tamperedHeader := func() []byte {
		b := *main[1]
		b.Header = bytes.Replace(b.Header, []byte(`"count":3`), []byte(`"count":2`), 1)
		b.Events = b.Events[1:]
		return wire(&b)
	}()
	flippedSig := func() []byte {
		b := *main[1]
		b.Signature = slices.Clone(b.Signature)
		b.Signature[8] ^= 1
		return wire(&b)
	}()
	w := func(i int) []byte { return wire(main[i-1]) }
	ok := func(i int, want uint64) step { return step{payload: w(i), wantSeq: want} }

	tests := []struct {
		name       string
		steps      []step
		wantHead   uint64
		wantQuar   int
		wantStored int // batches stored (each once)
	}{
		{"in order", []step{ok(1, 1), ok(2, 2), ok(3, 3)}, 3, 0, 3},
		{"duplicate re-receipted", []step{ok(1, 1), ok(2, 2), ok(2, 2)}, 2, 0, 2},
		{"replayed old batch", []step{ok(1, 1), ok(2, 2), ok(3, 3), ok(1, 3)}, 3, 0, 3},
		{"gap held then filled", []step{ok(1, 1), ok(3, 1), ok(4, 1), ok(2, 4)}, 4, 0, 4},
		{"gap before the first batch", []step{ok(2, 0), ok(1, 2)}, 2, 0, 2},
		{"held twice", []step{ok(1, 1), ok(3, 1), ok(3, 1), ok(2, 3)}, 3, 0, 3},
		{"tampered event", []step{ok(1, 1), {payload: tamperedEvent, wantErr: receiver.ErrTampered}, ok(2, 2)}, 2, 1, 2},
		{"event dropped", []step{ok(1, 1), {payload: droppedEvent, wantErr: receiver.ErrTampered}}, 1, 1, 1},
		{"header edited", []step{ok(1, 1), {payload: tamperedHeader, wantErr: receiver.ErrBadSignature}}, 1, 1, 1},
		{"signature flipped", []step{ok(1, 1), {payload: flippedSig, wantErr: receiver.ErrBadSignature}}, 1, 1, 1},
		{"signed by a key not enrolled", []step{ok(1, 1), {payload: wire(byWrongKey[1]), wantErr: receiver.ErrBadSignature}}, 1, 1, 1},
		{"tampered duplicate", []step{ok(1, 1), ok(2, 2), {payload: tamperedEvent, wantErr: receiver.ErrTampered}}, 2, 1, 2},
		{"unknown device", []step{{site: "s1", device: "d9", payload: wire(strangerBatches[0]), wantErr: receiver.ErrUnknownDevice}}, 0, 1, 0},
		{"topic names another device", []step{{site: "s1", device: "d2", payload: w(1), wantErr: receiver.ErrMalformed}}, 0, 1, 0},
		{"garbage", []step{{payload: []byte("EAB1 not a batch"), wantErr: receiver.ErrMalformed}}, 0, 1, 0},
		{"two batches in one message", []step{{payload: append(w(1), w(2)...), wantErr: receiver.ErrMalformed}}, 0, 1, 0},
		{"fork at the head", []step{ok(1, 1), ok(2, 2), ok(3, 3), {payload: wire(clone[2]), wantErr: receiver.ErrFork}}, 3, 1, 3},
		{"fork below the head", []step{ok(1, 1), ok(2, 2), ok(3, 3), ok(4, 4), {payload: wire(clone[2]), wantErr: receiver.ErrFork}}, 4, 1, 4},
		{"fork continues", []step{ok(1, 1), ok(2, 2), ok(3, 3), {payload: wire(clone[3]), wantErr: receiver.ErrFork}}, 3, 1, 3},
		{"fork held", []step{ok(1, 1), ok(4, 1), {payload: wire(clone[3]), wantErr: receiver.ErrFork}, ok(2, 2), ok(3, 4)}, 4, 1, 4},
		{"held batch of a fork", []step{ok(1, 1), ok(2, 2), {payload: wire(clone[3]), wantSeq: 2}, ok(3, 3)}, 3, 1, 3},
		{"another chain", []step{ok(1, 1), {payload: wire(newChain[0]), wantErr: receiver.ErrOtherChain}}, 1, 1, 1},
		{"another chain on an empty store", []step{{payload: wire(newChain[0]), wantSeq: 1}}, 1, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, receiver.Config{}, nil)
			enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
			enroll(t, e.keysDir, "s1", "d2", &a.key.PublicKey)
			all := map[string]*ledger.Batch{}
			for _, b := range slices.Concat(main, newChain) {
				all[string(wire(b))] = b
			}
			var receipts [][]byte
			for i, s := range tt.steps {
				site, dev := s.site, s.device
				if site == "" {
					site, dev = "s1", "d1"
				}
				rc, err := e.r.Handle(t.Context(), site, dev, s.payload)
				if s.wantErr != nil {
					var ref *receiver.RefusedError
					if !errors.Is(err, s.wantErr) || !errors.As(err, &ref) {
						t.Fatalf("step %d: err=%v, want a RefusedError wrapping %v", i, err, s.wantErr)
					}
					if rc != nil {
						t.Fatalf("step %d: refused batch got a receipt", i)
					}
					continue
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if s.wantSeq == 0 {
					if rc != nil {
						t.Fatalf("step %d: receipt %q, want none", i, rc)
					}
					continue
				}
				got, err := ledger.VerifyReceipt(rc, &e.central.PublicKey)
				if err != nil {
					t.Fatalf("step %d: receipt: %v", i, err)
				}
				want := main[s.wantSeq-1]
				if tt.name == "another chain on an empty store" {
					want = newChain[0]
				}
				if got.Seq != s.wantSeq || got.HeaderHash != hashOf(want) || got.Site != "s1" || got.Device != "d1" {
					t.Fatalf("step %d: receipt seq %d hash %s, want seq %d hash %s", i, got.Seq, got.HeaderHash, s.wantSeq, hashOf(want))
				}
				receipts = append(receipts, rc)
			}
			// A repeated receipt for one head is the same bytes.
			for i := 1; i < len(receipts); i++ {
				a, _ := ledger.ParseReceipt(receipts[i-1])
				b, _ := ledger.ParseReceipt(receipts[i])
				if a.Seq == b.Seq && !bytes.Equal(receipts[i-1], receipts[i]) {
					t.Fatalf("two receipts for seq %d differ", a.Seq)
				}
			}
			h, err := e.store.Head(t.Context(), "s1", "d1")
			if err != nil {
				t.Fatal(err)
			}
			if h.Seq != tt.wantHead {
				t.Fatalf("head seq %d, want %d", h.Seq, tt.wantHead)
			}
			if got := len(e.quarantined(t)); got != tt.wantQuar {
				t.Fatalf("%d quarantined files, want %d", got, tt.wantQuar)
			}
			st := e.r.Stats()
			if got := st.Batches; got != uint64(tt.wantStored) {
				t.Fatalf("stats: %d batches stored, want %d", got, tt.wantStored)
			}
			if got := st.Quarantined; got != uint64(tt.wantQuar) {
				t.Fatalf("stats: %d quarantined, want %d", got, tt.wantQuar)
			}
			verifyStored(t, e.storeDir, "s1", "d1", h, &a.key.PublicKey)
		})
	}
}

// verifyStored checks the folder store as `edgeaudit verify -key PUB batches/*.eab`
// does: every file in name order through one ledger.Verifier, ending at the head; and
// each events file holds the batch's events.
func verifyStored(t testing.TB, storeDir, site, device string, h receiver.Head, pub *ecdsa.PublicKey) {
	t.Helper()
	if h.Seq == 0 {
		return
	}
	dir := filepath.Join(storeDir, site, device, h.Chain)
	files, err := filepath.Glob(filepath.Join(dir, "batches", "*.eab"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	v, err := ledger.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	var last ledger.Header
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		r := ledger.NewReader(fh)
		for {
			b, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if last, err = v.Verify(b); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			jl, err := os.ReadFile(filepath.Join(dir, "events", receiver.SeqName(last.Seq)+".jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			var want []byte
			for _, ev := range b.Events {
				want = append(append(want, ev...), '\n')
			}
			if !bytes.Equal(jl, want) {
				t.Fatalf("events of seq %d: %q, want %q", last.Seq, jl, want)
			}
		}
		fh.Close()
	}
	if got := uint64(len(files)); got != h.Seq || last.Seq != h.Seq {
		t.Fatalf("%d batch files ending at seq %d, head is seq %d", got, last.Seq, h.Seq)
	}
}

func TestRestartKeepsPosition(t *testing.T) {
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 3, "a")
	e := newEnv(t, receiver.Config{}, nil)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	var last []byte
	for _, b := range chain[:2] {
		rc, err := e.r.Handle(t.Context(), "s1", "d1", wire(b))
		if err != nil {
			t.Fatal(err)
		}
		last = rc
	}
	// A new receiver over the same folders, as after a restart.
	r2, err := receiver.New(receiver.Config{Quarantine: e.quarDir}, receiver.FolderStore{Dir: e.storeDir},
		receiver.FolderKeys{Dir: e.keysDir}, keySigner{e.central}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := r2.Handle(t.Context(), "s1", "d1", wire(chain[1]))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rc, last) {
		t.Fatalf("duplicate after restart answered %q, want the stored receipt %q", rc, last)
	}
	rc, err = r2.Handle(t.Context(), "s1", "d1", wire(chain[2]))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ledger.VerifyReceipt(rc, &e.central.PublicKey); err != nil || got.Seq != 3 {
		t.Fatalf("after restart: receipt seq %d (%v), want 3", got.Seq, err)
	}
}

// failingStore fails Append while fail is set.
type failingStore struct {
	receiver.Store
	fail bool
}

func (f *failingStore) Append(ctx context.Context, e receiver.Entry) error {
	if f.fail {
		return errors.New("disk full")
	}
	return f.Store.Append(ctx, e)
}

func TestStoreFailureIsNotARefusal(t *testing.T) {
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 3, "a")
	fs := &failingStore{Store: newMemStore()}
	e := newEnv(t, receiver.Config{}, fs)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	if _, err := e.r.Handle(t.Context(), "s1", "d1", wire(chain[0])); err != nil {
		t.Fatal(err)
	}
	// Held batch 3 waits for 2; storing 2 fails.
	if _, err := e.r.Handle(t.Context(), "s1", "d1", wire(chain[2])); err != nil {
		t.Fatal(err)
	}
	fs.fail = true
	rc, err := e.r.Handle(t.Context(), "s1", "d1", wire(chain[1]))
	var ref *receiver.RefusedError
	if err == nil || errors.As(err, &ref) || rc != nil {
		t.Fatalf("failing store: receipt %q err %v, want a plain error and no receipt", rc, err)
	}
	if h, _ := fs.Head(t.Context(), "s1", "d1"); h.Seq != 1 {
		t.Fatalf("head %d after a failed append, want 1", h.Seq)
	}
	fs.fail = false
	rc, err = e.r.Handle(t.Context(), "s1", "d1", wire(chain[1]))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := ledger.ParseReceipt(rc); got.Seq != 3 {
		t.Fatalf("retry: receipt seq %d, want 3 (the held batch applied too)", got.Seq)
	}
	if n := len(e.quarantined(t)); n != 0 {
		t.Fatalf("%d quarantined after a store failure, want 0", n)
	}
}

func TestHoldIsBounded(t *testing.T) {
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 6, "a")
	e := newEnv(t, receiver.Config{MaxHeld: 2}, nil)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	for _, i := range []int{1, 3, 4, 5, 6} {
		if _, err := e.r.Handle(t.Context(), "s1", "d1", wire(chain[i-1])); err != nil {
			t.Fatalf("seq %d: %v", i, err)
		}
	}
	st := e.r.Stats()
	if st.Held != 2 || st.HeldDropped != 2 {
		t.Fatalf("held %d dropped %d, want 2 and 2", st.Held, st.HeldDropped)
	}
	rc, err := e.r.Handle(t.Context(), "s1", "d1", wire(chain[1]))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := ledger.ParseReceipt(rc); got.Seq != 4 {
		t.Fatalf("receipt seq %d after the gap filled, want 4 (5 and 6 were dropped)", got.Seq)
	}
}

func TestQuarantineFiles(t *testing.T) {
	a := newAppliance(t, "s1", "d1")
	chain := a.extend(t, nil, 1, "a")
	bad := wire(chain[0])
	bad[len(bad)-3] ^= 1 // inside the last event
	e := newEnv(t, receiver.Config{MaxQuarantineBytes: int64(2*len(bad) + 1)}, nil)
	enroll(t, e.keysDir, "s1", "d1", &a.key.PublicKey)
	for i := range 3 {
		_, err := e.r.Handle(t.Context(), "s1", "d1", bad)
		var ref *receiver.RefusedError
		if !errors.As(err, &ref) || ref.Reason() != receiver.ReasonTampered {
			t.Fatalf("try %d: err=%v, want a tampered refusal", i, err)
		}
		if wantFile := i < 2; (ref.Quarantined != "") != wantFile {
			t.Fatalf("try %d: quarantined %q, want a file: %v (budget for two)", i, ref.Quarantined, wantFile)
		}
		if ref.Quarantined == "" {
			continue
		}
		got, err := os.ReadFile(ref.Quarantined)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bad) {
			t.Fatal("quarantined bytes differ from the payload")
		}
		note, err := os.ReadFile(strings.TrimSuffix(ref.Quarantined, ".eab") + ".json")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(note, []byte(`"reason": "tampered"`)) || !bytes.Contains(note, []byte(`"seq": 1`)) {
			t.Fatalf("note %s lacks reason or seq", note)
		}
	}
	st := e.r.Stats()
	if st.Quarantined != 2 || st.QuarantineSkipped != 1 || st.Refused[receiver.ReasonTampered] != 3 {
		t.Fatalf("stats %+v, want 2 quarantined, 1 skipped, 3 refused as tampered", st)
	}
}

func TestInvalidTopicNamesAreNotPaths(t *testing.T) {
	e := newEnv(t, receiver.Config{}, nil)
	for _, name := range []string{"..", ".", "", "a b", strings.Repeat("x", 65)} {
		_, err := e.r.Handle(t.Context(), name, "d1", []byte("x"))
		if !errors.Is(err, receiver.ErrMalformed) {
			t.Fatalf("site %q: err=%v, want ErrMalformed", name, err)
		}
	}
	if n := len(e.quarantined(t)); n != 0 {
		t.Fatalf("%d quarantined under invalid names, want 0", n)
	}
}

func TestFolderKeys(t *testing.T) {
	dir := t.TempDir()
	k := genKey(t)
	enroll(t, dir, "s1", "d1", &k.PublicKey)
	os.WriteFile(filepath.Join(dir, "s1", "bad.pub"), []byte("not pem"), 0o600)
	tests := []struct {
		site, device string
		unknown      bool // ErrUnknownDevice
		ok           bool
	}{
		{"s1", "d1", false, true},
		{"s1", "d2", true, false},
		{"s2", "d1", true, false},
		{"..", "d1", true, false},
		{"s1", "bad", false, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.site, tt.device), func(t *testing.T) {
			got, err := receiver.FolderKeys{Dir: dir}.Key(t.Context(), tt.site, tt.device)
			if (err == nil) != tt.ok || errors.Is(err, receiver.ErrUnknownDevice) != tt.unknown {
				t.Fatalf("err=%v, want ok=%v unknown=%v", err, tt.ok, tt.unknown)
			}
			if tt.ok && !got.Equal(&k.PublicKey) {
				t.Fatal("wrong key")
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  receiver.Config
		ok   bool
	}{
		{"minimal", receiver.Config{Quarantine: "/q"}, true},
		{"no quarantine", receiver.Config{}, false},
		{"key name with a space", receiver.Config{Quarantine: "/q", KeyName: "a b"}, false},
		{"key name with a plus", receiver.Config{Quarantine: "/q", KeyName: "a+b"}, false},
		{"negative hold", receiver.Config{Quarantine: "/q", MaxHeld: -1}, false},
		{"shared group", receiver.Config{Quarantine: "/q", SharedGroup: "central"}, true},
		{"shared group of two levels", receiver.Config{Quarantine: "/q", SharedGroup: "a/b"}, false},
		{"shared group with a wildcard", receiver.Config{Quarantine: "/q", SharedGroup: "a+"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate()=%v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// FuzzHandle: whatever arrives, Handle does not panic, and a refused batch gets no
// receipt; what it receipts verifies with central's key.
func FuzzHandle(f *testing.F) {
	a := newAppliance(f, "s1", "d1")
	chain := a.extend(f, nil, 3, "a")
	for _, b := range chain {
		f.Add(wire(b))
	}
	f.Add([]byte("EAB1\x00\x00\x00\x02{}\x00\x00\x00\x00\x00\x00"))
	e := newEnv(f, receiver.Config{MaxQuarantineBytes: 1}, newMemStore()) // no quarantine writes: speed
	enroll(f, e.keysDir, "s1", "d1", &a.key.PublicKey)
	f.Fuzz(func(t *testing.T, payload []byte) {
		rc, err := e.r.Handle(t.Context(), "s1", "d1", payload)
		var ref *receiver.RefusedError
		if errors.As(err, &ref) && rc != nil {
			t.Fatal("refused batch got a receipt")
		}
		if rc != nil {
			if _, err := ledger.VerifyReceipt(rc, &e.central.PublicKey); err != nil {
				t.Fatalf("receipt does not verify: %v", err)
			}
		}
	})
}

// TestHandleConcurrentDevices: devices are handled in parallel (run it with -race), and
// duplicates of one device in parallel store each batch once.
func TestHandleConcurrentDevices(t *testing.T) {
	e := newEnv(t, receiver.Config{}, nil)
	const devices, batches = 4, 8
	chains := make([][]*ledger.Batch, devices)
	for i := range devices {
		a := newAppliance(t, "s1", fmt.Sprintf("d%d", i))
		enroll(t, e.keysDir, "s1", a.device, &a.key.PublicKey)
		chains[i] = a.extend(t, nil, batches, "a")
	}
	errs := make(chan error, devices*2)
	for i := range devices * 2 { // two senders per device, each sending the whole chain
		go func() {
			dev := fmt.Sprintf("d%d", i%devices)
			for _, b := range chains[i%devices] {
				if _, err := e.r.Handle(t.Context(), "s1", dev, wire(b)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range devices * 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if st := e.r.Stats(); st.Batches != devices*batches || st.Duplicates != devices*batches {
		t.Fatalf("stored %d, duplicates %d; want %d each", st.Batches, st.Duplicates, devices*batches)
	}
	for i := range devices {
		h, err := e.store.Head(t.Context(), "s1", fmt.Sprintf("d%d", i))
		if err != nil || h.Seq != batches {
			t.Fatalf("d%d head %d (%v), want %d", i, h.Seq, err, batches)
		}
	}
}
