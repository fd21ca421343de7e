package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Monitor sends the fake's events, then waits for the client to leave.
func (f *fakeAPI) Monitor(ctx context.Context, filter MonitorFilter, send func(MonitorEvent) error) error {
	b, _ := json.Marshal(filter)
	f.record(fmt.Sprintf("Monitor(%s)", b))
	if filter.VIP == "198.18.10.99:80/tcp" {
		return fmt.Errorf("no VIP %s", filter.VIP)
	}
	for _, e := range fakeMonitorEvents() {
		if err := send(e); err != nil {
			return err
		}
	}
	if f.monitorDone != nil {
		close(f.monitorDone)
	}
	<-ctx.Done()
	return nil
}

func fakeMonitorEvents() []MonitorEvent {
	at := func(ms int) time.Time { return fakeNow.Add(time.Duration(ms) * time.Millisecond) }
	return []MonitorEvent{
		{Time: at(0), Type: "start"},
		{Time: at(12), Type: "drop", Reason: "drop/no_backend", Interface: "eth0", Flow: "198.18.0.10:40000 -> 198.18.10.12:443", Protocol: "tcp", SYN: true,
			VIP: "198.18.10.12:443/tcp", Service: "empty", FrameLen: 74,
			Headers: "eth 02:00:00:00:00:fe > 02:00:00:00:00:01 | ipv4 198.18.0.10 > 198.18.10.12 ttl 63 | tcp 40000 > 443"},
		{Time: at(250), Type: "pin", Reason: "event/pin_created", Flow: "198.18.0.11:51000 -> 198.18.10.10:80", Protocol: "tcp",
			VIP: "198.18.10.10:80/tcp", Service: "web", Backend: "198.18.1.11", BackendID: 3},
		{Time: at(300), Type: "icmp-error", Reason: "tx/icmp_error_to_backend", Interface: "eth0", Flow: "198.18.0.11:51000 -> 198.18.10.10:80", Protocol: "tcp",
			VIP: "198.18.10.10:80/tcp", Service: "web", Backend: "198.18.1.11", BackendID: 3, FrameLen: 590,
			Headers: "eth 02:00:00:00:00:01 > 02:00:00:00:01:11 | ipv4 198.18.5.1 > 198.18.10.10 ttl 62 | icmp DestinationUnreachable(FragmentationNeeded)"},
		{Time: at(410), Type: "echo-reply", Reason: "tx/icmp_echo_reply", Interface: "eth0", Flow: "198.18.0.10 -> 198.18.10.10", Protocol: "icmp", FrameLen: 98,
			Headers: "eth 02:00:00:00:00:01 > 02:00:00:00:00:fe | ipv4 198.18.10.10 > 198.18.0.10 ttl 64 | icmp EchoReply"},
		{Time: at(1000), Type: "lost", Lost: 17, DatapathLost: 3},
	}
}

// lockedBuffer is an output the command writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runMonitorCLI runs xdplb monitor until the fake has sent its events.
func runMonitorCLI(t *testing.T, api *fakeAPI, args ...string) (string, error) {
	t.Helper()
	api.monitorDone = make(chan struct{})
	c := commands["monitor"]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() { done <- c.run(ctx, args, &out) }()
	select {
	case <-api.monitorDone:
	case err := <-done:
		return out.String(), err
	}
	// The events are on their way; the last one in the output ends it.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "lost") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	err := <-done
	return out.String(), err
}

func TestCLIMonitor(t *testing.T) {
	setCLIClock(t)
	api := newFakeAPI()
	sock := startControl(t, api)
	got, err := runMonitorCLI(t, api, "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "monitor", []byte(got))

	got, err = runMonitorCLI(t, api, "--socket", sock, "-o", "json", "--vip", "198.18.10.10:80/TCP", "--type", "drop,pin", "--type", "icmp-error",
		"--reason", "no_backend", "--backend", "198.18.1.11", "--sample", "10")
	if err != nil {
		t.Fatal(err)
	}
	var events []MonitorEvent
	for _, line := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		var e MonitorEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("-o json: a line that is no event: %q: %v", line, err)
		}
		events = append(events, e)
	}
	if diff := cmp.Diff(fakeMonitorEvents(), events); diff != "" {
		t.Errorf("-o json (-want +got):\n%s", diff)
	}
	want := []string{
		`Monitor({"sample":1})`,
		`Monitor({"vip":"198.18.10.10:80/tcp","backend":"198.18.1.11","reason":"no_backend","types":["drop","pin","icmp-error"],"sample":10})`,
	}
	if diff := cmp.Diff(want, api.recorded()); diff != "" {
		t.Errorf("daemon calls (-want +got):\n%s", diff)
	}
}

func TestCLIMonitorErrors(t *testing.T) {
	api := newFakeAPI()
	sock := startControl(t, api)
	for _, tt := range []struct {
		args      []string
		want      string
		wantUsage bool
	}{
		{[]string{"--type", "drops"}, `monitor: --type "drops": want one of drop, pin, icmp-error, echo-reply, icmp-sent`, true},
		{[]string{"--sample", "0"}, "monitor: --sample 0: want 1 or more", true},
		{[]string{"--vip", "198.18.10.10"}, `monitor: --vip "198.18.10.10": want ADDRESS:PORT/PROTOCOL`, true},
		{[]string{"now"}, `monitor: unexpected argument "now"`, true},
		{[]string{"--vip", "198.18.10.99:80/tcp"}, "no VIP 198.18.10.99:80/tcp", false},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := runCLI(t, append([]string{"monitor", "--socket", sock}, tt.args...)...)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if u := exitCode(err) == 2; u != tt.wantUsage {
				t.Errorf("usage error %v, want %v", u, tt.wantUsage)
			}
		})
	}
}
