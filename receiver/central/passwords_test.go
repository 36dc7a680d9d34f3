package central

import (
	"os"
	"path/filepath"
	"testing"
)

// A line PasswordLine writes loads with LoadPasswords and checks the password, and no
// other.
func TestPasswordLine(t *testing.T) {
	line, err := PasswordLine("s1/d1", "secret")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := users["s1/d1"]
	if !ok || !e.check([]byte("secret")) || e.check([]byte("Secret")) {
		t.Fatalf("entry %+v: the password must check, another must not", e)
	}
	if _, err := PasswordLine("nodevice", "x"); err == nil {
		t.Fatal("a user without site/device was accepted")
	}
}
