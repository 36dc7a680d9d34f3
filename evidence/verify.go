package evidence

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/edgeaudit/edgeaudit/ledger"
)

// IsPackage reports whether dir looks like an evidence package (a folder with a
// manifest.json), so that `edgeaudit verify DIR` knows what it was given.
func IsPackage(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, ManifestFile))
	return err == nil && st.Mode().IsRegular()
}

// batchInfo is a verified header.
type batchInfo struct {
	site, device, chain string
	seq                 uint64
	count               int
	root                ledger.Hash
	hash                string
	file                string
}

// Verify checks the package in dir, which needs nothing but the folder: every file
// against the manifest (nothing missing, changed or added), each header's signature
// with its device's key and key_id, each event's inclusion proof against its batch's
// signed root, each receipt's signature with central.pub and that it covers each batch
// of its device, and that each event satisfies the stated query. The first failure is
// an *Error naming the file and item.
func Verify(dir string) (Report, error) {
	man, err := readManifest(dir)
	if err != nil {
		return Report{}, err
	}
	if err := checkFiles(dir, man); err != nil {
		return Report{}, err
	}
	v := &verifier{dir: dir, man: man, keys: map[string]*ecdsa.PublicKey{}, batches: map[string]*batchInfo{}}
	if v.central, err = readKey(dir, CentralFile); err != nil {
		return Report{}, err
	}
	for _, f := range man.Files {
		if strings.HasPrefix(f.Name, batchesDir+"/") && strings.HasSuffix(f.Name, ".header") {
			if err := v.header(f.Name); err != nil {
				return Report{}, err
			}
		}
	}
	devices, err := v.events()
	if err != nil {
		return Report{}, err
	}
	if err := v.receipts(devices); err != nil {
		return Report{}, err
	}
	rep := Report{Manifest: man, Events: v.nEvents, Batches: len(v.batches)}
	for _, k := range v.order {
		rep.Devices = append(rep.Devices, *devices[k])
	}
	switch {
	case man.Events != rep.Events:
		return Report{}, fail(ManifestFile, "", ErrManifest, "states %d events, %s holds %d", man.Events, EventsFile, rep.Events)
	case man.Batches != rep.Batches:
		return Report{}, fail(ManifestFile, "", ErrManifest, "states %d batches, the package holds %d", man.Batches, rep.Batches)
	case man.Devices != len(rep.Devices):
		return Report{}, fail(ManifestFile, "", ErrManifest, "states %d devices, the events name %d", man.Devices, len(rep.Devices))
	}
	return rep, nil
}

func readManifest(dir string) (Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return Manifest{}, fail(ManifestFile, "", ErrManifest, "%v", err)
	}
	var man Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&man); err != nil {
		return Manifest{}, fail(ManifestFile, "", ErrManifest, "%v", err)
	}
	if man.Format != Format {
		return Manifest{}, fail(ManifestFile, "", ErrManifest, "format %q, want %q", man.Format, Format)
	}
	return man, nil
}

// checkFiles checks every listed file's size and SHA-256, that the required ones are
// listed, and that the folder holds nothing else.
func checkFiles(dir string, man Manifest) error {
	listed := map[string]bool{}
	for _, f := range man.Files {
		if !filepath.IsLocal(filepath.FromSlash(f.Name)) || path.Clean(f.Name) != f.Name || f.Name == ManifestFile {
			return fail(ManifestFile, "", ErrManifest, "file name %q", f.Name)
		}
		if listed[f.Name] {
			return fail(ManifestFile, "", ErrManifest, "%s listed twice", f.Name)
		}
		listed[f.Name] = true
		fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Name)))
		if errors.Is(err, os.ErrNotExist) {
			return fail(f.Name, "", ErrManifest, "listed in %s but missing", ManifestFile)
		}
		if err != nil {
			return fail(f.Name, "", ErrManifest, "%v", err)
		}
		h := sha256.New()
		n, err := io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return fail(f.Name, "", ErrManifest, "%v", err)
		}
		if sum := hex.EncodeToString(h.Sum(nil)); n != f.Size || sum != f.SHA256 {
			return fail(f.Name, "", ErrManifest, "%d bytes with SHA-256 %s, the manifest lists %d bytes %s (changed after packaging)", n, sum, f.Size, f.SHA256)
		}
	}
	for _, req := range []string{EventsFile, ProofsFile, ReceiptsFile, CentralFile} {
		if !listed[req] {
			return fail(req, "", ErrManifest, "required file not listed in %s", ManifestFile)
		}
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fail(p, "", ErrManifest, "%v", err)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		switch {
		case d.IsDir() || name == ManifestFile:
			return nil
		case !d.Type().IsRegular():
			return fail(name, "", ErrManifest, "not a regular file")
		case !listed[name]:
			return fail(name, "", ErrManifest, "in the folder but not listed in %s", ManifestFile)
		}
		return nil
	})
}

