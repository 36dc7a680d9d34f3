package receiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/edgeaudit/edgeaudit/internal/atomicfile"
	"github.com/edgeaudit/edgeaudit/ledger"
)

// Head is where a device's stored chain ends.
type Head struct {
	Chain   string // chain id; "" when nothing is stored for the device
	Seq     uint64 // highest stored seq; every seq before it is stored too
	Hash    string // hex SHA-256 of that batch's header bytes
	Receipt []byte // central's signed receipt for Seq
}

// Entry is one verified batch to store as the next of its device's chain.
type Entry struct {
	Site, Device string
	Header       ledger.Header // parsed from Batch.Header
	Hash         string        // hex ledger.HeaderHash(Batch.Header)
	Batch        *ledger.Batch
	Receipt      []byte // the receipt naming this batch, sent only after Append returns
}

// Store keeps verified batches. The receiver calls it for one device at a time (its
// per-device lock serializes them); calls for different devices may run concurrently.
type Store interface {
	// Head returns the device's stored head, the zero Head when nothing is stored. An
	// error is an I/O failure; the caller retries.
	Head(ctx context.Context, site, device string) (Head, error)
	// Header returns the stored header bytes of seq in the device's chain, and an error
	// wrapping os.ErrNotExist when that seq is not stored.
	Header(ctx context.Context, site, device, chain string, seq uint64) ([]byte, error)
	// Append stores e as the batch after the device's head and makes it the new head,
	// durably, before it returns nil. The caller has verified e against the head. On
	// error the head is unchanged (what was half-written is overwritten by the next
	// Append of the same seq); the caller may retry with the same entry.
	Append(ctx context.Context, e Entry) error
}

// FolderStore is the embedded store: a folder tree, one chain per folder.
//
//	<Dir>/<site>/<device>/head                              JSON: chain, seq, hash, receipt
//	<Dir>/<site>/<device>/<chain>/batches/<seq>.eab          the batch in the wire format
//	<Dir>/<site>/<device>/<chain>/events/<seq>.jsonl         its events, one per line
//
// <seq> is zero-padded to 20 digits so that names sort in chain order and
// `edgeaudit verify -key DEVICE.pub <chain>/batches/*.eab` checks the stored chain. Every
// file is written with internal/atomicfile (temp, fsync, rename, fsync folder), batch
// and events before the head; the .eab files are authoritative, the .jsonl files are
// for people and tools that read JSON lines. One receiver process owns a folder.
type FolderStore struct{ Dir string }

// headFile is the JSON of the head file.
type headFile struct {
	Chain   string `json:"chain"`
	Seq     uint64 `json:"seq"`
	Hash    string `json:"hash"`
	Receipt string `json:"receipt"`
}

// SeqName is the file name stem of seq: 20 digits, zero-padded.
func SeqName(seq uint64) string { return fmt.Sprintf("%020d", seq) }

func (f FolderStore) deviceDir(site, device string) (string, error) {
	if !ledger.ValidName(site) || !ledger.ValidName(device) {
		return "", fmt.Errorf("store: bad site or device name %q/%q", site, device)
	}
	return filepath.Join(f.Dir, site, device), nil
}

// Head implements Store.
func (f FolderStore) Head(_ context.Context, site, device string) (Head, error) {
	dir, err := f.deviceDir(site, device)
	if err != nil {
		return Head{}, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "head"))
	if errors.Is(err, os.ErrNotExist) {
		return Head{}, nil
	}
	if err != nil {
		return Head{}, fmt.Errorf("read head: %w", err)
	}
	var h headFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return Head{}, fmt.Errorf("read head %s: %w", filepath.Join(dir, "head"), err)
	}
	if h.Chain == "" || h.Seq == 0 || len(h.Hash) != 64 {
		return Head{}, fmt.Errorf("read head %s: incomplete head %+v", filepath.Join(dir, "head"), h)
	}
	return Head{Chain: h.Chain, Seq: h.Seq, Hash: h.Hash, Receipt: []byte(h.Receipt)}, nil
}

