//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeaudit/edgeaudit/internal/filelock"
)

// The service and the packages under a real systemd: systemd-nspawn boots a Debian
// bookworm root (debootstrap --variant=minbase plus systemd), and the test drives it
// with nsenter, as docs/operations.md and ../shared/notes/real-peers.md §4 describe.
// The root is built once per machine and cached; each test boots it with
// --volatile=overlay, so whatever the test installs vanishes with the container.

const (
	// nspawnRootKey names the cached root; change it when the root's recipe changes.
	nspawnRootKey = "bookworm-minbase-systemd-v1"
	nspawnMirror  = "http://deb.debian.org/debian"
	bootTimeout   = 60 * time.Second
	nsCmdTimeout  = 60 * time.Second
)

// nspawnCacheDir is where the root is kept ($EDGEAUDIT_PKGCACHE as scripts/test.sh
// sets it, else /var/cache/edgeaudit-test).
func nspawnCacheDir() string {
	base := os.Getenv("EDGEAUDIT_PKGCACHE")
	if base == "" {
		base = "/var/cache/edgeaudit-test"
	}
	return filepath.Join(base, "nspawn-root")
}

// nspawnRoot returns the cached root, building it first when it is missing (about
// 50 s and 240 MB; a lock keeps two test processes from building it at once).
func nspawnRoot(t testing.TB) string {
	t.Helper()
	requireRoot(t)
	debootstrap := peer(t, "debootstrap", "")
	dir := nspawnCacheDir()
	root := filepath.Join(dir, nspawnRootKey)
	if _, err := os.Stat(filepath.Join(root, "lib", "systemd", "systemd")); err == nil {
		return root
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		ok, err := filelock.TryLock(lf)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("another process holds %s/.lock for 10 minutes", dir)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(root, "lib", "systemd", "systemd")); err == nil {
		return root // built by the holder of the lock
	}
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, debootstrap, "--variant=minbase", "--include=systemd,systemd-sysv,dbus",
		"bookworm", tmp, nspawnMirror).CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("debootstrap: %v\n%s", err, tail(out, 30))
	}
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the nspawn root %s in %s", root, time.Since(start).Round(time.Second))
	return root
}

func tail(b []byte, lines int) []byte {
	l := bytes.Split(b, []byte("\n"))
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return bytes.Join(l, []byte("\n"))
}

// container is a booted systemd-nspawn container.
type container struct {
	t      testing.TB
	cmd    *exec.Cmd
	leader int // the container's PID 1 (systemd), as the host sees it
	log    string
}

// bootContainer boots root with share bound read-only at /mnt/share, and stops it
// (poweroff by SIGTERM, SIGKILL after 15 s) when the test ends.
func bootContainer(t testing.TB, root, share string) *container {
	t.Helper()
	nspawn := peer(t, "systemd-nspawn", "")
	peer(t, "nsenter", "")
	logPath := filepath.Join(t.TempDir(), "nspawn.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("edgeaudit-test-%d", os.Getpid())
	cmd := exec.Command(nspawn, "-D", root, "--volatile=overlay", "--boot", "--register=no", "--keep-unit",
		"--console=passive", "--private-network", "--bind-ro="+share+":/mnt/share", "-M", name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // nspawn powers the container off
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	c := &container{t: t, cmd: cmd, log: logPath}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(bootTimeout)
	for c.leader == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no systemd under nspawn (pid %d) after %s\n%s", cmd.Process.Pid, bootTimeout, c.logText())
		}
		select {
		case <-exited:
			t.Fatalf("systemd-nspawn exited\n%s", c.logText())
		case <-time.After(50 * time.Millisecond):
		}
		c.leader = childNamed(cmd.Process.Pid, "systemd")
	}
	for {
		out, _ := c.exec("systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container not up after %s: is-system-running=%q\n%s", bootTimeout, state, c.logText())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

func (c *container) logText() string {
	b, _ := os.ReadFile(c.log)
	return string(tail(b, 40))
}

// childNamed is the pid of ppid's child whose comm is name, or 0.
func childNamed(ppid int, name string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) > 1 && s[open+1:close] == name && f[1] == strconv.Itoa(ppid) {
			return pid
		}
	}
	return 0
}