// readKey reads a package file holding exactly one ECDSA P-256 public key.
func readKey(dir, name string) (*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
	if err != nil {
		return nil, fail(name, "", ErrFormat, "%v", err)
	}
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) > 0 {
		return nil, fail(name, "", ErrFormat, "not one PEM PUBLIC KEY block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fail(name, "", ErrFormat, "%v", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fail(name, "", ErrFormat, "not an ECDSA P-256 public key")
	}
	return ek, nil
}

type verifier struct {
	dir     string
	man     Manifest
	central *ecdsa.PublicKey
	keys    map[string]*ecdsa.PublicKey // "site/device"
	batches map[string]*batchInfo       // "site/device/chain/seq"
	list    []*batchInfo                // in manifest (name) order
	order   []string                    // devices in first-use order
	nEvents int
}

func batchKey(site, device, chain string, seq uint64) string {
	return fmt.Sprintf("%s/%s/%s/%d", site, device, chain, seq)
}

func (v *verifier) key(site, device string) (*ecdsa.PublicKey, error) {
	k := site + "/" + device
	if pub, ok := v.keys[k]; ok {
		return pub, nil
	}
	pub, err := readKey(v.dir, keyName(site, device))
	if err != nil {
		return nil, err
	}
	v.keys[k] = pub
	return pub, nil
}

// header verifies batches/<site>/<device>/<chain>/<seq>.header and its .sig.
func (v *verifier) header(name string) error {
	parts := strings.Split(name, "/")
	if len(parts) != 5 {
		return fail(name, "", ErrFormat, "not batches/<site>/<device>/<chain>/<seq>.header")
	}
	site, device, chain := parts[1], parts[2], parts[3]
	seq, ok := parseSeq(strings.TrimSuffix(parts[4], ".header"))
	if !ok || !validWhere(site, device, chain) {
		return fail(name, "", ErrFormat, "not batches/<site>/<device>/<chain>/<seq>.header")
	}
	hb, err := os.ReadFile(filepath.Join(v.dir, filepath.FromSlash(name)))
	if err != nil {
		return fail(name, "", ErrFormat, "%v", err)
	}
	sn := sigName(site, device, chain, seq)
	sig, err := os.ReadFile(filepath.Join(v.dir, filepath.FromSlash(sn)))
	if err != nil {
		return fail(sn, "", ErrFormat, "%v", err)
	}
	h, err := ledger.ParseHeader(hb)
	if err != nil {
		return fail(name, "", ErrFormat, "%v", err)
	}
	if h.Site != site || h.Device != device || h.Chain != chain || h.Seq != seq {
		return fail(name, "", ErrFormat, "header names %s/%s chain %s seq %d", h.Site, h.Device, h.Chain, h.Seq)
	}
	if h.Version != ledger.FormatVersion || h.Alg != ledger.AlgECDSAP256SHA256 {
		return fail(name, "", ErrFormat, "version %d alg %q", h.Version, h.Alg)
	}
	pub, err := v.key(site, device)
	if err != nil {
		return err
	}
	kid, err := ledger.KeyID(pub)
	if err != nil {
		return fail(keyName(site, device), "", ErrFormat, "%v", err)
	}
	if h.KeyID != kid {
		return fail(name, "", ErrSignature, "key_id %s is not %s's key %s", h.KeyID, keyName(site, device), kid)
	}
	digest := sha256.Sum256(hb)
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return fail(sn, "", ErrSignature, "does not verify over %s with %s", name, keyName(site, device))
	}
	root, err := hex.DecodeString(h.Root)
	if err != nil || len(root) != sha256.Size {
		return fail(name, "", ErrFormat, "root %q", h.Root)
	}
	sum := ledger.HeaderHash(hb)
	b := &batchInfo{site: site, device: device, chain: chain, seq: seq, count: h.Count,
		hash: hex.EncodeToString(sum[:]), file: name}
	copy(b.root[:], root)
	v.batches[batchKey(site, device, chain, seq)] = b
	v.list = append(v.list, b)
	return nil
}

