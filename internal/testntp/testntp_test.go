package testntp

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/beevik/ntp"
)

func query(t *testing.T, addr string, timeout time.Duration) (*ntp.Response, error) {
	t.Helper()
	return ntp.QueryWithOptions(addr, ntp.QueryOptions{Timeout: timeout})
}

// TestServers: each kind of server answers as the timesync tests rely on.
func TestServers(t *testing.T) {
	for _, tt := range []struct {
		name       string
		opts       Options
		minOff     time.Duration
		maxOff     time.Duration
		validate   error // what Response.Validate returns
		stratum    uint8
		leap       ntp.LeapIndicator
		refID      string
		checkRefID bool
	}{
		{"local stratum 8", Options{}, -100 * time.Millisecond, 100 * time.Millisecond, nil, 8, ntp.LeapNoWarning, "127.127.1.1", true},
		{"skewed +5s", Options{Offset: 5 * time.Second}, 4 * time.Second, 6 * time.Second, nil, 8, ntp.LeapNoWarning, "", false},
		{"skewed -3s stratum 3", Options{Offset: -3 * time.Second, Stratum: 3}, -4 * time.Second, -2 * time.Second, nil, 3, ntp.LeapNoWarning, "", false},
		{"unsynchronized", Options{Unsynchronized: true}, -time.Hour, time.Hour, ntp.ErrKissOfDeath, 0, ntp.LeapNotInSync, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := Start(t, tt.opts)
			r, err := query(t, s.Addr, 2*time.Second)
			if err != nil {
				t.Fatalf("query %s: %v", s.Addr, err)
			}
			if err := r.Validate(); !errors.Is(err, tt.validate) || (tt.validate == nil && err != nil) {
				t.Fatalf("Validate()=%v, want %v", err, tt.validate)
			}
			if tt.validate == nil && (r.ClockOffset < tt.minOff || r.ClockOffset > tt.maxOff) {
				t.Fatalf("offset %v, want %v..%v", r.ClockOffset, tt.minOff, tt.maxOff)
			}
			if r.Stratum != tt.stratum || r.Leap != tt.leap {
				t.Fatalf("stratum %d leap %d, want %d %d", r.Stratum, r.Leap, tt.stratum, tt.leap)
			}
			if tt.checkRefID && r.ReferenceString() != tt.refID {
				t.Fatalf("refid %q, want %q", r.ReferenceString(), tt.refID)
			}
			t.Logf("offset=%v rtt=%v stratum=%d leap=%d refid=%s rootdist=%v kiss=%q", r.ClockOffset, r.RTT, r.Stratum, r.Leap, r.ReferenceString(), r.RootDistance, r.KissCode)
		})
	}
}

func TestClosedPortAndBlackHole(t *testing.T) {
	if _, err := query(t, ClosedPort(t), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("closed port: %v, want connection refused", err)
	}
	if _, err := query(t, BlackHole(t), 100*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("black hole: %v, want a timeout", err)
	}
}

func TestFakeTime(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{5 * time.Second, "+5s"}, {-1500 * time.Millisecond, "-1.5s"}, {90 * time.Second, "+90s"}} {
		if got := fakeTime(tt.d); got != tt.want {
			t.Errorf("fakeTime(%v)=%q, want %q", tt.d, got, tt.want)
		}
	}
}
