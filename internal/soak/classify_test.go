package soak

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestClassify(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	tl := &Timeline{
		Start: t0,
		Gone: []Gone{
			{Service: "web", Backend: "b3", From: at(10), To: at(20), Why: "removed"},
			{Service: "web", Backend: "b2", From: at(32), To: at(40), Why: "down"},
		},
		Stopped: []Stopped{{Backend: "b2", Services: []string{"web"}, From: at(30), To: at(35)}},
		Changes: []Change{
			{Kind: "remove", What: "b3", Start: at(10), End: at(10.1)},
			{Kind: "health-flap", What: "b2", Start: at(30), End: at(42)},
			{Kind: "restart", What: "", Start: at(50), End: at(53)},
		},
	}
	lim := Limits{FastBreak: 5 * time.Second, Stale: 2 * time.Second, Slack: time.Second}
	type want struct {
		Expected string // Why, or "" when a defect
		Defect   string // a part of the defect's line
	}
	for _, tc := range []struct {
		name string
		o    Outcome
		want want
	}{
		{
			name: "reset on a removed backend, fast",
			o:    Outcome{Kind: Broke, Service: "web", Backend: "b3", Started: at(1), At: at(11), Err: ErrReset},
			want: want{Expected: "removed"},
		},
		{
			name: "reset on a removed backend, slow",
			o:    Outcome{Kind: Broke, Service: "web", Backend: "b3", Started: at(1), At: at(17), Err: ErrReset},
			want: want{Defect: "broke (reset) 7.0s after b3 was removed (12:00:10.000): want a reset within 5s"},
		},
		{
			name: "timed out on a removed backend: no reset came",
			o:    Outcome{Kind: Broke, Service: "web", Backend: "b3", Started: at(1), At: at(14), Err: ErrTimeout},
			want: want{Defect: "short connection on b3 timed out (timeout) after b3 was removed (12:00:10.000): want a reset"},
		},
		{
			name: "removed before the connection began: it never was on it",
			o:    Outcome{Kind: Broke, Service: "web", Backend: "b3", Started: at(12), At: at(13), Err: ErrReset},
			want: want{Defect: "with b3 configured and up"},
		},
		{
			name: "another service's removal explains nothing",
			o:    Outcome{Kind: Broke, Service: "api", Backend: "b3", Started: at(1), At: at(11), Err: ErrReset},
			want: want{Defect: "with b3 configured and up"},
		},
		{
			name: "reset on a backend that is up, during a restart",
			o:    Outcome{Kind: Broke, Long: true, Service: "web", Backend: "b1", Started: at(1), At: at(51), Err: ErrReset},
			want: want{Defect: "long connection on b1 broke (reset) after 50.0s, with b1 configured and up, during restart"},
		},
		{
			name: "reset on a backend gone down",
			o:    Outcome{Kind: Broke, Service: "web", Backend: "b2", Started: at(1), At: at(33), Err: ErrReset},
			want: want{Expected: "down"},
		},
		{
			name: "refused while the backend's listener is stopped and it is not yet down",
			o:    Outcome{Kind: DialFailed, Service: "web", Started: at(31), At: at(31.01), Err: ErrRefused},
			want: want{Expected: "listener stopped"},
		},
		{
			name: "refused once the backend is down: it must not get new flows",
			o:    Outcome{Kind: DialFailed, Service: "web", Started: at(34), At: at(34.01), Err: ErrRefused},
			want: want{Defect: "new short connection failed (refused)"},
		},
		{
			name: "refused with every listener up",
			o:    Outcome{Kind: DialFailed, Service: "web", Started: at(5), At: at(5.01), Err: ErrRefused},
			want: want{Defect: "with the VIP's backends up"},
		},
		{
			name: "reset during the handshake of a removal",
			o:    Outcome{Kind: DialFailed, Service: "web", Started: at(9.9), At: at(10.05), Err: ErrReset},
			want: want{Expected: "removed"},
		},
		{
			name: "reset in the accept queue of a listener that closed",
			o:    Outcome{Kind: DialFailed, Service: "web", Started: at(29.95), At: at(30.01), Err: ErrReset},
			want: want{Expected: "listener stopped"},
		},
		{
			name: "a timeout is never expected",
			o:    Outcome{Kind: DialFailed, Service: "web", Started: at(9.9), At: at(19.9), Err: ErrTimeout},
			want: want{Defect: "new short connection failed (timeout)"},
		},
		{
			name: "an echo from another backend",
			o:    Outcome{Kind: Mismatch, Service: "web", Backend: "b1", Started: at(1), At: at(2), Got: "b4 123"},
			want: want{Defect: `greeted by b1 got an echo back as "b4 123"`},
		},
		{
			name: "still answered long after its backend was removed",
			o:    Outcome{Kind: Ended, Long: true, Service: "web", Backend: "b3", Started: at(1), At: at(60), Echoes: []time.Time{at(9), at(11.5), at(13)}},
			want: want{Defect: "long connection still answered by b3 3.0s after it was removed"},
		},
		{
			name: "answered by a backend down for 2.5 s",
			o:    Outcome{Kind: Ended, Long: true, Service: "web", Backend: "b2", Started: at(1), At: at(60), Echoes: []time.Time{at(31), at(34.5)}},
			want: want{Defect: "long connection still answered by b2 2.5s after it was down"},
		},
		{
			name: "answered again after it came back",
			o:    Outcome{Kind: Ended, Service: "web", Backend: "b3", Started: at(21), At: at(60), Echoes: []time.Time{at(22), at(59)}},
			want: want{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp, defects := Classify([]Outcome{tc.o}, tl, lim)
			var got want
			if len(exp) > 0 {
				got.Expected = exp[0].Why
			}
			if len(defects) > 0 {
				got.Defect = defects[0].Line
				if tc.want.Defect != "" && strings.Contains(got.Defect, tc.want.Defect) {
					got.Defect = tc.want.Defect
				}
			}
			if len(exp)+len(defects) > 1 {
				t.Errorf("%d expected and %d defects for one outcome: %v %v", len(exp), len(defects), exp, defects)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDefectLine(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tl := &Timeline{Start: t0, Changes: []Change{
		{Kind: "drain", What: "b2", Start: t0.Add(58 * time.Second), End: t0.Add(58300 * time.Millisecond)},
		{Kind: "restart", What: "SIGTERM", Start: t0.Add(61 * time.Second)},
	}}
	o := Outcome{Kind: Broke, Long: true, Service: "ipip-v4", VIP: "198.18.100.2:80", Backend: "b3",
		Started: t0.Add(2 * time.Second), At: t0.Add(62 * time.Second), Err: ErrReset, ErrText: "read: connection reset by peer"}
	_, defects := Classify([]Outcome{o}, tl, Limits{FastBreak: 5 * time.Second, Stale: 2 * time.Second, Slack: time.Second})
	want := "12:01:02.000 (+62.0s) ipip-v4 198.18.100.2:80 b3: long connection on b3 broke (reset: read: connection reset by peer) after 60.0s, " +
		"with b3 configured and up, during restart SIGTERM; opened +2.0s, 0 echoes; last changes: +58.0s drain b2 (done +58.3s); +61.0s restart SIGTERM (in progress)"
	if len(defects) != 1 || defects[0].Line != want {
		t.Errorf("defects = %+v\nwant the line %q", defects, want)
	}
}

func TestDefectNamesEarlierConnection(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	tl := &Timeline{Start: t0}
	outcomes := []Outcome{
		{Kind: Broke, Service: "web", VIP: "198.18.100.1:80", Backend: "b3", Client: "198.18.0.10:40000", Started: at(1), At: at(20), Err: ErrReset},
		{Kind: Ended, Service: "web", VIP: "198.18.100.1:80", Backend: "b1", Client: "198.18.0.10:40001", Started: at(2), At: at(60)},
		{Kind: Broke, Service: "web", VIP: "198.18.100.1:80", Backend: "b2", Client: "198.18.0.10:40000", Started: at(30), At: at(35), Err: ErrReset},
	}
	_, defects := Classify(outcomes, tl, Limits{FastBreak: 5 * time.Second, Stale: 2 * time.Second, Slack: time.Second})
	if len(defects) != 2 {
		t.Fatalf("%d defects, want 2: %v", len(defects), defects)
	}
	want := "its 4-tuple (client 198.18.0.10:40000) was used before by a connection opened +1.0s on b3 that broke (reset) +20.0s"
	if !strings.Contains(defects[1].Line, want) {
		t.Errorf("defect %q\ndoes not say %q", defects[1].Line, want)
	}
	if strings.Contains(defects[0].Line, "used before") {
		t.Errorf("the first connection of a 4-tuple names an earlier one: %q", defects[0].Line)
	}
}

func TestParseCounters(t *testing.T) {
	in := `# HELP xdplb_datapath_packets_total Packets by verdict and reason.
xdplb_datapath_packets_total{action="drop",reason="redirect_failed"} 2
xdplb_datapath_packets_total{action="tx",reason="dsr_l2"} 12345
xdplb_datapath_events_total{event="pin_created"} 501
xdplb_vip_packets_total{service="web",vip="198.18.100.1",port="80",protocol="tcp"} 7
`
	got, err := parseCounters(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"drop/redirect_failed": 2, "event/pin_created": 501}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestReportJSON(t *testing.T) {
	r := Report{Duration: Seconds(90 * time.Second), Changes: map[string]int{"add": 2}, MaxBreakDelay: Seconds(1250 * time.Millisecond),
		Defects: []Defect{{Offset: Seconds(1500 * time.Millisecond), Service: "web", What: "broke", Line: "the line"}}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"duration_s":90.000`, `"max_break_delay_s":1.250`, `"changes":{"add":2}`, `"offset_s":1.500`, `"line":"the line"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON report lacks %s:\n%s", want, b)
		}
	}
}

// TestSoakStall checks how a stall of the soak itself is told: the longest
// in the window before a defect, named on its line from half a second up,
// and in the JSON report.
func TestSoakStall(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := &soak{stalls: []stall{{t0.Add(10 * time.Second), 300 * time.Millisecond}, {t0.Add(15 * time.Second), 2100 * time.Millisecond}}}
	for _, c := range []struct {
		at   time.Duration
		want time.Duration
	}{{9 * time.Second, 0}, {12 * time.Second, 300 * time.Millisecond}, {16 * time.Second, 2100 * time.Millisecond}, {22 * time.Second, 0}} {
		if got := s.stallBefore(t0.Add(c.at), 6*time.Second); got != c.want {
			t.Errorf("stall in the 6 s before +%v = %v, want %v", c.at, got, c.want)
		}
	}
	d := Defect{At: t0, Service: "web", What: "broke", SoakStall: Seconds(2100 * time.Millisecond)}
	if got, want := d.String(), "; the soak itself stalled 2.1s in the 6 s before it"; !strings.HasSuffix(got, want) {
		t.Errorf("defect line %q: want it to end %q", got, want)
	}
	d.SoakStall = Seconds(300 * time.Millisecond)
	if got := d.String(); strings.Contains(got, "stalled") {
		t.Errorf("defect line %q names a stall of 0.3 s", got)
	}
	b, err := json.Marshal(Report{MaxStall: Seconds(2100 * time.Millisecond), Defects: []Defect{{SoakStall: Seconds(time.Second)}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"max_stall_s":2.100`, `"soak_stall_s":1.000`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON report lacks %s:\n%s", want, b)
		}
	}
}
