package spool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// bbolt reads its file through a memory map. On a damaged file its consistency check
// follows bad page pointers and key lengths into unmapped memory and faults (SIGSEGV,
// SIGBUS) in a goroutine of its own, where no recover or SetPanicOnFault can catch it.
// So the full page check runs in a child process: the same executable, started with
// checkEnv naming the file; the init below runs the check and exits before anything else
// of the program starts. A child that dies of a signal or a Go fatal error has found
// damage just as one that reports it.
const (
	checkEnv = "EDGEAUDIT_SPOOL_CHECK"
	// checkModeEnv=background: the child checks a snapshot while the parent writes (see
	// startBackgroundCheck).
	checkModeEnv = "EDGEAUDIT_SPOOL_CHECK_MODE"
	// A sound file's check is one pass over it; a damaged branch page can point back
	// up the tree and make bbolt's check loop forever. The child gets a base time plus
	// one second per 16 MiB (far slower than any disk), and one that has not finished
	// by then is taken as damage.
	checkPerByte = time.Second / (16 << 20)
	// Child exit codes.
	checkOK      = 0
	checkDamaged = 3
	checkIOError = 4
	checkLocked  = 5
)

// checkBase is a variable so that the loop test need not wait 20 s.
var checkBase = 20 * time.Second

func init() {
	if p := os.Getenv(checkEnv); p != "" {
		if os.Getenv(checkModeEnv) == "background" {
			os.Exit(childCheckBackground(p))
		}
		os.Exit(childCheck(p))
	}
}

// childCheck is the child's side: it prints the reason and returns the exit code.
func childCheck(path string) int {
	db, tx, _, code := openSnapshot(path)
	if db == nil {
		return code
	}
	defer db.Close()
	defer tx.Rollback()
	return checkPages(db, tx, path)
}

// openSnapshot is the children's start: the precheck, bbolt opened read-only and a read
// transaction. It returns the open file too (for the background child to unlock), or a
// nil db and the exit code, the reason printed.
func openSnapshot(path string) (*bolt.DB, *bolt.Tx, *os.File, int) {
	if _, err := precheck(path); err != nil {
		fmt.Println(err)
		if errors.Is(err, ErrDamaged) {
			return nil, nil, nil, checkDamaged
		}
		return nil, nil, nil, checkIOError
	}
	var file *os.File
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: DefaultOpenTimeout,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		}})
	if err != nil {
		fmt.Println(err)
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, nil, nil, checkLocked
		}
		if isDamage(err) {
			return nil, nil, nil, checkDamaged
		}
		return nil, nil, nil, checkIOError
	}
	tx, err := db.Begin(false)
	if err != nil {
		fmt.Println(err)
		db.Close()
		return nil, nil, nil, checkIOError
	}
	return db, tx, file, checkOK
}

// checkPages runs bbolt's full page check of tx and prints the first problems found.
func checkPages(db *bolt.DB, tx *bolt.Tx, path string) int {
	// tx.Check reads every page: with bbolt's random-access advice a cold check of an
	// 8 GB spool took 133 s, with read-ahead 53 s.
	if st, err := os.Stat(path); err == nil {
		readAhead(db, st.Size())
	}
	code, n := checkOK, 0
	for err := range tx.Check() {
		if n < 4 {
			fmt.Println(err)
		}
		n++
		code = checkDamaged
	}
	return code
}

