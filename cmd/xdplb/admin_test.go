package main

import (
	"bytes"
	"context"
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
		if err := runDecap(ctx, []string{"--interface", "veth0", "--pin-path", pin, "--addresses", "198.18.0.11,2001:db8::11"}, &out); err != nil {
			return err
		}
		if !strings.HasPrefix(out.String(), "decap attached to veth0 (ifindex ") {
			t.Errorf("attach output = %q", out.String())
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
		if !strings.Contains(out.String(), "decap_ipv4_in_ipv4") || !strings.Contains(out.String(), "pass_not_local") {
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
