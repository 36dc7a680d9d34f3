// Command growth fills a daemon's spool through the real spool API and measures, at its
// current size, what must stay flat as the unacked spool grows: commit, seal, the
// uplink's pick and read of the oldest unacked batch, and Open. bench/growth/run.sh
// drives it (with `edgeaudit run`, `verify` and `export` on the same data folder).
//
//	growth fill    -config FILE -gb 2     grow the spool file to 2 GB (nothing acked)
//	growth measure -config FILE           one line per figure
//
// The spool is opened exactly as the daemon opens it (daemon.OpenKeys, SpoolConfig,
// SpoolOptions: software signing key, events encrypted at rest), so the file is one that
// `edgeaudit run`, `verify` and `export` take as their own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeaudit/edgeaudit/audit"
	"github.com/edgeaudit/edgeaudit/daemon"
	"github.com/edgeaudit/edgeaudit/ledger"
	"github.com/edgeaudit/edgeaudit/spool"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: growth fill|measure -config FILE [-gb N]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("growth "+os.Args[1], flag.ExitOnError)
	configPath := fs.String("config", "", "daemon config file (data_dir is the spool's folder)")
	gb := fs.Float64("gb", 0.5, "fill: grow the spool file to this many GB (1e9 bytes)")
	label := fs.String("label", "", "measure: the size label printed with each figure")
	cpuProfile := fs.String("cpuprofile", "", "read: write a CPU profile here")
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "fill":
		err = fill(*configPath, int64(*gb*1e9))
	case "measure":
		err = measure(*configPath, *label)
	case "read":
		err = readAll(*configPath, *cpuProfile)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "growth:", err)
		os.Exit(1)
	}
}

func openSpool(configPath string) (*spool.Spool, *daemon.Keyring, string, error) {
	cfg, err := daemon.LoadConfig(configPath)
	if err != nil {
		return nil, nil, "", err
	}
	keys, err := daemon.OpenKeys(&cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, nil, "", err
	}
	sp, err := spool.Open(cfg.SpoolPath(), cfg.SpoolConfig(), cfg.SpoolOptions(keys))
	if err != nil {
		keys.Close()
		return nil, nil, "", err
	}
	return sp, keys, cfg.SpoolPath(), nil
}

// event is a syslog event as the collector makes it from a PACS login line: about 600
// bytes encoded, each one different.
func event(i int) *audit.Event {
	now := time.Now().UTC()
	return &audit.Event{
		Time: now, Received: now,
		Source: audit.Source{Kind: audit.KindSyslog, Host: "pacs01.radiology-east.example", IP: "10.20.30.41", App: "dcm4chee-arc",
			Transport: "tcp", Facility: "authpriv", Severity: "notice"},
		Action: "auth.login", Outcome: audit.OutcomeSuccess,
		Actor: audit.Actor{User: fmt.Sprintf("tech%04d", i%5000), Role: "technologist", Session: fmt.Sprintf("s-%012d", i)},
		Message: fmt.Sprintf("user tech%04d opened study viewer session %012d on workstation RAD-WS-%02d after successful login from 10.0.%d.%d port %d (LDAP realm RADIOLOGY, MFA push accepted)",
			i%5000, i, i%40, (i/250)%250, i%250, 40000+i%20000),
		RawSHA256: "2b1d0f2f0d6e0a0c7f4a9b8e1f3d5c6b7a8e9f0a1b2c3d4e5f60718293a4b5c6",
	}
}

