// Package testpg runs throwaway PostgreSQL clusters for tests: initdb and pg_ctl of
// Debian's postgresql 15 in a temp folder, a unix socket in that folder and a free
// 127.0.0.1 port, a fresh database per test. Tests only.
package testpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the cluster's superuser (initdb -U). Authentication is "trust": every
// role may log in without a password, which is what a throwaway cluster on a private
// socket needs.
const Superuser = "edgeaudit"

// Options configure a cluster.
type Options struct {
	// Fsync keeps fsync on (PostgreSQL's default). Off by default: tests do not need
	// durability across a power cut, and fsync=off makes them faster. A benchmark that
	// claims durability sets it.
	Fsync bool
}

// Cluster is one running PostgreSQL cluster.
type Cluster struct {
	Dir  string // the cluster's folder; the unix socket is in it
	Port int    // 127.0.0.1 port (also the socket's number)

	bin     string
	data    string
	runAs   string // "postgres" when the tests run as root, "" otherwise
	dbs     atomic.Int64
	stopped atomic.Bool
}

// Binaries returns the folder of initdb, pg_ctl and postgres. When they are missing the
// test fails under CI=true and is skipped otherwise.
func Binaries(t testing.TB) string {
	t.Helper()
	dir, err := findBinaries()
	if err == nil {
		return dir
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%v (CI=true: a missing peer is a failure; apt-get install postgresql)", err)
	}
	t.Skipf("%v; apt-get install postgresql to run this test", err)
	return ""
}

func findBinaries() (string, error) {
	dirs := []string{"/usr/lib/postgresql/15/bin"}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		dirs = append([]string{filepath.Dir(p)}, dirs...)
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("postgresql not found (no initdb in /usr/lib/postgresql/15/bin or on PATH)")
}

// Start runs a cluster of its own for t, stopped (pg_ctl -m fast stop) and removed when
// t ends. Prefer Shared with a database per test: initdb takes about a second.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	bin := Binaries(t)
	c, err := start(bin, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop postgres: %v", err)
		}
	})
	return c
}

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared returns the test binary's one cluster (fsync off), started at the first call.
// The package's TestMain must call Main so that the cluster stops when the tests end.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	bin := Binaries(t)
	shared.once.Do(func() { shared.c, shared.err = start(bin, Options{}) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.c
}

// Main runs the tests and then stops the shared cluster, if one was started; TestMain
// passes its result to os.Exit.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testpg: stop the shared cluster: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

func start(bin string, o Options) (*Cluster, error) {
	// Not t.TempDir: its parents are 0700 and owned by the test's user, so the postgres
	// user could not reach a folder below them, and the shared cluster outlives any one
	// test.
	dir, err := os.MkdirTemp("", "testpg-")
	if err != nil {
		return nil, fmt.Errorf("testpg: %w", err)
	}
	c := &Cluster{Dir: dir, bin: bin, data: filepath.Join(dir, "data")}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testpg: running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testpg: %w", err)
		}
		c.runAs = "postgres"
	}
	if out, err := c.command("initdb", "-D", c.data, "-A", "trust", "-U", Superuser, "-E", "UTF8", "--locale", "C.UTF-8", "--no-sync").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testpg: initdb: %v\n%s", err, out)
	}
	fsync := "off"
	if o.Fsync {
		fsync = "on"
	}
	// A port that was free a moment ago may be taken by the time postgres binds it
	// (other tests run at once): try a few.
	var out []byte
	for range 5 {
		c.Port, err = freePort()
		if err != nil {
			break
		}
		opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=%s -c max_connections=200 -c shared_buffers=64MB", c.Port, dir, fsync)
		if !o.Fsync {
			opts += " -c full_page_writes=off"
		}
		out, err = c.command("pg_ctl", "-D", c.data, "-w", "-t", "60", "-l", filepath.Join(dir, "postgres.log"), "-o", opts, "start").CombinedOutput()
		if err == nil {
			return c, nil
		}
	}
	log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
	os.RemoveAll(dir)
	return nil, fmt.Errorf("testpg: pg_ctl start: %v\n%s\n%s", err, out, log)
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	p := filepath.Join(c.bin, name)
	if c.runAs != "" {
		return exec.Command("runuser", append([]string{"-u", c.runAs, "--", p}, args...)...)
	}
	return exec.Command(p, args...)
}

// Stop stops the cluster (pg_ctl -m fast stop) and removes its folder. Stopping twice
// is fine.
func (c *Cluster) Stop() error {
	if c.stopped.Swap(true) {
		return nil
	}
	out, err := c.command("pg_ctl", "-D", c.data, "-m", "fast", "-w", "-t", "60", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return os.RemoveAll(c.Dir)
}

// DSN is the superuser's connection string for the database "postgres", over the unix
// socket.
func (c *Cluster) DSN() string { return c.DSNFor("postgres") }

// DSNFor is the superuser's connection string for database db.
func (c *Cluster) DSNFor(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", c.Dir, c.Port, Superuser, db)
}

// TCPDSN is the superuser's connection string for db over 127.0.0.1.
func (c *Cluster) TCPDSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", c.Port, Superuser, db)
}

// NewDatabase creates an empty database for t and returns its DSN. It is dropped when
// t ends (WITH FORCE: connections left open do not keep it).
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.dbs.Add(1))
	if err := c.exec(fmt.Sprintf("CREATE DATABASE %s", name)); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		if c.stopped.Load() {
			return
		}
		if err := c.exec(fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return c.DSNFor(name)
}

func (c *Cluster) exec(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Fields(sql)[0], err)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("testpg: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
