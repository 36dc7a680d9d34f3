package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The release build (scripts/build.sh), its packages, and the checks that need no
// running systemd: reproducibility, cross-builds, lintian, systemd-analyze verify.
// The nspawn cycle of the packages is in package_test.go.

const buildTimeout = 10 * time.Minute

// repoRoot is the repository (the parent of this package's folder).
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// release is one run of scripts/build.sh.
type release struct {
	dir     string
	version string
}

func (r release) bin() string { return filepath.Join(r.dir, "edgeaudit_linux_amd64") }
func (r release) deb() string {
	return filepath.Join(r.dir, "edgeaudit_"+r.version+"-1_amd64.deb")
}

var (
	releaseMu    sync.Mutex
	releases     = map[string]release{}
	releasesRoot string
)

// cleanupReleases removes the release builds at the end of the package (TestMain).
func cleanupReleases() {
	if releasesRoot != "" {
		os.RemoveAll(releasesRoot)
	}
}

// releaseBuild runs scripts/build.sh once per key (VERSION, targets, GOCACHE) for the
// whole package and returns its output folder.
func releaseBuild(t testing.TB, key, version string, env []string, targets ...string) release {
	t.Helper()
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("the release build is checked on linux/amd64 (this is %s/%s)", runtime.GOOS, runtime.GOARCH)
	}
	for _, tool := range []string{"git", "gzip"} {
		if _, err := exec.LookPath(tool); err != nil {
			missingPeer(t, "%s not found: scripts/build.sh needs it", tool)
		}
	}
	releaseMu.Lock()
	defer releaseMu.Unlock()
	if r, ok := releases[key]; ok {
		return r
	}
	if releasesRoot == "" {
		d, err := os.MkdirTemp("", "edgeaudit-release-")
		if err != nil {
			t.Fatal(err)
		}
		releasesRoot = d
	}
	r := release{dir: filepath.Join(releasesRoot, key), version: version}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(t), "scripts", "build.sh"), targets...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), append(env, "OUT="+r.dir, "VERSION="+version)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/build.sh %s: %v\n%s", strings.Join(targets, " "), err, out)
	}
	t.Logf("scripts/build.sh %s (VERSION=%s %s): %s", strings.Join(targets, " "), version, strings.Join(env, " "), time.Since(start).Round(100*time.Millisecond))
	releases[key] = r
	return r
}

// defaultRelease is the release build of every target at version 0.1.0.
func defaultRelease(t testing.TB) release {
	return releaseBuild(t, "0.1.0", "0.1.0", nil, releaseTargets...)
}

var releaseTargets = []string{"linux/amd64", "linux/arm64", "windows/amd64"}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestBuildReproducible: two release builds of the same commit give byte-identical
// binaries and packages. The second linux/amd64 build starts from an empty build cache,
// so that binary is compiled twice rather than taken from the cache (about two
// minutes on a busy 2-core machine); the other targets are built again with the cache,
// which still repeats everything scripts/build.sh itself adds (ldflags, the man page,
// the changelog, the packages' timestamps).
func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a second release build, one target with an empty build cache")
	}
	a := defaultRelease(t)
	cold := releaseBuild(t, "repro-cold", "0.1.0", []string{"GOCACHE=" + t.TempDir()}, "linux/amd64")
	warm := releaseBuild(t, "repro-warm", "0.1.0", nil, "linux/arm64", "windows/amd64")
	for _, c := range []struct {
		b     release
		files []string
	}{
		{cold, []string{"edgeaudit_linux_amd64", "edgeaudit_0.1.0-1_amd64.deb", "edgeaudit-0.1.0-1.x86_64.rpm"}},
		{warm, []string{"edgeaudit_linux_arm64", "edgeaudit_windows_amd64.exe", "edgeaudit_0.1.0-1_arm64.deb", "edgeaudit-0.1.0-1.aarch64.rpm"}},
	} {
		for _, f := range c.files {
			ha, hb := sha256File(t, filepath.Join(a.dir, f)), sha256File(t, filepath.Join(c.b.dir, f))
			if ha != hb {
				t.Errorf("%s differs between two builds: %s vs %s", f, ha, hb)
				continue
			}
			t.Logf("%s sha256 %s (both builds)", f, ha)
		}
	}
}

