package diskspace

import (
	"errors"
	"io/fs"
	"testing"
)

func TestOf(t *testing.T) {
	u, err := Of(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if u.Total <= 0 || u.Free < 0 || u.Free > u.Total {
		t.Fatalf("usage %+v: want 0 <= free <= total, total > 0", u)
	}
	if _, err := Of("/nonexistent/edgeaudit"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("usage of a missing folder: err=%v, want not exist", err)
	}
}
