package controlplane

import (
	"testing"
)

// TestMonitorFilter: each field of a filter selects on its own; empty ones
// select everything; bad ones are refused as the CLI words them.
func TestMonitorFilter(t *testing.T) {
	drop := MonitorEvent{Type: "drop", Reason: "drop/no_backend", VIP: "198.18.10.10:80/tcp", Backend: ""}
	pin := MonitorEvent{Type: "pin", Reason: "event/pin_created", VIP: "198.18.10.10:80/tcp", Backend: "198.18.1.11"}
	tests := []struct {
		name      string
		f         MonitorFilter
		drop, pin bool
	}{
		{"empty", MonitorFilter{}, true, true},
		{"vip", MonitorFilter{VIP: "198.18.10.10:80/TCP"}, true, true},
		{"other vip", MonitorFilter{VIP: "198.18.10.10:443/tcp"}, false, false},
		{"backend", MonitorFilter{Backend: "198.18.1.11"}, false, true},
		{"reason", MonitorFilter{Reason: "no_backend"}, true, false},
		{"action/reason", MonitorFilter{Reason: "event/pin_created"}, false, true},
		{"types", MonitorFilter{Types: []string{"pin", "icmp-error"}}, false, true},
	}
	for _, tt := range tests {
		f := tt.f
		if err := f.check(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := f.match(&drop); got != tt.drop {
			t.Errorf("%s: matches the drop: %v, want %v", tt.name, got, tt.drop)
		}
		if got := f.match(&pin); got != tt.pin {
			t.Errorf("%s: matches the pin: %v, want %v", tt.name, got, tt.pin)
		}
	}
	for _, tt := range []struct {
		f    MonitorFilter
		want string
	}{
		{MonitorFilter{Types: []string{"drops"}}, `--type "drops": want one of drop, pin, icmp-error, echo-reply, icmp-sent`},
		{MonitorFilter{VIP: "198.18.10.10"}, `--vip "198.18.10.10": want ADDRESS:PORT/PROTOCOL`},
		{MonitorFilter{Sample: -1}, "--sample -1: want 1 or more"},
	} {
		if err := tt.f.check(); err == nil || err.Error() != tt.want {
			t.Errorf("%+v: error %v, want %q", tt.f, err, tt.want)
		}
	}
}