// appendBurst appends n events from two goroutines and waits for all their commits.
func appendBurst(ctx context.Context, sp *spool.Spool, base, n int) (time.Duration, error) {
	var wg, committed sync.WaitGroup
	var firstErr atomic.Pointer[error]
	committed.Add(n)
	start := time.Now()
	for w := range 2 {
		wg.Go(func() {
			for i := w; i < n; i += 2 {
				for {
					err := sp.Append(ctx, event(base+i), func(err error) {
						if err != nil {
							firstErr.CompareAndSwap(nil, &err)
						}
						committed.Done()
					})
					if errors.Is(err, spool.ErrFull) {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					if err != nil {
						firstErr.CompareAndSwap(nil, &err)
						committed.Done()
					}
					break
				}
			}
		})
	}
	wg.Wait()
	committed.Wait()
	if p := firstErr.Load(); p != nil {
		return 0, *p
	}
	return time.Since(start), nil
}

func fill(configPath string, target int64) error {
	sp, keys, path, err := openSpool(configPath)
	if err != nil {
		return err
	}
	defer keys.Close()
	ctx := context.Background()
	start := time.Now()
	fi, _ := os.Stat(path)
	from := fi.Size()
	base := int(time.Now().UnixNano() % 1e9)
	for {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if fi.Size() >= target {
			break
		}
		if _, err := appendBurst(ctx, sp, base, 50000); err != nil {
			return err
		}
		base += 50000
	}
	if err := sp.Seal(ctx); err != nil {
		return err
	}
	if err := sp.Close(); err != nil {
		return err
	}
	fi, _ = os.Stat(path)
	d := time.Since(start)
	fmt.Printf("fill: %d -> %d bytes in %.1f s (%.1f MB/s)\n", from, fi.Size(), d.Seconds(), float64(fi.Size()-from)/1e6/d.Seconds())
	return nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

func pct(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

func measure(configPath, label string) error {
	line := func(figure, format string, args ...any) {
		fmt.Printf("size=%s %-22s %s  load=%q\n", label, figure, fmt.Sprintf(format, args...), loadavg())
	}
	start := time.Now()
	sp, keys, path, err := openSpool(configPath)
	if err != nil {
		return err
	}
	line("open_inprocess", "%.3f s", time.Since(start).Seconds())
	defer keys.Close()
	fi, _ := os.Stat(path)
	pos, err := sp.Position()
	if err != nil {
		return err
	}
	line("spool", "file=%.2f GB head_seq=%d acked_seq=%d unacked=%d", float64(fi.Size())/1e9, pos.HeadSeq, pos.AckedSeq, pos.HeadSeq-pos.AckedSeq)
	ctx := context.Background()
	// Let the open batch seal and the start settle.
	if err := sp.Seal(ctx); err != nil {
		return err
	}

	// Uplink: what sender.fill does for the next unacked batch (Position, then Batches
	// from acked+1, stopping after the first), and a window of 16. Oldest first; also the
	// newest, to show the pick does not depend on where the batch is.
	enough := errors.New("enough")
	pick := func(from uint64, n int) (time.Duration, int, error) {
		t := time.Now()
		p, err := sp.Position()
		if err != nil {
			return 0, 0, err
		}
		_ = p
		got, bytes := 0, 0
		err = sp.Batches(from, func(b *ledger.Batch) error {
			got++
			bytes += len(b.Header) + len(b.Signature)
			for _, e := range b.Events {
				bytes += len(e)
			}
			if got >= n {
				return enough
			}
			return nil
		})
		if err != nil && !errors.Is(err, enough) {
			return 0, 0, err
		}
		return time.Since(t), bytes, nil
	}
	pos, _ = sp.Position()
	// The oldest and the newest full batch (the first and last ones may hold only a
	// start or seal event).
	full := func(seq uint64, step int) uint64 {
		for ; seq > pos.AckedSeq && seq <= pos.HeadSeq; seq = uint64(int(seq) + step) {
			n := 0
			sp.Batches(seq, func(b *ledger.Batch) error { n = len(b.Events); return enough })
			if n >= 100 {
				return seq
			}
		}
		return pos.AckedSeq + 1
	}
	oldest, newest := full(pos.AckedSeq+1, 1), full(pos.HeadSeq, -1)
	for _, c := range []struct {
		name string
		from uint64
		n    int
	}{{"uplink_oldest_1", oldest, 1}, {"uplink_oldest_16", oldest, 16}, {"uplink_newest_1", newest, 1}} {
		var ds []time.Duration
		var bytes int
		for range 21 {
			d, b, err := pick(c.from, c.n)
			if err != nil {
				return err
			}
			ds = append(ds, d)
			bytes = b
		}
		first := ds[0] // right after Open: as cold as the page cache was
		ds = ds[1:]
		line(c.name, "seq %d: first %.3f ms, then median %.3f ms p90 %.3f ms (%d KB read)", c.from, float64(first.Microseconds())/1000,
			float64(median(ds).Microseconds())/1000, float64(pct(ds, 0.9).Microseconds())/1000, bytes/1000)
	}

	// Commit: a fixed burst of 50 000 events from two appenders, all committed.
	const burst = 50000
	var rates []float64
	for r := range 3 {
		d, err := appendBurst(ctx, sp, 1e9+r*burst, burst)
		if err != nil {
			return err
		}
		rates = append(rates, burst/d.Seconds())
	}
	slices.Sort(rates)
	line("commit_burst", "%.0f events/s (%.1f us/event; runs %.0f %.0f %.0f)", rates[1], 1e6/rates[1], rates[0], rates[1], rates[2])

	// One event at a time, each waited for (an HL7 sender): the commit's latency.
	var lat []time.Duration
	for i := range 200 {
		t := time.Now()
		ch := make(chan error, 1)
		if err := sp.AppendUrgent(ctx, event(2e9+i), func(err error) { ch <- err }); err != nil {
			return err
		}
		if err := <-ch; err != nil {
			return err
		}
		lat = append(lat, time.Since(t))
	}
	line("commit_single", "p50 %.2f ms p99 %.2f ms", float64(pct(lat, 0.5).Microseconds())/1000, float64(pct(lat, 0.99).Microseconds())/1000)

	// Seal: a batch of 250 committed events (below max_bytes), then Seal (root, header, signature, the
	// commit that moves the head), waited for.
	if err := sp.Seal(ctx); err != nil {
		return err
	}
	var seals []time.Duration
	for r := range 15 {
		if _, err := appendBurst(ctx, sp, 3e9+r*1000, 250); err != nil {
			return err
		}
		t := time.Now()
		if err := sp.Seal(ctx); err != nil {
			return err
		}
		seals = append(seals, time.Since(t))
	}
	line("seal", "median %.2f ms p90 %.2f ms per 250-event batch", float64(median(seals).Microseconds())/1000, float64(pct(seals, 0.9).Microseconds())/1000)

	st := sp.Stats()
	line("stats", "used=%.2f GB file=%.2f GB head_seq=%d", float64(st.UsedBytes)/1e9, float64(st.FileBytes)/1e9, st.HeadSeq)
	t := time.Now()
	err = sp.Close()
	line("close", "%.3f s", time.Since(t).Seconds())
	return err
}

// readAll reads every sealed batch through a read-only Reader, as verify and export do,
// for profiling the read path alone.
func readAll(configPath, profile string) error {
	cfg, err := daemon.LoadConfig(configPath)
	if err != nil {
		return err
	}
	key, err := daemon.OpenDataKey(&cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	r, err := spool.OpenReaderWithKey(cfg.SpoolPath(), key)
	if err != nil {
		return err
	}
	defer r.Close()
	opened := time.Since(start)
	var batches, events, bytes int
	err = r.Batches(1, func(b *ledger.Batch) error {
		batches++
		events += len(b.Events)
		for _, e := range b.Events {
			bytes += len(e)
		}
		return nil
	})
	d := time.Since(start)
	fmt.Printf("read: open %.3f s, %d batches, %d events, %.1f MB of events in %.2f s: %.0f events/s, %.1f MB/s\n",
		opened.Seconds(), batches, events, float64(bytes)/1e6, d.Seconds(), float64(events)/d.Seconds(), float64(bytes)/1e6/d.Seconds())
	return err
}
