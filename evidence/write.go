package evidence

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/receiver"
)

// Heads gives each device's stored head, whose receipt covers its chain (receiver.Store
// fits).
type Heads interface {
	Head(ctx context.Context, site, device string) (receiver.Head, error)
}

// BatchReceipts is an optional interface of Heads for stores that keep the receipt
// central signed when it stored each batch (not only the head's). Write then adds each
// used batch's own receipt too, which names that batch's header hash: the batch is then
// bound to central's key directly, not only through its device's key.
type BatchReceipts interface {
	// BatchReceipt returns the receipt signed when seq of the device's chain was
	// stored, and an error wrapping os.ErrNotExist when the store has none for it.
	BatchReceipt(ctx context.Context, site, device, chain string, seq uint64) ([]byte, error)
}

// Write runs q over src and writes an evidence package of the matches to dir, which
// must not exist or be empty. For each batch a match is in it checks the header
// signature against the enrolled key (a batch signed by central itself, its own audit
// trail, is checked against central), the Merkle root and the match's bytes, so it
// never packages what would not verify; then it adds each device's head receipt, which
// must verify with central and cover every batch used. The folder is built beside dir
// and renamed into place: dir holds a whole package or none. Files are 0600, folders
// 0700. Only the selected events are included, not the rest of their batches.
func Write(ctx context.Context, dir string, src receiver.Querier, heads Heads, keys receiver.DeviceKeys,
	central *ecdsa.PublicKey, q receiver.Query) (Summary, error) {
	if src == nil || heads == nil || keys == nil || central == nil {
		return Summary{}, errors.New("write evidence: source, heads, keys and central key are required")
	}
	if err := checkTarget(dir); err != nil {
		return Summary{}, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), "."+filepath.Base(dir)+".*.tmp")
	if err != nil {
		return Summary{}, fmt.Errorf("write evidence: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	w := &writer{root: tmp, ctx: ctx, src: src, keys: keys, central: central, devices: map[string]*devicePart{}}
	if w.centralKID, err = ledger.KeyID(central); err != nil {
		return Summary{}, fmt.Errorf("write evidence: %w", err)
	}
	sum, err := w.write(heads, q)
	if err != nil {
		return Summary{}, fmt.Errorf("write evidence: %w", err)
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return Summary{}, fmt.Errorf("write evidence: %w", err)
	}
	// An empty dir is removed first (os.Rename does not replace a folder; os.Remove
	// fails on one that is no longer empty); a missing one is created by the rename.
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Summary{}, fmt.Errorf("write evidence: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return Summary{}, fmt.Errorf("write evidence: %w", err)
	}
	done = true
	if err := atomicfile.SyncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
		return Summary{}, fmt.Errorf("write evidence: %w", err)
	}
	sum.Dir = dir
	return sum, nil
}

// checkTarget refuses a dir that holds anything: a package is never mixed with other
// files or written over an earlier one.
func checkTarget(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write evidence: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("write evidence: %s is not empty", dir)
	}
	return nil
}

// devicePart is what the package holds of one device.
type devicePart struct {
	site, device string
	key          *ecdsa.PublicKey
	chains       map[string]uint64 // chain → highest seq used
	hashes       map[string]string // "chain/seq" → header hash, for a receipt at that seq
	used         []usedBatch
}

type usedBatch struct {
	chain string
	seq   uint64
	hash  string
}

// writer builds a package in root.
type writer struct {
	root       string
	ctx        context.Context
	src        receiver.Querier
	keys       receiver.DeviceKeys
	central    *ecdsa.PublicKey
	centralKID string

	files   []File
	devices map[string]*devicePart
	order   []string // device keys in first-use order

	// the batch of the previous match, so that its leaves are hashed once
	cur struct {
		site, device, chain string
		seq                 uint64
		batch               *ledger.Batch
		header              ledger.Header
		leaves              []ledger.Hash
		tree                tree
		root                ledger.Hash
	}
	batches int
}

// hashedFile is a file being written in the package: it counts and hashes what goes in.
type hashedFile struct {
	name string
	f    *os.File
	bw   *bufio.Writer
	h    hash.Hash
	n    int64
}