// Header implements Store: it reads the stored batch file up to its header.
func (f FolderStore) Header(_ context.Context, site, device, chain string, seq uint64) ([]byte, error) {
	dir, err := f.deviceDir(site, device)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(filepath.Join(dir, chain, "batches", SeqName(seq)+".eab"))
	if err != nil {
		return nil, fmt.Errorf("read header seq %d: %w", seq, err)
	}
	defer fh.Close()
	var pre [8]byte
	if _, err := io.ReadFull(fh, pre[:]); err != nil || string(pre[:4]) != ledger.Magic {
		return nil, fmt.Errorf("read header seq %d: %w: bad start of file", seq, ledger.ErrFormat)
	}
	n := uint32(pre[4])<<24 | uint32(pre[5])<<16 | uint32(pre[6])<<8 | uint32(pre[7])
	if n == 0 || n > ledger.MaxHeaderSize {
		return nil, fmt.Errorf("read header seq %d: %w: header length %d", seq, ledger.ErrFormat, n)
	}
	hb := make([]byte, n)
	if _, err := io.ReadFull(fh, hb); err != nil {
		return nil, fmt.Errorf("read header seq %d: %w", seq, err)
	}
	return hb, nil
}

// entryData is one file of an entry: its path and bytes.
type entryData struct {
	path string
	data []byte
}

// entryFiles makes the chain's folders of e and returns its device folder and its two
// files: the batch (.eab) and its events (.jsonl).
func (f FolderStore) entryFiles(e Entry) (dir string, files [2]entryData, err error) {
	dir, err = f.deviceDir(e.Site, e.Device)
	if err != nil {
		return "", files, err
	}
	chainDir := filepath.Join(dir, e.Header.Chain)
	name := SeqName(e.Header.Seq)
	for _, sub := range []string{"batches", "events"} {
		if err := os.MkdirAll(filepath.Join(chainDir, sub), 0o700); err != nil {
			return "", files, fmt.Errorf("store seq %d: %w", e.Header.Seq, err)
		}
	}
	var lines []byte
	for _, ev := range e.Batch.Events {
		lines = append(append(lines, ev...), '\n')
	}
	files[0] = entryData{filepath.Join(chainDir, "batches", name+".eab"), e.Batch.AppendWire(nil)}
	files[1] = entryData{filepath.Join(chainDir, "events", name+".jsonl"), lines}
	return dir, files, nil
}

// Append implements Store.
func (f FolderStore) Append(_ context.Context, e Entry) error {
	dir, files, err := f.entryFiles(e)
	if err != nil {
		return err
	}
	// The batch and its events are written at once: their fsyncs (file and folder
	// each) overlap, and ext4 often commits them in one journal transaction. Both are
	// durable before the head names them, as before.
	batchErr := make(chan error, 1)
	go func() {
		batchErr <- atomicfile.WriteFile(files[0].path, files[0].data, 0o600)
	}()
	evErr := atomicfile.WriteFile(files[1].path, files[1].data, 0o600)
	if err := <-batchErr; err != nil {
		return fmt.Errorf("store seq %d: %w", e.Header.Seq, err)
	}
	if evErr != nil {
		return fmt.Errorf("store seq %d: %w", e.Header.Seq, evErr)
	}
	hb, err := json.Marshal(headFile{Chain: e.Header.Chain, Seq: e.Header.Seq, Hash: e.Hash, Receipt: string(e.Receipt)})
	if err != nil {
		return fmt.Errorf("store seq %d: %w", e.Header.Seq, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "head"), append(hb, '\n'), 0o600); err != nil {
		return fmt.Errorf("store seq %d: %w", e.Header.Seq, err)
	}
	return nil
}

// GroupStore may also be implemented by a Store: it stores several entries with one
// commit. The receiver uses it for the batches it has queued (Run); a Store without it
// gets one Append per entry.
type GroupStore interface {
	// AppendGroup stores es in order, as Append would one after another (the entries
	// of one device follow each other in chain order, the first after the device's
	// head), all of them durably before it returns nil. The caller has verified each
	// against the head before it. On error the store may have kept any of them; the
	// caller rereads the heads (Head) and may retry what they do not cover.
	AppendGroup(ctx context.Context, es []Entry) error
}

// discardTemps closes and removes the temp files of ps not yet renamed (f still set).
func discardTemps(ps []pendingFile) {
	for _, p := range ps {
		if p.f != nil {
			p.f.Close()
			os.Remove(p.tmp)
		}
	}
}