// TestBuildVersion: the release binary says what it is, in FIPS mode by default.
func TestBuildVersion(t *testing.T) {
	r := defaultRelease(t)
	out, err := exec.Command(r.bin(), "version", "-json").Output()
	if err != nil {
		t.Fatalf("version -json: %v", err)
	}
	var v struct {
		Version   string `json:"version"`
		Commit    string `json:"commit"`
		BuildTime string `json:"build_time"`
		GoVersion string `json:"go_version"`
		Platform  string `json:"platform"`
		FIPS      struct {
			Enabled bool   `json:"enabled"`
			Module  string `json:"module"`
			Default string `json:"default"`
		} `json:"fips"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("version -json: %v\n%s", err, out)
	}
	head, err := exec.Command("git", "-C", repoRoot(t), "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v.Version, "0.1.0"; got != want {
		t.Errorf("version=%q, want %q", got, want)
	}
	if got, want := v.Commit, strings.TrimSpace(string(head)); got != want {
		t.Errorf("commit=%q, want %q", got, want)
	}
	if got, want := v.Platform, "linux/amd64"; got != want {
		t.Errorf("platform=%q, want %q", got, want)
	}
	if _, err := time.Parse(time.RFC3339, v.BuildTime); err != nil {
		t.Errorf("build_time=%q: %v", v.BuildTime, err)
	}
	if !v.FIPS.Enabled || !strings.HasPrefix(v.FIPS.Module, "v1.0.0") || v.FIPS.Default != "on" {
		t.Errorf("fips=%+v, want enabled, module v1.0.0-..., default on", v.FIPS)
	}
	off, err := exec.Command(r.bin(), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(r.bin(), "version")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=off")
	offOut, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(off, []byte("fips 140-3: on;")) || !bytes.Contains(offOut, []byte("fips 140-3: off;")) {
		t.Errorf("version does not follow GODEBUG=fips140:\n%s\nwith fips140=off:\n%s", off, offOut)
	}
}

// TestCrossBuild: every package (tests included, for vet) builds and vets for the
// release targets other than this machine's.
func TestCrossBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: go build and go vet of the whole module for two more platforms")
	}
	root := repoRoot(t)
	for _, target := range []string{"windows/amd64", "linux/arm64"} {
		goos, goarch, _ := strings.Cut(target, "/")
		for _, args := range [][]string{{"build", "./..."}, {"vet", "./..."}} {
			ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
			cmd := exec.CommandContext(ctx, "go", args...)
			cmd.Dir = root
			// The flags of scripts/build.sh, so that the release build's cache serves.
			cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0", "GOFIPS140=v1.0.0", "GOFLAGS=-trimpath")
			start := time.Now()
			out, err := cmd.CombinedOutput()
			cancel()
			if err != nil {
				t.Errorf("GOOS=%s GOARCH=%s go %s: %v\n%s", goos, goarch, strings.Join(args, " "), err, out)
				continue
			}
			t.Logf("GOOS=%s GOARCH=%s go %s: ok in %s", goos, goarch, strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond))
		}
	}
}

// TestPackageLintian: lintian finds no errors and no warnings in the .deb (the one
// override, statically-linked-binary, is explained in packaging/lintian-overrides).
func TestPackageLintian(t *testing.T) {
	lintian := peer(t, "lintian", "")
	r := defaultRelease(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, lintian, "--tag-display-limit", "0", "--fail-on", "error,warning", r.deb()).CombinedOutput()
	t.Logf("lintian %s:\n%s", filepath.Base(r.deb()), out)
	if err != nil {
		t.Fatalf("lintian: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: ") {
			t.Errorf("lintian: %s", line)
		}
	}
}

// TestPackageContents: the .deb holds the files the unit and the docs promise, the
// config as a conffile, and maintainer scripts that parse.
func TestPackageContents(t *testing.T) {
	dpkgDeb := peer(t, "dpkg-deb", "")
	r := defaultRelease(t)
	list, err := exec.Command(dpkgDeb, "-c", r.deb()).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./usr/bin/edgeaudit", "./lib/systemd/system/edgeaudit.service", "./etc/edgeaudit/config.yaml",
		"./usr/share/doc/edgeaudit/copyright", "./usr/share/doc/edgeaudit/changelog.Debian.gz", "./usr/share/man/man8/edgeaudit.8.gz"} {
		if !bytes.Contains(list, []byte(want+"\n")) {
			t.Errorf("the .deb lacks %s:\n%s", want, list)
		}
	}
	conf, err := exec.Command(dpkgDeb, "-I", r.deb(), "conffiles").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(conf)), "/etc/edgeaudit/config.yaml"; got != want {
		t.Errorf("conffiles=%q, want %q", got, want)
	}
	// The packaged config passes the check that run applies.
	if res := runCLI(t, "config", "-check", filepath.Join(repoRoot(t), "packaging", "config.yaml")); res.code != 0 {
		t.Errorf("config -check packaging/config.yaml: %s", res)
	}
}

// requireRoot skips (or fails under CI=true) a test that needs root: mount
// namespaces, systemd-nspawn.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missingPeer(t, "root is needed (mount namespaces, systemd-nspawn)")
	}
}

// TestServiceUnitVerify: systemd-analyze verify accepts the packaged unit and the one
// kardianos renders for `edgeaudit install`, and the two have the same [Service]
// settings. Both run in a private mount namespace: the packaged unit with the binary
// put at /usr/bin/edgeaudit through an overlay, the rendered one written by a real
// `edgeaudit install -system linux-systemd` into a tmpfs over /etc/systemd/system
// (SYSTEMD_OFFLINE=1: no systemd runs here). The host sees neither.
func TestServiceUnitVerify(t *testing.T) {
	requireRoot(t)
	analyze := peer(t, "systemd-analyze", "")
	unshare := peer(t, "unshare", "")
	r := defaultRelease(t)
	root := repoRoot(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("site: s1\ndata_dir: "+filepath.Join(dir, "data")+"\nsyslog: {udp: \"127.0.0.1:0\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rendered := filepath.Join(dir, "rendered.service")
	script := fmt.Sprintf(`set -e
mount --make-rprivate /
mkdir -p %[1]s/ov && mount -t tmpfs tmpfs %[1]s/ov && mkdir %[1]s/ov/u %[1]s/ov/w
mount -t overlay overlay -o lowerdir=/usr/bin,upperdir=%[1]s/ov/u,workdir=%[1]s/ov/w /usr/bin
cp %[2]s /usr/bin/edgeaudit
echo "== packaged"
%[3]s verify --man=no %[4]s/packaging/edgeaudit.service
mount -t tmpfs tmpfs /etc/systemd/system
echo "== install"
SYSTEMD_OFFLINE=1 /usr/bin/edgeaudit install -system linux-systemd -config %[5]s
cp /etc/systemd/system/edgeaudit.service %[6]s
ls /etc/systemd/system/multi-user.target.wants/
echo "== rendered"
%[3]s verify --man=no /etc/systemd/system/edgeaudit.service
`, dir, r.bin(), analyze, root, cfgPath, rendered)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, unshare, "-m", "sh", "-c", script).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("unshare: %v", err)
	}
	if !bytes.Contains(out, []byte("edgeaudit.service")) {
		t.Errorf("install did not enable the unit (no multi-user.target.wants link)")
	}
	if _, err := os.Stat("/etc/systemd/system/edgeaudit.service"); err == nil {
		t.Errorf("the host's /etc/systemd/system got the unit: the mount namespace leaked")
	}
	packaged, err := os.ReadFile(filepath.Join(root, "packaging", "edgeaudit.service"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(rendered)
	if err != nil {
		t.Fatal(err)
	}
	compareUnits(t, packaged, got)
}

// unitSettings are a unit's [Service] lines, key=value, in order.
func unitSettings(unit []byte) map[string][]string {
	m := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(unit), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		m[section+k] = append(m[section+k], v)
	}
	return m
}

// compareUnits checks that the rendered unit has every setting of the packaged one
// with the same value, except those that name this install (binary path, config,
// user, data folder).
func compareUnits(t testing.TB, packaged, rendered []byte) {
	t.Helper()
	p, r := unitSettings(packaged), unitSettings(rendered)
	perInstall := map[string]bool{"[Service]ExecStart": true, "[Service]User": true, "[Service]Group": true,
		"[Service]WorkingDirectory": true, "[Service]ReadWritePaths": true, "[Unit]ConditionFileIsExecutable": true,
		"[Unit]Documentation": true, "[Unit]Description": true,
		"[Service]SupplementaryGroups": true} // left out where the tss group does not exist
	for k, pv := range p {
		if perInstall[k] {
			continue
		}
		if rv := r[k]; strings.Join(rv, "\n") != strings.Join(pv, "\n") {
			t.Errorf("%s: rendered %q, packaged %q", k, rv, pv)
		}
	}
	for k := range r {
		if _, ok := p[k]; !ok && !perInstall[k] {
			t.Errorf("%s=%q is only in the rendered unit", k, r[k])
		}
	}
}
