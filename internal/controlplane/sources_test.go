package controlplane

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xdplb/xdplb/config"
)

func svc(name, addr string, ports ...uint16) config.Service {
	return config.Service{Name: name, Addr: netip.MustParseAddr(addr), Protocol: config.ProtocolTCP, Ports: ports}
}

// summary is what a merge kept: "name addr ports".
func summary(services []config.Service) []string {
	var out []string
	for _, s := range services {
		var b strings.Builder
		b.WriteString(s.Name + " " + s.Addr.String())
		for _, p := range s.Ports {
			b.WriteString(" " + strconv.Itoa(int(p)))
		}
		out = append(out, b.String())
	}
	return out
}

func conflictSummary(cs []ConflictInfo) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Source+" "+c.Service+" "+c.VIP+" held by "+c.HeldBy+" "+c.Owner)
	}
	return out
}

func TestMergeConflicts(t *testing.T) {
	var logs bytes.Buffer
	m := newMerger(slog.New(slog.NewTextHandler(&logs, nil)))
	order := []string{"file", "kubernetes"}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

	type step struct {
		name          string
		offers        map[string][]config.Service
		wantServices  []string
		wantConflicts []string
	}
	steps := []step{
		{
			name: "the file first: kubernetes loses 198.18.10.10:80 and keeps :443",
			offers: map[string][]config.Service{
				"file":       {svc("web", "198.18.10.10", 80)},
				"kubernetes": {svc("default/web", "198.18.10.10", 80, 443), svc("default/db", "198.18.10.11", 5432)},
			},
			wantServices:  []string{"web 198.18.10.10 80", "default/web 198.18.10.10 443", "default/db 198.18.10.11 5432"},
			wantConflicts: []string{"kubernetes default/web 198.18.10.10:80/tcp held by file web"},
		},
		{
			name: "the same offers again: nothing changes",
			offers: map[string][]config.Service{
				"file":       {svc("web", "198.18.10.10", 80)},
				"kubernetes": {svc("default/web", "198.18.10.10", 80, 443), svc("default/db", "198.18.10.11", 5432)},
			},
			wantServices:  []string{"web 198.18.10.10 80", "default/web 198.18.10.10 443", "default/db 198.18.10.11 5432"},
			wantConflicts: []string{"kubernetes default/web 198.18.10.10:80/tcp held by file web"},
		},
		{
			name: "the file now wants the database's VIP: kubernetes holds it, the file loses",
			offers: map[string][]config.Service{
				"file":       {svc("web", "198.18.10.10", 80), svc("db", "198.18.10.11", 5432)},
				"kubernetes": {svc("default/web", "198.18.10.10", 80, 443), svc("default/db", "198.18.10.11", 5432)},
			},
			wantServices:  []string{"web 198.18.10.10 80", "default/web 198.18.10.10 443", "default/db 198.18.10.11 5432"},
			wantConflicts: []string{"file db 198.18.10.11:5432/tcp held by kubernetes default/db", "kubernetes default/web 198.18.10.10:80/tcp held by file web"},
		},
		{
			name: "a service name offered by both: the holder keeps it",
			offers: map[string][]config.Service{
				"file":       {svc("web", "198.18.10.10", 80), svc("db", "198.18.10.11", 5432)},
				"kubernetes": {svc("default/web", "198.18.10.10", 80, 443), svc("default/db", "198.18.10.11", 5432), svc("web", "198.18.10.12", 80)},
			},
			wantServices:  []string{"web 198.18.10.10 80", "default/web 198.18.10.10 443", "default/db 198.18.10.11 5432"},
			wantConflicts: []string{"file db 198.18.10.11:5432/tcp held by kubernetes default/db", "kubernetes default/web 198.18.10.10:80/tcp held by file web", "kubernetes web  held by file web"},
		},
		{
			name: "kubernetes lets the database go: the file takes it over",
			offers: map[string][]config.Service{
				"file":       {svc("web", "198.18.10.10", 80), svc("db", "198.18.10.11", 5432)},
				"kubernetes": {svc("default/web", "198.18.10.10", 80, 443)},
			},
			wantServices:  []string{"web 198.18.10.10 80", "db 198.18.10.11 5432", "default/web 198.18.10.10 443"},
			wantConflicts: []string{"kubernetes default/web 198.18.10.10:80/tcp held by file web"},
		},
		{
			name: "kubernetes offers the database again: the file holds it now, no flap",
			offers: map[string][]config.Service{
				"file":       {svc("web", "198.18.10.10", 80), svc("db", "198.18.10.11", 5432)},
				"kubernetes": {svc("default/web", "198.18.10.10", 80, 443), svc("default/db", "198.18.10.11", 5432)},
			},
			wantServices:  []string{"web 198.18.10.10 80", "db 198.18.10.11 5432", "default/web 198.18.10.10 443"},
			wantConflicts: []string{"kubernetes default/db 198.18.10.11:5432/tcp held by file db", "kubernetes default/web 198.18.10.10:80/tcp held by file web"},
		},
	}
	for i, st := range steps {
		got, conflicts := m.merge(order, st.offers, t0.Add(time.Duration(i)*time.Second))
		sortConflicts(conflicts)
		if diff := cmp.Diff(st.wantServices, summary(got)); diff != "" {
			t.Errorf("%s: services (-want +got):\n%s", st.name, diff)
		}
		if diff := cmp.Diff(st.wantConflicts, conflictSummary(conflicts)); diff != "" {
			t.Errorf("%s: conflicts (-want +got):\n%s", st.name, diff)
		}
	}
	// Each conflict is logged once when it appears, and once when it ends.
	if n := strings.Count(logs.String(), `msg="conflict: a VIP or service name offered by two sources; the first keeps it" vip=198.18.10.10:80/tcp`); n != 1 {
		t.Errorf("the conflict over 198.18.10.10:80/tcp was logged %d times, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), `msg="conflict over" vip=198.18.10.11:5432/tcp service=db source=file`); n != 1 {
		t.Errorf("the end of the file's conflict over the database was logged %d times, want 1:\n%s", n, logs.String())
	}
}

func TestAnnounceable(t *testing.T) {
	services := []config.Service{
		{Name: "web", Addr: netip.MustParseAddr("198.18.10.10"), Announce: true, MinHealthyBackends: 2},
		{Name: "web-tls", Addr: netip.MustParseAddr("198.18.10.10"), Announce: true, MinHealthyBackends: 1},
		{Name: "quiet", Addr: netip.MustParseAddr("198.18.10.11"), Announce: false, MinHealthyBackends: 1},
		{Name: "dead", Addr: netip.MustParseAddr("2001:db8:10::1"), Announce: true, MinHealthyBackends: 1},
		{Name: "v6", Addr: netip.MustParseAddr("2001:db8:10::2"), Announce: true, MinHealthyBackends: 1},
	}
	healthy := map[string]int{"web": 1, "web-tls": 1, "quiet": 3, "dead": 0, "v6": 1}
	got := announceable(services, healthy)
	// web has too few, but web-tls on the same address is enough.
	want := []netip.Addr{netip.MustParseAddr("198.18.10.10"), netip.MustParseAddr("2001:db8:10::2")}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("announceable (-want +got):\n%s", diff)
	}
}

func TestCheckSourceName(t *testing.T) {
	for _, tt := range []struct {
		name string
		have []string
		want string
	}{
		{"file", []string{"file"}, `source name "file" is reserved`},
		{"", []string{"file"}, `source name "" is reserved`},
		{"kubernetes", []string{"file", "kubernetes"}, `source "kubernetes" added twice`},
		{"kubernetes", []string{"file"}, ""},
	} {
		err := checkSourceName(tt.name, tt.have)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("checkSourceName(%q, %q) = %q, want %q", tt.name, tt.have, got, tt.want)
		}
	}
}