// AppendGroup implements GroupStore: every entry's batch and events files are written,
// and each device's head file once (naming its last entry), all as temp files; they are
// fsynced at once; the batch and events files are renamed and their folders fsynced
// once; then the head files are renamed and the device folders fsynced. Three rounds
// of fsyncs per group, whatever its size (an Append has four, overlapped from six).
func (f FolderStore) AppendGroup(_ context.Context, es []Entry) error {
	if len(es) == 0 {
		return nil
	}
	var files []pendingFile
	heads := map[string]int{} // device folder -> index in es of its last entry
	var order []string
	defer func() { discardTemps(files) }()
	for i, e := range es {
		dir, data, err := f.entryFiles(e)
		if err != nil {
			return err
		}
		for _, w := range data {
			p, err := writeTemp(w.path, w.data)
			if err != nil {
				return fmt.Errorf("store seq %d: %w", e.Header.Seq, err)
			}
			files = append(files, p)
		}
		if _, ok := heads[dir]; !ok {
			order = append(order, dir)
		}
		heads[dir] = i
	}
	var headFiles []pendingFile
	defer func() { discardTemps(headFiles) }()
	for _, dir := range order {
		e := es[heads[dir]]
		hb, err := json.Marshal(headFile{Chain: e.Header.Chain, Seq: e.Header.Seq, Hash: e.Hash, Receipt: string(e.Receipt)})
		if err != nil {
			return fmt.Errorf("store seq %d: %w", e.Header.Seq, err)
		}
		p, err := writeTemp(filepath.Join(dir, "head"), append(hb, '\n'))
		if err != nil {
			return fmt.Errorf("store seq %d: %w", e.Header.Seq, err)
		}
		headFiles = append(headFiles, p)
	}
	// The head files' contents are synced with the batches' (a temp file is not
	// visible); they are renamed only once the batches' renames are durable.
	all := append(append([]pendingFile(nil), files...), headFiles...)
	if err := parallel(len(all), func(i int) error {
		if err := all[i].f.Sync(); err != nil {
			return fmt.Errorf("write %s: %w", all[i].path, err)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("store group of %d: %w", len(es), err)
	}
	if err := renameAll(files); err != nil {
		return fmt.Errorf("store group of %d: %w", len(es), err)
	}
	if err := renameAll(headFiles); err != nil {
		return fmt.Errorf("store group of %d: %w", len(es), err)
	}
	return nil
}

// pendingFile is a temp file written, not yet synced or renamed.
type pendingFile struct {
	f         *os.File
	tmp, path string
}

// writeTemp writes data to a new temp file beside path (mode 0600), without syncing.
func writeTemp(path string, data []byte) (pendingFile, error) {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return pendingFile{}, fmt.Errorf("write %s: %w", path, err)
	}
	p := pendingFile{f: f, tmp: f.Name(), path: path}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(p.tmp)
		return pendingFile{}, fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(p.tmp)
		return pendingFile{}, fmt.Errorf("write %s: %w", path, err)
	}
	return p, nil
}

// syncParallel bounds the fsyncs commitFiles runs at once: concurrent fsyncs on one
// filesystem share journal commits.
const syncParallel = 16

// renameAll closes each synced file and renames it over its path, then fsyncs each
// folder once. Each file renamed or failed is closed (f set to nil); on error those
// after it are left for the caller to remove.
func renameAll(files []pendingFile) error {
	var dirs []string
	seen := map[string]bool{}
	for i := range files {
		p := &files[i]
		err := p.f.Close()
		p.f = nil
		if err == nil {
			err = os.Rename(p.tmp, p.path)
		}
		if err != nil {
			os.Remove(p.tmp)
			return fmt.Errorf("write %s: %w", p.path, err)
		}
		if d := filepath.Dir(p.path); !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return parallel(len(dirs), func(i int) error { return atomicfile.SyncDir(dirs[i]) })
}

// parallel runs fn(0..n-1) on at most syncParallel goroutines and returns the errors
// joined.
func parallel(n int, fn func(i int) error) error {
	if n == 1 {
		return fn(0)
	}
	errs := make([]error, n)
	sem := make(chan struct{}, syncParallel)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
