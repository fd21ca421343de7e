package main

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/internal/soak"
	"github.com/xdplb/xdplb/internal/testnet"
)

// TestSoak is a 60-second `bench soak`: the real daemon under 200 long-lived
// and a stream of new connections while every kind of change is made. It
// fails on any defect, and also when the soak did not do what it claims:
// connections opened and echoed, each kind of change made, and connections
// on removed or downed backends seen to break (a classification that counts
// nothing proves nothing).
func TestSoak(t *testing.T) {
	testnet.RequirePrivileged(t)
	if testing.Short() {
		t.Skip("a 60-second soak; -short skips it")
	}
	// Ctrl-C stops the soak, which then removes what it set up (namespaces,
	// bpffs, the daemon) instead of the test binary dying with them in place.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	r, err := soak.Run(ctx, soak.Options{Duration: 60 * time.Second, Pause: 3 * time.Second, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	r.Print(&out)
	t.Logf("\n%s", out.String())
	for _, d := range r.Defects {
		t.Errorf("defect: %s", d.Line)
	}
	if r.LongOpened < 200 || r.ShortOpened == 0 || r.Echoes < 200 {
		t.Errorf("opened %d long-lived and %d short connections, %d echoes: want at least 200, 1 and 200", r.LongOpened, r.ShortOpened, r.Echoes)
	}
	for _, k := range soak.ChangeKinds {
		if r.Changes[k] == 0 {
			t.Errorf("no change of kind %s was made", k)
		}
	}
	if r.Restarts == 0 {
		t.Error("the daemon was not restarted")
	}
	// A removal and a health flap each break the connections on their
	// backend: some must have been seen and classified.
	for _, why := range []string{"removed", "down"} {
		if r.ExpectedBy[why] == 0 {
			t.Errorf("no connection broke on a backend %s (expected by reason: %v)", why, r.ExpectedBy)
		}
	}
}

// testWriter sends the soak's progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