// exec runs argv inside the container (every namespace of its PID 1) and returns its
// combined output and exit code (-1 when it could not run or timed out).
func (c *container) exec(argv ...string) (string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), nsCmdTimeout)
	defer cancel()
	args := append([]string{"-t", strconv.Itoa(c.leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee) && ctx.Err() == nil:
		return string(out), ee.ExitCode()
	default:
		return string(out) + err.Error(), -1
	}
}

// sh runs a shell command inside and fails the test unless it exits with want.
func (c *container) sh(want int, script string) string {
	c.t.Helper()
	start := time.Now()
	out, code := c.exec("sh", "-c", script)
	if code != want {
		c.t.Fatalf("in the container: %s\nexit %d, want %d\n%s", script, code, want, out)
	}
	c.t.Logf("%s (%s): exit %d\n%s", script, time.Since(start).Round(time.Millisecond), code, strings.TrimRight(out, "\n"))
	return out
}

// waitActive waits until the unit is active and the daemon's health answers.
func (c *container) waitHealthy() string {
	c.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		out, code := c.exec("edgeaudit", "health", "-config", "/etc/edgeaudit/config.yaml")
		if code == 0 {
			return out
		}
		if time.Now().After(deadline) {
			status, _ := c.exec("sh", "-c", "systemctl status edgeaudit --no-pager; journalctl -u edgeaudit --no-pager | tail -30")
			c.t.Fatalf("edgeaudit health not 0 after %s: exit %d\n%s\n%s", startTimeout, code, out, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPackageCycle runs, inside a real systemd: the service commands (install -user,
// start, status, health, stop, status, uninstall) of the release binary, then the
// .deb: dpkg -i starts the service and health is green, an edited conffile survives
// an upgrade to a newer version, dpkg -r keeps the conffile and /var/lib/edgeaudit,
// dpkg -P removes both.
func TestPackageCycle(t *testing.T) {
	root := nspawnRoot(t)
	v1 := defaultRelease(t)
	v2 := releaseBuild(t, "0.1.1", "0.1.1", nil, "linux/amd64")
	share := t.TempDir()
	for _, f := range []string{v1.bin(), v1.deb(), v2.deb()} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(share, filepath.Base(f)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	c := bootContainer(t, root, share)
	t.Logf("container booted in %s", time.Since(start).Round(time.Millisecond))

	t.Run("service", func(t *testing.T) {
		c.t = t
		c.sh(0, "install -m 0755 /mnt/share/edgeaudit_linux_amd64 /usr/local/bin/edgeaudit && useradd --system --no-create-home --shell /usr/sbin/nologin edgeaudit && mkdir -p /etc/edgeaudit && "+
			`printf 'site: nspawn\ndata_dir: /var/lib/edgeaudit\nsyslog: {udp: "0.0.0.0:514", tcp: "0.0.0.0:514"}\nadmin: "127.0.0.1:9780"\n' >/etc/edgeaudit/config.yaml`)
		c.sh(4, "edgeaudit status")
		out := c.sh(0, "edgeaudit install -user edgeaudit -config /etc/edgeaudit/config.yaml")
		if !strings.Contains(out, "linux-systemd") {
			t.Errorf("install chose another service manager than systemd: %s", out)
		}
		c.sh(0, "systemd-analyze verify --man=no /etc/systemd/system/edgeaudit.service")
		if out := c.sh(3, "edgeaudit status"); !strings.Contains(out, ": stopped") {
			t.Errorf("status after install: %q, want stopped", out)
		}
		t0 := time.Now()
		c.sh(0, "edgeaudit start")
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("start took %s", d)
		}
		if out := c.sh(0, "edgeaudit status"); !strings.Contains(out, ": running") {
			t.Errorf("status after start: %q, want running", out)
		}
		c.waitHealthy()
		c.sh(0, "test \"$(stat -c %U /var/lib/edgeaudit)\" = edgeaudit && test \"$(stat -c %U /proc/$(systemctl show -p MainPID --value edgeaudit))\" = edgeaudit")
		t0 = time.Now()
		c.sh(0, "edgeaudit stop")
		if d := time.Since(t0); d > 10*time.Second {
			t.Errorf("stop took %s (shutdown_timeout is 8s)", d)
		}
		if out := c.sh(3, "edgeaudit status"); !strings.Contains(out, ": stopped") {
			t.Errorf("status after stop: %q, want stopped", out)
		}
		c.sh(0, "edgeaudit uninstall")
		c.sh(4, "edgeaudit status")
		c.sh(0, "test ! -e /etc/systemd/system/edgeaudit.service && test ! -e /etc/systemd/system/multi-user.target.wants/edgeaudit.service && test -d /var/lib/edgeaudit/keys")
		c.sh(0, "rm -rf /usr/local/bin/edgeaudit /etc/edgeaudit /var/lib/edgeaudit && userdel edgeaudit")
	})
	if t.Failed() {
		return
	}

	t.Run("deb", func(t *testing.T) {
		c.t = t
		deb1, deb2 := "/mnt/share/"+filepath.Base(v1.deb()), "/mnt/share/"+filepath.Base(v2.deb())
		c.sh(0, "dpkg -i "+deb1)
		c.sh(0, "systemctl is-active edgeaudit && systemctl is-enabled edgeaudit")
		c.sh(0, "systemd-analyze verify --man=no /lib/systemd/system/edgeaudit.service")
		// The hardening as systemd scores it: 1.8 ("OK") when written; fail above 2.5.
		c.sh(0, "systemd-analyze security --no-pager --threshold=25 edgeaudit.service >/tmp/security; rc=$?; tail -1 /tmp/security; exit $rc")
		health := c.waitHealthy()
		if !strings.Contains(health, "edgeaudit 0.1.0") {
			t.Errorf("health names another version:\n%s", health)
		}
		c.sh(0, "edgeaudit version | grep -q 'fips 140-3: on; module v1.0.0'")
		c.sh(0, "id -nG edgeaudit | grep -qw edgeaudit && getent group tss && test \"$(stat -c %U:%a /var/lib/edgeaudit)\" = edgeaudit:700")
		// The unit's capability is what lets the daemon bind port 514 as a user.
		c.sh(0, "grep -q ':0202 ' /proc/net/udp /proc/net/udp6 && grep -q ':0202 ' /proc/net/tcp /proc/net/tcp6")

		c.sh(0, "sed -i 's/^site: unnamed-site/site: edited-site/' /etc/edgeaudit/config.yaml")
		c.sh(0, "dpkg -i "+deb2)
		c.sh(0, "grep -q '^site: edited-site' /etc/edgeaudit/config.yaml && test ! -e /etc/edgeaudit/config.yaml.dpkg-dist")
		c.sh(0, "systemctl is-active edgeaudit")
		health = c.waitHealthy()
		if !strings.Contains(health, "edgeaudit 0.1.1") || !strings.Contains(health, "edited-site") {
			t.Errorf("after the upgrade health should name 0.1.1 and edited-site:\n%s", health)
		}

		c.sh(0, "dpkg -r edgeaudit")
		c.sh(0, "! systemctl is-active edgeaudit")
		c.sh(0, "test -f /etc/edgeaudit/config.yaml && grep -q '^site: edited-site' /etc/edgeaudit/config.yaml && test -f /var/lib/edgeaudit/spool.db && test ! -e /usr/bin/edgeaudit")
		c.sh(0, "dpkg-query -W -f='${Status}' edgeaudit | grep -q 'deinstall ok config-files'")
		c.sh(0, "dpkg -P edgeaudit")
		c.sh(0, "test ! -e /etc/edgeaudit && test ! -e /var/lib/edgeaudit && ! dpkg-query -W edgeaudit 2>/dev/null")
	})
	t.Logf("nspawn cycle (boot, service commands, dpkg install, upgrade, remove, purge) in %s", time.Since(start).Round(100*time.Millisecond))
}

// TestServiceSysV: where systemd is not PID 1 (this machine kind), kardianos chooses
// SysV init scripts. The whole cycle runs in a private mount namespace with tmpfs over
// /etc/init.d, /etc/rc?.d, /run and /var/log, so the host's init scripts are neither
// seen nor touched. It checks the two kardianos bugs edgeaudit works around: status
// after stop says stopped (not an "exit status 1" error), and uninstall leaves no
// dangling /etc/rc?.d links.
func TestServiceSysV(t *testing.T) {
	requireRoot(t)
	unshare := peer(t, "unshare", "")
	peer(t, "service", "")
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		t.Skip("systemd runs here: kardianos chooses systemd, not SysV")
	}
	dir := t.TempDir()
	admin := freeAddr(t, "tcp")
	cfgPath := filepath.Join(dir, "config.yaml")
	cfg := fmt.Sprintf("site: sysv\ndata_dir: %s\nsyslog: {udp: %q}\nadmin: %q\n", filepath.Join(dir, "data"), freeAddr(t, "udp"), admin)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`set -u
mount --make-rprivate /
for d in /etc/init.d /etc/rc0.d /etc/rc1.d /etc/rc2.d /etc/rc3.d /etc/rc4.d /etc/rc5.d /etc/rc6.d /run /var/log; do
	mount -t tmpfs tmpfs $d || exit 99
done
trap '[ -f /var/run/edgeaudit.pid ] && kill -9 "$(cat /var/run/edgeaudit.pid)" 2>/dev/null' EXIT
E=%[1]s
step() { echo "== $*"; "$@"; echo "rc=$?"; }
step $E status
step $E install -config %[2]s
step $E status
step $E start
i=0; until $E health -config %[2]s >/dev/null 2>&1 || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
step $E health -config %[2]s
step $E status
step $E stop
step $E status
step $E uninstall
step $E status
echo "== links"; ls /etc/rc?.d/ /etc/init.d/
`, binPath, cfgPath)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, unshare, "-m", "sh", "-c", script).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("unshare: %v", err)
	}
	// Each step's output then its exit code, in order.
	want := []struct {
		step, says string
		rc         int
	}{
		{"status", "not installed", 4},
		{"install", "unix-systemv", 0},
		{"status", ": stopped", 3},
		{"start", "started", 0},
		{"health", "OK", 0},
		{"status", ": running", 0},
		{"stop", "stopped", 0},
		{"status", ": stopped", 3},
		{"uninstall", "uninstalled", 0},
		{"status", "not installed", 4},
	}
	steps := splitSteps(string(out))
	if len(steps) < len(want) {
		t.Fatalf("%d steps ran, want %d", len(steps), len(want))
	}
	for i, w := range want {
		s := steps[i]
		if !strings.Contains(s.name, w.step) || !strings.Contains(s.out, w.says) || s.rc != w.rc {
			t.Errorf("step %d %s: rc %d %q, want rc %d and %q", i, s.name, s.rc, s.out, w.rc, w.says)
		}
	}
	if links := out[bytes.LastIndex(out, []byte("== links")):]; bytes.Contains(links, []byte("edgeaudit")) {
		t.Errorf("uninstall left init script or rc?.d links:\n%s", links)
	}
}

