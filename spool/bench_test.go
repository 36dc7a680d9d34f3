package spool

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	bolt "go.etcd.io/bbolt"
)

// BenchmarkSpoolAppend measures committed events/s through the real writer: 4 appenders,
// realistic ~400-byte syslog events, batches of 1000, fsync on every commit.
func BenchmarkSpoolAppend(b *testing.B) {
	benchAppend(b, Options{Signer: newSigner(b)})
}

// BenchmarkSpoolAppendEncrypted is BenchmarkSpoolAppend with the events encrypted at rest
// (AES-256-GCM, a random nonce each), as the daemon runs by default.
func BenchmarkSpoolAppendEncrypted(b *testing.B) {
	benchAppend(b, Options{Signer: newSigner(b), DataKey: testDataKey, Encrypt: true})
}

func benchAppend(b *testing.B, opts Options) {
	s := openWith(b, filepath.Join(b.TempDir(), "spool.db"), Config{MaxEvents: 1000, MaxAge: 2 * time.Second}, opts)
	defer s.Close()
	now := time.Now().UTC()
	proto := audit.Event{Time: now, Received: now, Source: audit.Source{Kind: audit.KindSyslog, Host: "pacs01.site.example", IP: "127.0.0.1", App: "dcm4chee", Transport: "tcp", Facility: "authpriv", Severity: "notice"},
		Action: "system.log", Outcome: audit.OutcomeUnknown, Message: "user tech01 opened study viewer session on workstation RAD-WS-04 after successful login from 10.0.0.17 port 51514",
		RawSHA256: "2b1d0f2f0d6e0a0c7f4a9b8e1f3d5c6b7a8e9f0a1b2c3d4e5f60718293a4b5c6"}
	var wg sync.WaitGroup
	done := make(chan struct{}, 1)
	var committed sync.WaitGroup
	committed.Add(b.N)
	b.ResetTimer()
	per := b.N / 4
	for w := range 4 {
		n := per
		if w == 3 {
			n = b.N - 3*per
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				e := proto
				if err := s.Append(b.Context(), &e, func(error) { committed.Done() }); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	committed.Wait()
	b.StopTimer()
	close(done)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkSealBatch is the cost of sealing 1000 events: Merkle root, header, signature.
// It seals on a spool value of its own over the closed spool's file: the writer state
// belongs to the writer goroutine, which a live spool runs.
func BenchmarkSealBatch(b *testing.B) {
	path := filepath.Join(b.TempDir(), "spool.db")
	live := openSpool(b, path, Config{MaxEvents: 1000, MaxAge: time.Hour}, newSigner(b))
	if err := live.Close(); err != nil {
		b.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	s := &Spool{cfg: live.cfg, opts: live.opts, path: path, db: db, st: live.st}
	var leaves = make([][32]byte, 1000)
	for i := range leaves {
		leaves[i][0] = byte(i)
	}
	b.ResetTimer()
	for b.Loop() {
		s.st.leaves = append(s.st.leaves[:0], leaves...)
		s.st.first, s.st.last = time.Now(), time.Now()
		if err := s.db.Update(func(tx *bolt.Tx) error { return s.seal(tx, time.Now()) }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEventSeal is the encryption of one ~400-byte event alone: what the writer
// adds per event when spool.encrypt is on.
func BenchmarkEventSeal(b *testing.B) {
	c, err := newEventCipher(testDataKey)
	if err != nil {
		b.Fatal(err)
	}
	plain := make([]byte, 400)
	nonce := make([]byte, nonceSize)
	aad := eventAAD(nil, "0123456789abcdef0123456789abcdef", eventKey(1, 0))
	aead, err := c.batch("0123456789abcdef0123456789abcdef", 1)
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, len(plain)+encOverhead)
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		dst = c.seal(dst[:0], aead, aad, nonce, plain)
	}
}