func parseSeq(s string) (uint64, bool) {
	if len(s) != 20 {
		return 0, false
	}
	var seq uint64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		seq = seq*10 + uint64(s[i]-'0')
	}
	return seq, seq > 0
}

// lines reads a JSON lines file of the package.
type lines struct {
	name string
	sc   *bufio.Scanner
	fh   *os.File
	n    int
}

func openLines(dir, name string) (*lines, error) {
	fh, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return nil, fail(name, "", ErrFormat, "%v", err)
	}
	sc := bufio.NewScanner(fh)
	// An event of ledger.MaxEventSize in base64, with its names.
	sc.Buffer(make([]byte, 0, 64<<10), ledger.MaxEventSize/3*4+64<<10)
	return &lines{name: name, sc: sc, fh: fh}, nil
}

// next decodes the next line into v; false at the end.
func (l *lines) next(v any) (bool, error) {
	if !l.sc.Scan() {
		if err := l.sc.Err(); err != nil {
			return false, fail(l.name, fmt.Sprintf("line %d", l.n+1), ErrFormat, "%v", err)
		}
		return false, nil
	}
	l.n++
	dec := json.NewDecoder(bytes.NewReader(l.sc.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return false, fail(l.name, fmt.Sprintf("line %d", l.n), ErrFormat, "%v", err)
	}
	return true, nil
}

// events checks events.jsonl against proofs.jsonl, the verified headers and the query,
// and returns the devices the events name.
func (v *verifier) events() (map[string]*Device, error) {
	evs, err := openLines(v.dir, EventsFile)
	if err != nil {
		return nil, err
	}
	defer evs.fh.Close()
	prs, err := openLines(v.dir, ProofsFile)
	if err != nil {
		return nil, err
	}
	defer prs.fh.Close()
	q := v.man.Query.Receiver()
	devices := map[string]*Device{}
	seen := map[string]bool{}
	used := map[string]bool{}
	for {
		var e Event
		var p Proof
		okE, err := evs.next(&e)
		if err != nil {
			return nil, err
		}
		okP, err := prs.next(&p)
		if err != nil {
			return nil, err
		}
		if !okE || !okP {
			if okE != okP {
				return nil, fail(ProofsFile, "", ErrFormat, "%d lines, %s has %d", prs.n, EventsFile, evs.n)
			}
			return devices, nil
		}
		item := fmt.Sprintf("line %d (%s/%s seq %d index %d)", evs.n, e.Site, e.Device, e.Seq, e.Index)
		if p.Site != e.Site || p.Device != e.Device || p.Chain != e.Chain || p.Seq != e.Seq || p.Index != e.Index {
			return nil, fail(ProofsFile, fmt.Sprintf("line %d", prs.n), ErrFormat, "names %s/%s chain %s seq %d index %d, %s line %d names chain %s",
				p.Site, p.Device, p.Chain, p.Seq, p.Index, EventsFile, evs.n, e.Chain)
		}
		if (e.Event == nil) == (e.EventB64 == nil) {
			return nil, fail(EventsFile, item, ErrFormat, "needs exactly one of event and event_b64")
		}
		b := v.batches[batchKey(e.Site, e.Device, e.Chain, e.Seq)]
		if b == nil {
			return nil, fail(EventsFile, item, ErrFormat, "no batch header %s in the package", headerName(e.Site, e.Device, e.Chain, e.Seq))
		}
		k := batchKey(e.Site, e.Device, e.Chain, e.Seq) + fmt.Sprintf("/%d", e.Index)
		if seen[k] {
			return nil, fail(EventsFile, item, ErrFormat, "the same event twice")
		}
		seen[k] = true
		if p.Size != b.count || e.Index < 0 || e.Index >= b.count {
			return nil, fail(ProofsFile, item, ErrProof, "index %d in a batch of %d, the signed header counts %d", e.Index, p.Size, b.count)
		}
		path := make([]ledger.Hash, len(p.Path))
		for i, s := range p.Path {
			h, err := hex.DecodeString(s)
			if err != nil || len(h) != sha256.Size {
				return nil, fail(ProofsFile, item, ErrFormat, "path[%d] %q is not a hex SHA-256", i, s)
			}
			copy(path[i][:], h)
		}
		ev := e.Bytes()
		if err := ledger.VerifyInclusion(ledger.LeafHash(ev), uint64(e.Index), uint64(b.count), path, b.root); err != nil {
			return nil, fail(EventsFile, item, ErrProof, "the event and %s line %d do not lead to the root signed in %s", ProofsFile, prs.n, b.file)
		}
		if q.Site != "" && e.Site != q.Site || q.Device != "" && e.Device != q.Device || !q.Matches(ev) {
			return nil, fail(EventsFile, item, ErrQuery, "the manifest's query does not select it")
		}
		v.nEvents++
		if q.Limit > 0 && v.nEvents > q.Limit {
			return nil, fail(EventsFile, item, ErrQuery, "more events than the query's limit %d", q.Limit)
		}
		dk := e.Site + "/" + e.Device
		d := devices[dk]
		if d == nil {
			d = &Device{Site: e.Site, Device: e.Device, Chain: e.Chain}
			devices[dk] = d
			v.order = append(v.order, dk)
		}
		d.Events++
		bk := batchKey(e.Site, e.Device, e.Chain, e.Seq)
		if !used[bk] {
			used[bk] = true
			d.Batches++
		}
	}
}

// receipts verifies receipts.jsonl with central's key and checks that each batch is
// covered by its device's receipt.
func (v *verifier) receipts(devices map[string]*Device) error {
	fh, err := os.Open(filepath.Join(v.dir, ReceiptsFile))
	if err != nil {
		return fail(ReceiptsFile, "", ErrFormat, "%v", err)
	}
	raw, err := ledger.ReadReceipts(fh)
	fh.Close()
	if err != nil {
		return fail(ReceiptsFile, "", ErrFormat, "%v", err)
	}
	// Per device: the newest receipt (the head's when written), and the receipts of
	// single batches, by seq.
	newest := map[string]ledger.Receipt{}
	exact := map[string]ledger.Receipt{} // batchKey → a receipt at that very batch
	for i, b := range raw {
		rc, err := ledger.VerifyReceipt(b, v.central)
		if err != nil {
			return fail(ReceiptsFile, fmt.Sprintf("receipt %d", i+1), ErrReceipt, "%v (with %s)", err, CentralFile)
		}
		k := rc.Site + "/" + rc.Device
		if cur, ok := newest[k]; !ok || rc.Seq > cur.Seq {
			newest[k] = rc
		}
		exact[batchKey(rc.Site, rc.Device, rc.Chain, rc.Seq)] = rc
	}
	for _, b := range v.list {
		k := b.site + "/" + b.device
		rc, ok := newest[k]
		if !ok {
			return fail(b.file, "", ErrReceipt, "no receipt for %s in %s", k, ReceiptsFile)
		}
		// The newest receipt covers every batch of its chain up to its seq; a receipt at
		// the batch itself must name its header.
		if err := covers(rc, b.chain, b.seq, b.hash); err != nil {
			return fail(b.file, "", ErrReceipt, "%v", err)
		}
		d := devices[k]
		if own, ok := exact[batchKey(b.site, b.device, b.chain, b.seq)]; ok {
			if err := covers(own, b.chain, b.seq, b.hash); err != nil {
				return fail(b.file, "", ErrReceipt, "%v", err)
			}
			if d != nil {
				d.Bound++
			}
		}
		if d != nil {
			d.Receipt = rc
		}
	}
	return nil
}
