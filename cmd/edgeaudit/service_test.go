package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/daemon"
)

// The unit install writes has every [Service] setting of the packaged unit, except
// those naming this install (integration's TestServiceUnitVerify compares what
// kardianos really renders).
func TestInstalledUnitMatchesPackaged(t *testing.T) {
	packaged, err := os.ReadFile("../../packaging/edgeaudit.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := systemdUnit(&serviceSettings{configPath: "/etc/edgeaudit/config.yaml", dataDir: "/var/lib/edgeaudit",
		stopTimeout: stopTimeoutFor(daemon.DefaultShutdownTimeout), tssGroup: true})
	have := map[string]bool{}
	for _, l := range strings.Split(unit, "\n") {
		have[strings.TrimSpace(l)] = true
	}
	// Dependencies (Wants=, After=) are kardianos' {{range}}; the integration test
	// checks them in the rendered unit.
	perInstall := []string{"ExecStart=", "User=", "Group=", "Description=", "Documentation=", "Wants=", "After="}
	for _, l := range strings.Split(string(packaged), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") || hasAnyPrefix(l, perInstall) {
			continue
		}
		if !have[l] {
			t.Errorf("the installed unit lacks %q of packaging/edgeaudit.service", l)
		}
	}
	if strings.Contains(unit, "@DATA_DIR@") || strings.Contains(unit, "@STOP_TIMEOUT@") || strings.Contains(unit, "@READ_WRITE@") || strings.Contains(unit, "@SUPPLEMENTARY@") {
		t.Errorf("a placeholder is left in the unit:\n%s", unit)
	}
	if u := systemdUnit(&serviceSettings{dataDir: "/srv/audit", stopTimeout: 20 * time.Second}); !strings.Contains(u, "ReadWritePaths=/srv/audit\n") ||
		!strings.Contains(u, "WorkingDirectory=/srv/audit\n") || !strings.Contains(u, "TimeoutStopSec=20s\n") || strings.Contains(u, "SupplementaryGroups") {
		t.Errorf("a data folder elsewhere, a longer stop and no tss group are not in the unit:\n%s", u)
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// The daemon's stop budget stays below the unit's stop timeout.
func TestStopTimeoutFor(t *testing.T) {
	for _, tt := range []struct {
		name     string
		shutdown time.Duration
		want     time.Duration
	}{
		{"default", daemon.DefaultShutdownTimeout, 15 * time.Second},
		{"short", time.Second, 15 * time.Second},
		{"long", 20 * time.Second, 27 * time.Second},
		{"fraction", 9500 * time.Millisecond, 17 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := stopTimeoutFor(tt.shutdown)
			if got != tt.want {
				t.Fatalf("stopTimeoutFor(%s)=%s, want %s", tt.shutdown, got, tt.want)
			}
			if got <= tt.shutdown {
				t.Fatalf("TimeoutStopSec %s is not above shutdown_timeout %s", got, tt.shutdown)
			}
		})
	}
}

// Start returns at once with the daemon running; Stop cancels it and returns its
// error; a daemon that overruns makes Stop give up after its timeout.
func TestProgramStartStop(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	running := make(chan struct{})
	p := &program{run: func(ctx context.Context) error {
		close(running)
		<-ctx.Done()
		return errors.New("stopped")
	}, timeout: time.Second, log: log}
	start := time.Now()
	if err := p.Start(nil); err != nil {
		t.Fatal(err)
	}
	<-running
	if err := p.Stop(nil); err == nil || err.Error() != "stopped" {
		t.Fatalf("Stop=%v, want the daemon's error", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("Start and Stop took %s", d)
	}

	stuck := &program{run: func(ctx context.Context) error { <-ctx.Done(); time.Sleep(time.Hour); return nil },
		timeout: 50 * time.Millisecond, log: log}
	stuck.Start(nil)
	start = time.Now()
	if err := stuck.Stop(nil); err == nil || !strings.Contains(err.Error(), "did not finish") {
		t.Fatalf("Stop of a stuck daemon=%v, want a timeout", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Stop of a stuck daemon took %s", d)
	}
}

// -system names only the service managers kardianos has.
func TestServiceSystemFlag(t *testing.T) {
	var ue *usageError
	if err := run(t.Context(), []string{"status", "-system", "nonesuch"}, func() {}); !errors.As(err, &ue) {
		t.Fatalf("status -system nonesuch: %v, want a usage error", err)
	}
}

// A daemon under the Windows SCM logs to DATA_DIR/edgeaudit.log, private, appended.
func TestServiceLogger(t *testing.T) {
	dir := t.TempDir() + "/data"
	for i := range 2 {
		l, closeLog, err := serviceLogger(dir, "info")
		if err != nil {
			t.Fatal(err)
		}
		l.Info("hello", "n", i)
		closeLog()
	}
	b, err := os.ReadFile(dir + "/edgeaudit.log")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Count(string(b), "msg=hello"), 2; got != want {
		t.Fatalf("%d lines, want %d:\n%s", got, want, b)
	}
	if fi, _ := os.Stat(dir + "/edgeaudit.log"); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}