func (w *writer) create(name string) (*hashedFile, error) {
	p := filepath.Join(w.root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	return &hashedFile{name: name, f: f, bw: bufio.NewWriterSize(f, 64<<10), h: sha256.New()}, nil
}

func (hf *hashedFile) Write(p []byte) (int, error) {
	hf.h.Write(p)
	hf.n += int64(len(p))
	return hf.bw.Write(p)
}

// finish flushes, fsyncs and closes the file and lists it.
func (w *writer) finish(hf *hashedFile) error {
	err := hf.bw.Flush()
	if err == nil {
		err = hf.f.Sync()
	}
	if cerr := hf.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", hf.name, err)
	}
	w.files = append(w.files, File{Name: hf.name, Size: hf.n, SHA256: hex.EncodeToString(hf.h.Sum(nil))})
	return nil
}

func (w *writer) writeFile(name string, data []byte) error {
	hf, err := w.create(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	hf.Write(data)
	return w.finish(hf)
}

func (w *writer) write(heads Heads, q receiver.Query) (Summary, error) {
	events, err := w.create(EventsFile)
	if err != nil {
		return Summary{}, err
	}
	defer events.f.Close() // after finish, a no-op
	proofs, err := w.create(ProofsFile)
	if err != nil {
		return Summary{}, err
	}
	defer proofs.f.Close()
	n := 0
	err = w.src.Query(w.ctx, q, func(m receiver.Match) error {
		if err := w.useBatch(m); err != nil {
			return err
		}
		if m.Index < 0 || m.Index >= len(w.cur.batch.Events) || !bytes.Equal(w.cur.batch.Events[m.Index], m.Event) {
			return fmt.Errorf("%s/%s seq %d index %d: the event the query returned is not the stored batch's", m.Site, m.Device, m.Seq, m.Index)
		}
		path := w.cur.tree.proof(m.Index)
		// Check what goes in: a proof that would not verify is a bug to catch here.
		if err := ledger.VerifyInclusion(w.cur.leaves[m.Index], uint64(m.Index), uint64(len(w.cur.leaves)), path, w.cur.root); err != nil {
			return fmt.Errorf("%s/%s seq %d index %d: %w", m.Site, m.Device, m.Seq, m.Index, err)
		}
		line, err := json.Marshal(EventOf(m))
		if err != nil {
			return err
		}
		events.Write(append(line, '\n'))
		p := Proof{Site: m.Site, Device: m.Device, Chain: m.Chain, Seq: m.Seq, Index: m.Index, Size: len(w.cur.leaves), Path: make([]string, len(path))}
		for i, h := range path {
			p.Path[i] = hex.EncodeToString(h[:])
		}
		if line, err = json.Marshal(p); err != nil {
			return err
		}
		proofs.Write(append(line, '\n'))
		n++
		return nil
	})
	if err != nil {
		return Summary{}, fmt.Errorf("query: %w", err)
	}
	if err := w.finish(events); err != nil {
		return Summary{}, err
	}
	if err := w.finish(proofs); err != nil {
		return Summary{}, err
	}
	if err := w.writeReceipts(heads); err != nil {
		return Summary{}, err
	}
	if err := w.writeKeys(); err != nil {
		return Summary{}, err
	}
	if err := w.writeFile(ReadmeFile, fmt.Appendf(nil, readme, Format)); err != nil {
		return Summary{}, err
	}
	slices.SortFunc(w.files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	man := Manifest{Format: Format, Created: time.Now().UTC(), Tool: toolVersion(), Query: queryOf(q),
		Events: n, Batches: w.batches, Devices: len(w.devices), Files: w.files}
	mb, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return Summary{}, err
	}
	// The manifest is listed nowhere; it is the last file written.
	hf, err := w.create(ManifestFile)
	if err != nil {
		return Summary{}, err
	}
	hf.Write(append(mb, '\n'))
	if err := w.finish(hf); err != nil {
		return Summary{}, err
	}
	var size int64
	for _, f := range w.files {
		size += f.Size
	}
	return Summary{Events: n, Batches: w.batches, Devices: len(w.devices), Files: len(w.files), Bytes: size}, nil
}

// EventOf is the events.jsonl line of m (`edgeaudit query` prints the same lines). It
// keeps the exact bytes: as JSON when encoding/json writes them back unchanged
// (RawMessage output is compacted and HTML-escaped), else as base64.
func EventOf(m receiver.Match) Event {
	e := Event{Site: m.Site, Device: m.Device, Chain: m.Chain, Seq: m.Seq, Index: m.Index}
	if json.Valid(m.Event) {
		if again, err := json.Marshal(json.RawMessage(m.Event)); err == nil && bytes.Equal(again, m.Event) {
			e.Event = m.Event
			return e
		}
	}
	e.EventB64 = m.Event
	return e
}

// useBatch makes m's batch the current one, loading and checking it when it changes,
// and writes its header and signature into the package the first time.
func (w *writer) useBatch(m receiver.Match) error {
	c := &w.cur
	if c.batch != nil && c.site == m.Site && c.device == m.Device && c.chain == m.Chain && c.seq == m.Seq {
		return nil
	}
	if !validWhere(m.Site, m.Device, m.Chain) || m.Seq == 0 {
		return fmt.Errorf("match names %q/%q chain %q seq %d", m.Site, m.Device, m.Chain, m.Seq)
	}
	raw, err := w.src.Batch(w.ctx, m.Site, m.Device, m.Chain, m.Seq)
	if err != nil {
		return err
	}
	where := fmt.Sprintf("%s/%s seq %d", m.Site, m.Device, m.Seq)
	b, err := ledger.NewReader(bytes.NewReader(raw)).Next()
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	h, err := ledger.ParseHeader(b.Header)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if h.Site != m.Site || h.Device != m.Device || h.Chain != m.Chain || h.Seq != m.Seq {
		return fmt.Errorf("%s: stored header names %s/%s chain %s seq %d", where, h.Site, h.Device, h.Chain, h.Seq)
	}
	dp, err := w.device(m.Site, m.Device, h.KeyID)
	if err != nil {
		return err
	}
	kid, err := ledger.KeyID(dp.key)
	if err != nil {
		return err
	}
	digest := sha256.Sum256(b.Header)
	if h.KeyID != kid || !ecdsa.VerifyASN1(dp.key, digest[:], b.Signature) {
		return fmt.Errorf("%s: header signature does not verify with the enrolled key", where)
	}
	leaves := make([]ledger.Hash, len(b.Events))
	for i, e := range b.Events {
		leaves[i] = ledger.LeafHash(e)
	}
	t := newTree(leaves)
	root := t.root()
	if h.Count != len(b.Events) || hex.EncodeToString(root[:]) != h.Root {
		return fmt.Errorf("%s: the stored events do not match the signed root", where)
	}
	if err := w.writeFile(headerName(m.Site, m.Device, m.Chain, m.Seq), b.Header); err != nil {
		if errors.Is(err, os.ErrExist) {
			// The query returned a batch's events apart (not in order): a broken Querier.
			return fmt.Errorf("%s: the query returned this batch twice, not in order", where)
		}
		return err
	}
	if err := w.writeFile(sigName(m.Site, m.Device, m.Chain, m.Seq), b.Signature); err != nil {
		return err
	}
	w.batches++
	if m.Seq > dp.chains[m.Chain] {
		dp.chains[m.Chain] = m.Seq
	}
	sum := ledger.HeaderHash(b.Header)
	dp.hashes[fmt.Sprintf("%s/%d", m.Chain, m.Seq)] = hex.EncodeToString(sum[:])
	dp.used = append(dp.used, usedBatch{chain: m.Chain, seq: m.Seq, hash: hex.EncodeToString(sum[:])})
	c.site, c.device, c.chain, c.seq = m.Site, m.Device, m.Chain, m.Seq
	c.batch, c.header, c.leaves, c.tree, c.root = b, h, leaves, t, root
	return nil
}

// device returns the device's part, looking its key up the first time. A device with no
// enrolled key whose batches central signed is central's own audit trail.
func (w *writer) device(site, device, headerKID string) (*devicePart, error) {
	k := site + "/" + device
	if dp, ok := w.devices[k]; ok {
		return dp, nil
	}
	key, err := w.keys.Key(w.ctx, site, device)
	if errors.Is(err, receiver.ErrUnknownDevice) && headerKID == w.centralKID {
		key, err = w.central, nil
	}
	if err != nil {
		return nil, err
	}
	dp := &devicePart{site: site, device: device, key: key, chains: map[string]uint64{}, hashes: map[string]string{}}
	w.devices[k] = dp
	w.order = append(w.order, k)
	return dp, nil
}

// writeReceipts adds each device's head receipt, checked against central's key and
// against every batch of the device in the package, and each used batch's own receipt
// when the store keeps them (BatchReceipts).
func (w *writer) writeReceipts(heads Heads) error {
	var rcs [][]byte
	for _, k := range w.order {
		dp := w.devices[k]
		h, err := heads.Head(w.ctx, dp.site, dp.device)
		if err != nil {
			return err
		}
		rc, err := ledger.VerifyReceipt(h.Receipt, w.central)
		if err != nil {
			return fmt.Errorf("receipt of %s: %w", k, err)
		}
		for chain, seq := range dp.chains {
			if err := covers(rc, chain, seq, dp.hashes[fmt.Sprintf("%s/%d", chain, seq)]); err != nil {
				return fmt.Errorf("receipt of %s: %w", k, err)
			}
		}
		rcs = append(rcs, h.Receipt)
		if br, ok := heads.(BatchReceipts); ok {
			for _, u := range dp.used {
				if u.seq == rc.Seq && u.chain == rc.Chain {
					continue // the head's receipt names it already
				}
				b, err := br.BatchReceipt(w.ctx, dp.site, dp.device, u.chain, u.seq)
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err != nil {
					return err
				}
				r, err := ledger.VerifyReceipt(b, w.central)
				if err != nil {
					return fmt.Errorf("receipt of %s seq %d: %w", k, u.seq, err)
				}
				if r.Site != dp.site || r.Device != dp.device || r.Chain != u.chain || r.Seq != u.seq || r.HeaderHash != u.hash {
					return fmt.Errorf("receipt of %s seq %d names %s/%s chain %s seq %d header %s", k, u.seq, r.Site, r.Device, r.Chain, r.Seq, r.HeaderHash)
				}
				rcs = append(rcs, b)
			}
		}
	}
	hf, err := w.create(ReceiptsFile)
	if err != nil {
		return err
	}
	if err := ledger.WriteReceipts(hf, rcs); err != nil {
		hf.f.Close()
		return err
	}
	return w.finish(hf)
}

// covers checks that rc states central stored chain up to seq (whose header hashes to
// hash): the same chain and a seq at or above it, the same header at it.
func covers(rc ledger.Receipt, chain string, seq uint64, hash string) error {
	switch {
	case rc.Chain != chain:
		return fmt.Errorf("the receipt names chain %s, the batch is in chain %s", rc.Chain, chain)
	case rc.Seq < seq:
		return fmt.Errorf("the receipt names seq %d, below the batch's seq %d", rc.Seq, seq)
	case rc.Seq == seq && rc.HeaderHash != hash:
		return fmt.Errorf("the receipt names header %s for seq %d, the batch's is %s", rc.HeaderHash, seq, hash)
	}
	return nil
}

func (w *writer) writeKeys() error {
	for _, k := range w.order {
		dp := w.devices[k]
		b, err := publicPEM(dp.key)
		if err != nil {
			return err
		}
		if err := w.writeFile(keyName(dp.site, dp.device), b); err != nil {
			return err
		}
	}
	b, err := publicPEM(w.central)
	if err != nil {
		return err
	}
	return w.writeFile(CentralFile, b)
}

func publicPEM(k *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// tree is a batch's RFC 6962 Merkle tree, level by level, so that the proofs of many
// events of one batch cost one tree instead of ledger.InclusionProof's subtree roots
// per proof (O(n) each; 58% of BenchmarkWriteVerify's time before). Level l+1 hashes
// pairs of level l and carries an odd last node up unhashed, which is the RFC's tree
// (ledger.Root builds it the same way); TestTreeMatchesLedger checks every proof
// against ledger.InclusionProof.
type tree [][]ledger.Hash

func newTree(leaves []ledger.Hash) tree {
	t := tree{leaves}
	for lv := leaves; len(lv) > 1; {
		next := make([]ledger.Hash, 0, (len(lv)+1)/2)
		for i := 0; i < len(lv); i += 2 {
			if i+1 < len(lv) {
				next = append(next, ledger.NodeHash(lv[i], lv[i+1]))
			} else {
				next = append(next, lv[i])
			}
		}
		t, lv = append(t, next), next
	}
	return t
}

func (t tree) root() ledger.Hash {
	if len(t[0]) == 0 {
		return ledger.EmptyRoot
	}
	return t[len(t)-1][0]
}

// proof is the audit path of leaf index, leaf upwards: at each level the sibling, when
// the node has one (a carried node has none at that level).
func (t tree) proof(index int) []ledger.Hash {
	var path []ledger.Hash
	for _, lv := range t[:len(t)-1] {
		if sib := index ^ 1; sib < len(lv) {
			path = append(path, lv[sib])
		}
		index >>= 1
	}
	return path
}
