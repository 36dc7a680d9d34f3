package testpg_test

import (
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/edgeaudit/edgeaudit/internal/testpg"
)

func TestMain(m *testing.M) { os.Exit(testpg.Main(m)) }

func show(t *testing.T, dsn, setting string) string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var v string
	if err := conn.QueryRow(t.Context(), "SELECT current_setting($1)", setting).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestShared: the shared cluster hands out separate databases, reachable over the
// socket and over 127.0.0.1, with fsync off.
func TestShared(t *testing.T) {
	c := testpg.Shared(t)
	a, b := c.NewDatabase(t), c.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases with one DSN %q", a)
	}
	if got, want := show(t, a, "fsync"), "off"; got != want {
		t.Fatalf("fsync=%s, want %s", got, want)
	}
	conn, err := pgx.Connect(t.Context(), c.TCPDSN("postgres"))
	if err != nil {
		t.Fatalf("connect over 127.0.0.1: %v", err)
	}
	conn.Close(t.Context())
	if testpg.Shared(t) != c {
		t.Fatal("Shared started a second cluster")
	}
}

// TestStartFsync: a cluster of its own keeps fsync on when asked, and its folder is
// gone once stopped.
func TestStartFsync(t *testing.T) {
	c := testpg.Start(t, testpg.Options{Fsync: true})
	if got, want := show(t, c.DSN(), "fsync"), "on"; got != want {
		t.Fatalf("fsync=%s, want %s", got, want)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("cluster folder after stop: %v, want it removed", err)
	}
}
