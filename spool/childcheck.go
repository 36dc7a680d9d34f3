package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
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
		os.Exit(childCheck(p))
	}
}

// childCheck is the child's side: it prints the reason and returns the exit code.
func childCheck(path string) int {
	if _, err := precheck(path); err != nil {
		fmt.Println(err)
		if errors.Is(err, ErrDamaged) {
			return checkDamaged
		}
		return checkIOError
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: DefaultOpenTimeout})
	if err != nil {
		fmt.Println(err)
		if errors.Is(err, berrors.ErrTimeout) {
			return checkLocked
		}
		if isDamage(err) {
			return checkDamaged
		}
		return checkIOError
	}
	defer db.Close()
	// tx.Check reads every page: with bbolt's random-access advice a cold check of an
	// 8 GB spool took 133 s, with read-ahead 53 s.
	if st, err := os.Stat(path); err == nil {
		readAhead(db, st.Size())
	}
	code := checkOK
	db.View(func(tx *bolt.Tx) error {
		n := 0
		for err := range tx.Check() {
			if n < 4 {
				fmt.Println(err)
			}
			n++
			code = checkDamaged
		}
		return nil
	})
	return code
}

// checkInChild runs bbolt's full page check of path in a child process (see above).
// It returns nil for a sound file, ErrDamaged for damage, and other errors for I/O
// trouble or a check that could not run.
func checkInChild(ctx context.Context, path string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("check spool: %w", err)
	}
	limit := checkBase
	if fi, err := os.Stat(path); err == nil {
		limit += time.Duration(fi.Size()) * checkPerByte
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), checkEnv+"="+path)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = childAttr() // the child dies with us: a looping check must not outlive the daemon
	err = cmd.Run()
	msg := firstLine(out.String())
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
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