// childCheckBackground is the child's side of startBackgroundCheck: it maps the file
// read-only, begins a read transaction (the snapshot it checks), prints that
// transaction's id, gives up its shared lock so that the parent can open the file for
// writing, and then checks the snapshot's pages while the parent writes new ones. The
// parent keeps a read transaction of the same snapshot open until this child exits,
// so bbolt never reuses a page the snapshot reaches.
func childCheckBackground(path string) int {
	db, tx, file, code := openSnapshot(path)
	if db == nil {
		return code
	}
	defer db.Close()
	defer tx.Rollback()
	if file == nil {
		fmt.Println("check spool: bbolt opened no file")
		return checkIOError
	}
	// The start reads the ends of every bucket (the chain's head and tail, the open
	// batch, the unsigned headers) and the writer appends at their right edge: walk
	// those paths here first, where a page tree that loops or faults kills this child
	// rather than hangs the daemon. Only then does the caller skip the check.
	stopWatch := watchLoop()
	err := tailWalk(tx, tailKeys())
	stopWatch()
	if err != nil {
		fmt.Println(err)
		return checkDamaged
	}
	if err := unlockFile(file); err != nil {
		fmt.Println(err)
		return checkIOError
	}
	fmt.Printf("%s%d\n", snapshotLine, tx.ID())
	if d, err := time.ParseDuration(os.Getenv(checkDelayEnv)); err == nil {
		time.Sleep(d)
	}
	return checkPages(db, tx, path)
}

// tailWalk reads the first and the last n keys of every top-level bucket.
func tailWalk(tx *bolt.Tx, n int) error {
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		c := b.Cursor()
		k, _ := c.Last()
		for i := 0; k != nil && i < n; i++ {
			k, _ = c.Prev()
		}
		k, _ = c.First()
		for i := 0; k != nil && i < 16; i++ {
			k, _ = c.Next()
		}
		return nil
	})
}

// tailKeysEnv passes how many keys from each bucket's end the start reads (twice the
// batch size and some): the open batch's events are the last ones.
const tailKeysEnv = "EDGEAUDIT_SPOOL_CHECK_TAIL"

func tailKeys() int {
	if n, err := strconv.Atoi(os.Getenv(tailKeysEnv)); err == nil && n > 0 {
		return n
	}
	return 4096
}

// watchLoop ends the process as damage when its heap passes loopHeapLimit or the walk
// takes longer than loopWalkLimit: bbolt's cursor grows its stack without bound on a
// branch page that points back up the tree. The returned func stops the watch.
func watchLoop() func() {
	stop := make(chan struct{})
	go func() {
		deadline := time.Now().Add(loopWalkLimit)
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 && sample[0].Value.Uint64() > loopHeapLimit || time.Now().After(deadline) {
				fmt.Println("spool file damaged: the page tree loops (a branch page points back up the tree)")
				os.Exit(checkDamaged)
			}
		}
	}()
	return func() { close(stop) }
}

const (
	loopHeapLimit = 256 << 20
	loopWalkLimit = 20 * time.Second
)

// checkDelayEnv delays the background child's page walk by checkDelay (tests only: a
// check still running when the spool closes).
const checkDelayEnv = "EDGEAUDIT_SPOOL_CHECK_DELAY"

var checkDelay time.Duration

// snapshotLine starts the background child's first line of output.
const snapshotLine = "snapshot txid "

// checkInChild runs bbolt's full page check of path in a child process (see above).
// It returns nil for a sound file, ErrDamaged for damage, and other errors for I/O
// trouble or a check that could not run.
func checkInChild(ctx context.Context, path string) error {
	cmd, ctx, cancel, limit, err := checkCommand(ctx, path)
	if err != nil {
		return err
	}
	defer cancel()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err = cmd.Run()
	return childResult(ctx, limit, err, firstLine(out.String()))
}

// checkCommand is the check child of path, not started, under a context bounded by the
// time a sound file's check may take (limit), with extra environment.
func checkCommand(parent context.Context, path string, env ...string) (*exec.Cmd, context.Context, context.CancelFunc, time.Duration, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, nil, 0, fmt.Errorf("check spool: %w", err)
	}
	limit := checkBase
	if fi, err := os.Stat(path); err == nil {
		limit += time.Duration(fi.Size()) * checkPerByte
	}
	ctx, cancel := context.WithTimeout(parent, limit)
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(append(os.Environ(), checkEnv+"="+path), env...)
	cmd.SysProcAttr = childAttr() // the child dies with us: a looping check must not outlive the daemon
	return cmd, ctx, cancel, limit, nil
}

// errCheckStopped: the background check was stopped (Close, or an Open that failed)
// before it ended. It says nothing of the file.
var errCheckStopped = errors.New("the page check was stopped before it ended")

