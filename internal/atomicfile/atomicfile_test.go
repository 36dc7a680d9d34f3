package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	for _, content := range []string{"one", "two"} {
		if err := WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != content {
			t.Fatalf("content=%q, want %q", got, content)
		}
		fi, _ := os.Stat(p)
		if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
			t.Fatalf("mode=%v, want %v", got, want)
		}
	}
	os.WriteFile(filepath.Join(dir, "x.tmp"), nil, 0o600)
	if err := RemoveTemps(dir); err != nil {
		t.Fatal(err)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(m) != 1 {
		t.Fatalf("files after RemoveTemps: %v, want only k", m)
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	if err := WriteFile(filepath.Join(t.TempDir(), "no", "k"), nil, 0o600); err == nil {
		t.Fatal("want error for a missing folder")
	}
}