type stepResult struct {
	name, out string
	rc        int
}

// splitSteps parses "== cmd\n...output...\nrc=N" blocks.
func splitSteps(out string) []stepResult {
	var steps []stepResult
	var cur *stepResult
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "== "):
			steps = append(steps, stepResult{name: line[3:]})
			cur = &steps[len(steps)-1]
		case cur != nil && strings.HasPrefix(line, "rc="):
			cur.rc, _ = strconv.Atoi(line[3:])
			cur = nil
		case cur != nil:
			cur.out += line + "\n"
		}
	}
	return steps
}

// TestPackageWithoutSystemd: the .deb installs, upgrades, removes and purges where
// systemd is not running (an image build, a container, CI): the root runs under
// systemd-nspawn without --boot, so PID 1 is the shell and /run/systemd/system is
// absent. The unit is enabled for the next boot, nothing is started, nothing fails.
func TestPackageWithoutSystemd(t *testing.T) {
	root := nspawnRoot(t)
	nspawn := peer(t, "systemd-nspawn", "")
	v1 := defaultRelease(t)
	v2 := releaseBuild(t, "0.1.1", "0.1.1", nil, "linux/amd64")
	share := t.TempDir()
	for _, f := range []string{v1.deb(), v2.deb()} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(share, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf(`set -ex
test ! -d /run/systemd/system
dpkg -i /mnt/share/%s
getent passwd edgeaudit
test -L /etc/systemd/system/multi-user.target.wants/edgeaudit.service
edgeaudit config -check /etc/edgeaudit/config.yaml
dpkg -i /mnt/share/%s
dpkg -r edgeaudit
test -f /etc/edgeaudit/config.yaml
dpkg -P edgeaudit
test ! -e /etc/edgeaudit
test ! -e /etc/systemd/system/multi-user.target.wants/edgeaudit.service
echo all-ok
`, filepath.Base(v1.deb()), filepath.Base(v2.deb()))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, nspawn, "-D", root, "--volatile=overlay", "--register=no", "--keep-unit", "--private-network",
		"--bind-ro="+share+":/mnt/share", "-M", fmt.Sprintf("edgeaudit-nosd-%d", os.Getpid()), "--quiet", "sh", "-c", script)
	out, err := cmd.CombinedOutput()
	t.Logf("%s (%s)", out, time.Since(start).Round(time.Millisecond))
	if err != nil || !bytes.Contains(out, []byte("all-ok")) {
		t.Fatalf("dpkg without a running systemd: %v", err)
	}
}