// childResult maps a finished check child (run's error, the first line it printed) to
// nil, ErrDamaged, ErrLocked, errCheckStopped or another error.
func childResult(ctx context.Context, limit time.Duration, err error, msg string) error {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.Is(ctx.Err(), context.Canceled):
		return errCheckStopped
	case ctx.Err() != nil:
		return fmt.Errorf("%w: the page check did not finish within %s (a loop in the page tree)", ErrDamaged, limit)
	case !errors.As(err, &ee):
		return fmt.Errorf("check spool: %w", err)
	case ee.ExitCode() == checkDamaged:
		return fmt.Errorf("%w: %s", ErrDamaged, msg)
	case ee.ExitCode() == checkLocked:
		return ErrLocked
	case ee.ExitCode() == checkIOError:
		return fmt.Errorf("check spool: %s", msg)
	}
	// Killed by a signal, or a Go fatal error (exit 2): bbolt faulted on the file.
	return fmt.Errorf("%w: the page check died (%v): %s", ErrDamaged, ee.ProcessState, msg)
}

// errNoSnapshot: the background child took no snapshot in time; the caller checks in
// the foreground instead.
var errNoSnapshot = errors.New("the background page check took no snapshot in time")

// snapshotWait bounds how long startBackgroundCheck waits for the child's snapshot:
// mapping the file and walking the ends of its buckets (tailWalk). A variable for tests.
var snapshotWait = 30 * time.Second

// bgCheck is a page check running in a child process on a snapshot of the file while
// this process writes to it (startBackgroundCheck).
type bgCheck struct {
	txid   uint64     // the snapshot: the transaction the child reads
	cancel func()     // stops the child
	result chan error // the check's outcome (childResult), once the child has exited
}

// startBackgroundCheck starts the full page check of path in a child process that
// takes a snapshot (a read transaction) and then releases its lock on the file, so that
// the caller can open it for writing and start at once; the caller must hold a read
// transaction of the same snapshot (txid) until the result arrives, so that bbolt
// reuses no page the child still reads. When the child ends before it has a snapshot
// (a damaged meta page, the file locked), that outcome is returned as the error, as
// checkInChild would return it.
func startBackgroundCheck(path string, tail int) (*bgCheck, error) {
	env := []string{checkModeEnv + "=background", tailKeysEnv + "=" + strconv.Itoa(tail)}
	if checkDelay > 0 {
		env = append(env, checkDelayEnv+"="+checkDelay.String())
	}
	cmd, ctx, cancel, limit, err := checkCommand(context.Background(), path, env...)
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("check spool: %w", err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("check spool: %w", err)
	}
	br := bufio.NewReader(stdout)
	first := make(chan string, 1)
	go func() {
		line, _ := br.ReadString('\n')
		first <- line
	}()
	var line string
	timedOut := false
	select {
	case line = <-first:
	case <-time.After(snapshotWait):
		timedOut = true
		cancel()
		line = <-first
	}
	// finish waits for the child's end and maps it, with verdict (its first line when it
	// took no snapshot) ahead of the rest of what it printed.
	finish := func(verdict string) error {
		rest, _ := io.ReadAll(br)
		err := cmd.Wait()
		defer cancel() // after childResult: a cancel of ours means stopped, not a loop
		msg := firstLine(verdict + string(rest))
		if msg == "" {
			msg = firstLine(stderr.String())
		}
		return childResult(ctx, limit, err, msg)
	}
	txid, perr := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, snapshotLine)), 10, 64)
	if !strings.HasPrefix(line, snapshotLine) || perr != nil {
		err := finish(line)
		switch {
		case timedOut:
			return nil, errNoSnapshot
		case err == nil:
			return nil, fmt.Errorf("check spool: the background check ended without a snapshot: %s", firstLine(line))
		}
		return nil, err
	}
	bg := &bgCheck{txid: txid, cancel: cancel, result: make(chan error, 1)}
	go func() { bg.result <- finish("") }()
	return bg, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}
