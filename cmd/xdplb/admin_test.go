package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/internal/testnet"
)

func TestCheck(t *testing.T) {
	var out bytes.Buffer
	if err := runCheck(context.Background(), []string{"../../config/testdata/example.yaml"}, &out); err != nil {
		t.Fatalf("check of the example: %v", err)
	}
	if got := out.String(); got != "../../config/testdata/example.yaml: ok\n" {
		t.Errorf("check output = %q", got)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("interfaces:\n  - name: eth0\n    xdpMode: turbo\nmaglev:\n  seed: \"eGRwbGItdGVzdC1zZWVkIQ==\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := runCheck(context.Background(), []string{bad}, &out)
	want := `interfaces[0].xdpMode: "turbo" is`
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "(line 3, column 14)") {
		t.Errorf("check of a bad file: %v, want an error with %q at line 3, column 14", err, want)
	}
}

// TestDecapCommand attaches, reads and detaches the decap program with the
// CLI, in a namespace of its own.
func TestDecapCommand(t *testing.T) {
	testnet.RequirePrivileged(t)
	pin := filepath.Join(testnet.MountBPFFS(t), "xdplb")
	ns, err := testnet.NewNS("xdcap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	err = ns.Do(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("veth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		ctx := context.Background()
		var out bytes.Buffer
		// Attaching without saying whom to trust is refused, and attaches
		// nothing.
		err = runDecap(ctx, []string{"--interface", "veth0", "--pin-path", pin, "--addresses", "198.18.0.11,2001:db8::11"}, &out)
		if err == nil || err.Error() != errDecapNoAllow {
			t.Errorf("decap without --allow: %v, want %q", err, errDecapNoAllow)
		}
		l, _ = netlink.LinkByName("veth0")
		if l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
			t.Errorf("XDP program on veth0 after a refused `xdplb decap`")
		}
		out.Reset()
		if err := runDecap(ctx, []string{"--interface", "veth0", "--pin-path", pin, "--addresses", "198.18.0.11,2001:db8::11",
			"--allow", "198.18.0.2", "--allow", "2001:db8::/120"}, &out); err != nil {
			return err
		}
		lines := strings.Split(out.String(), "\n")
		if !strings.HasPrefix(lines[0], "decap attached to veth0 (ifindex ") || len(lines) != 3 ||
			lines[1] != "allowed outer sources: 198.18.0.2/32 2001:db8::/120" {
			t.Errorf("attach output = %q", out.String())
		}
		// Running it again replaces the allowed set.
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"--allow", "198.18.7.0/24"}, "allowed outer sources: 198.18.7.0/24"},
			{[]string{"--allow-any"}, "allowed outer sources: any"},
			{[]string{"--allow", "2001:db8:7::/48", "--allow", "198.18.0.2/32"}, "allowed outer sources: 198.18.0.2/32 2001:db8:7::/48"},
		} {
			out.Reset()
			if err := runDecap(ctx, append([]string{"--interface", "veth0", "--pin-path", pin}, c.args...), &out); err != nil {
				return err
			}
			lines := strings.Split(out.String(), "\n")
			if !strings.HasPrefix(lines[0], "decap updated on veth0 (ifindex ") || len(lines) != 3 || lines[1] != c.want {
				t.Errorf("decap %v: output %q, want a second line %q", c.args, out.String(), c.want)
			}
		}
		// The attachment outlives the command.
		l, _ = netlink.LinkByName("veth0")
		if l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
			t.Errorf("no XDP program on veth0 after `xdplb decap`")
		}
		out.Reset()
		if err := runDecap(ctx, []string{"--interface", "veth0", "--pin-path", pin, "--counters"}, &out); err != nil {
			return err
		}
		if !strings.Contains(out.String(), "decap_ipv4_in_ipv4") || !strings.Contains(out.String(), "pass_not_local") ||
			!strings.Contains(out.String(), "drop_source_not_allowed") {
			t.Errorf("counters output:\n%s", out.String())
		}
		out.Reset()
		if err := runDecap(ctx, []string{"--interface", "veth0", "--pin-path", pin, "--detach"}, &out); err != nil {
			return err
		}
		if out.String() != "decap detached from veth0\n" {
			t.Errorf("detach output = %q", out.String())
		}
		l, _ = netlink.LinkByName("veth0")
		if l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
			t.Errorf("XDP program still on veth0 after --detach")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(pin); len(entries) != 0 {
		t.Errorf("pins left: %v", entries)
	}
}

// TestDecapFlags checks the usage errors of `xdplb decap`, word for word.
func TestDecapFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow", "198.18.0.2"}, "decap: --interface is required"},
		{[]string{"--interface", "eth0"}, errDecapNoAllow},
		{[]string{"--interface", "eth0", "--addresses", "198.18.0.11"}, errDecapNoAllow},
		{[]string{"--interface", "eth0", "--allow", "198.18.0.300"}, `decap: --allow "198.18.0.300": want an IPv4 or IPv6 prefix or address`},
		{[]string{"--interface", "eth0", "--allow", "198.18.0.0/33"}, `decap: --allow "198.18.0.0/33": want an IPv4 or IPv6 prefix or address`},
		{[]string{"--interface", "eth0", "--allow", "2001:db8::/24x"}, `decap: --allow "2001:db8::/24x": want an IPv4 or IPv6 prefix or address`},
		{[]string{"--interface", "eth0", "--allow", "lb1.example"}, `decap: --allow "lb1.example": want an IPv4 or IPv6 prefix or address`},
		{[]string{"--interface", "eth0", "--allow", "fe80::1%eth0"}, `decap: --allow "fe80::1%eth0": want an IPv4 or IPv6 prefix or address`},
		{[]string{"--interface", "eth0", "--allow", ""}, `decap: --allow "": want an IPv4 or IPv6 prefix or address`},
		{[]string{"--interface", "eth0", "--allow", "198.18.0.0/24", "--allow", "198.18.0.1/24"}, `decap: --allow "198.18.0.1/24": host bits are set (the prefix is 198.18.0.0/24)`},
		{[]string{"--interface", "eth0", "--allow", "2001:db8::1/64"}, `decap: --allow "2001:db8::1/64": host bits are set (the prefix is 2001:db8::/64)`},
		{[]string{"--interface", "eth0", "--allow", "198.18.0.2", "--allow-any"}, "decap: --allow and --allow-any exclude each other"},
		{[]string{"--interface", "eth0", "--counters", "--allow", "198.18.0.2"}, "decap: --allow and --allow-any are for attaching, not with --detach or --counters"},
		{[]string{"--interface", "eth0", "--detach", "--allow-any"}, "decap: --allow and --allow-any are for attaching, not with --detach or --counters"},
	} {
		var out bytes.Buffer
		err := runDecap(context.Background(), c.args, &out)
		var u usageError
		if err == nil || err.Error() != c.want || !errors.As(err, &u) {
			t.Errorf("xdplb decap %s: %v, want the usage error %q", strings.Join(c.args, " "), err, c.want)
		}
	}
	want := "decap: --allow is required: give the prefixes of the load balancers' encap sources (encap.sourceIPv4, encap.sourceIPv6; repeat --allow for each), or --allow-any to decapsulate from every source"
	if errDecapNoAllow != want {
		t.Errorf("errDecapNoAllow = %q, want %q", errDecapNoAllow, want)
	}
}