// TestPackageRPM: the .rpm holds the binary, the unit in /usr/lib/systemd/system and
// the config as %config(noreplace), with scriptlets that parse. (No rpm-based system
// boots here; the scriptlets' systemd calls are those of the .deb's fallback.)
func TestPackageRPM(t *testing.T) {
	rpm := peer(t, "rpm", "")
	r := defaultRelease(t)
	pkg := filepath.Join(r.dir, "edgeaudit-"+r.version+"-1.x86_64.rpm")
	list, err := exec.Command(rpm, "-qpl", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("rpm -qpl: %v\n%s", err, list)
	}
	for _, want := range []string{"/usr/bin/edgeaudit", "/usr/lib/systemd/system/edgeaudit.service", "/etc/edgeaudit/config.yaml",
		"/usr/share/doc/edgeaudit/copyright", "/usr/share/man/man8/edgeaudit.8.gz"} {
		if !bytes.Contains(list, []byte(want+"\n")) {
			t.Errorf("the .rpm lacks %s:\n%s", want, list)
		}
	}
	conf, err := exec.Command(rpm, "-qp", "--configfiles", pkg).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(conf)), "/etc/edgeaudit/config.yaml"; got != want {
		t.Errorf("config files=%q, want %q", got, want)
	}
	flags, err := exec.Command(rpm, "-qp", "--queryformat", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", pkg).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(flags, []byte("/etc/edgeaudit/config.yaml cn")) {
		t.Errorf("config.yaml is not %%config(noreplace):\n%s", flags)
	}
	for _, s := range []string{"rpm-post", "rpm-preun", "rpm-postun"} {
		if out, err := exec.Command("sh", "-n", filepath.Join(repoRoot(t), "packaging", "scripts", s)).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", s, err, out)
		}
	}
}
