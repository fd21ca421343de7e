package testnet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// netnsNames lists /run/netns.
func netnsNames(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// newTestNS creates a namespace for t and deletes it in t.Cleanup.
func newTestNS(t *testing.T, prefix string) *NS {
	t.Helper()
	RequirePrivileged(t)
	ns, err := NewNS(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// threadNS returns the identity of the calling thread's network namespace;
// call it with the goroutine locked to its thread.
func threadNS(t testing.TB) string {
	t.Helper()
	h, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	return h.UniqueId()
}

func TestNewNSPrefix(t *testing.T) {
	for _, prefix := range []string{"", "ninechars", "a/b", "a b"} {
		if ns, err := NewNS(prefix); err == nil {
			ns.Close()
			t.Errorf("NewNS(%q) succeeded, want an error", prefix)
		}
	}
}

func TestProcSysPath(t *testing.T) {
	for key, want := range map[string]string{
		"net.ipv4.ip_forward":              "/proc/sys/net/ipv4/ip_forward",
		"net/ipv4/conf/eth0.100/rp_filter": "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
		"net.ipv6.conf.all.forwarding":     "/proc/sys/net/ipv6/conf/all/forwarding",
		"net/ipv6/conf/default/accept_dad": "/proc/sys/net/ipv6/conf/default/accept_dad",
	} {
		if got := procSysPath(key); got != want {
			t.Errorf("procSysPath(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestNSLifecycle(t *testing.T) {
	RequirePrivileged(t)
	ns, err := NewNS("xtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })

	if !strings.HasPrefix(ns.Name, "xtest-") || len(ns.Name) > 15 {
		t.Errorf("name %q: want prefix xtest- and at most 15 bytes", ns.Name)
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, ns.Name)); err != nil {
		t.Errorf("namespace not under %s: %v", NetnsDir, err)
	}

	runtime.LockOSThread()
	outside := threadNS(t)
	var inside string
	if err := ns.Do(func() error { inside = threadNS(t); return nil }); err != nil {
		t.Fatal(err)
	}
	after := threadNS(t)
	runtime.UnlockOSThread()
	if inside == outside {
		t.Errorf("Do ran in the caller's namespace %s", outside)
	}
	if after != outside {
		t.Errorf("after Do the thread is in %s, want %s", after, outside)
	}

	lo, err := ns.Netlink().LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
		t.Errorf("lo is down: %v", lo.Attrs().Flags)
	}

	// A per-namespace sysctl changes inside only.
	rootBefore, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	want := "1"
	if strings.TrimSpace(string(rootBefore)) == "1" {
		want = "0"
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", want); err != nil {
		t.Fatal(err)
	}
	if got, err := ns.ReadSysctl("net.ipv4.ip_forward"); err != nil || got != want {
		t.Errorf("ReadSysctl(net.ipv4.ip_forward) = %q, %v; want %q", got, err, want)
	}
	rootAfter, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	if string(rootAfter) != string(rootBefore) {
		t.Errorf("root namespace ip_forward changed from %q to %q", rootBefore, rootAfter)
	}
	if err := ns.Sysctl("net.ipv4.no_such_thing", "1"); err == nil {
		t.Error("Sysctl(net.ipv4.no_such_thing) succeeded")
	}

	// A command sees only the namespace's interfaces.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "cat", "/proc/net/dev").Output()
	if err != nil {
		t.Fatalf("Command: %v", err)
	}
	var ifaces []string
	for _, line := range strings.Split(string(out), "\n")[2:] {
		if name, _, ok := strings.Cut(line, ":"); ok {
			ifaces = append(ifaces, strings.TrimSpace(name))
		}
	}
	if len(ifaces) != 1 || ifaces[0] != "lo" {
		t.Errorf("interfaces seen by a command in the namespace: %v, want [lo]", ifaces)
	}

	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, ns.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, %s/%s: %v, want it gone", NetnsDir, ns.Name, err)
	}
	if err := ns.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestNSDoRestoresOnPanic(t *testing.T) {
	ns := newTestNS(t, "xpanic")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	outside := threadNS(t)
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want boom", p)
			}
		}()
		ns.Do(func() error { panic("boom") })
	}()
	if got := threadNS(t); got != outside {
		t.Errorf("after a panic in Do the thread is in %s, want %s", got, outside)
	}
}

func TestNSDoRestoresOnGoexit(t *testing.T) {
	ns := newTestNS(t, "xgoexit")
	result := make(chan string, 2)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		result <- threadNS(t)
		defer func() { result <- threadNS(t) }()
		ns.Do(func() error { runtime.Goexit(); return nil }) // as t.FailNow does
	}()
	outside, after := <-result, <-result
	if after != outside {
		t.Errorf("after Goexit in Do the thread is in %s, want %s", after, outside)
	}
}

func TestNSDoReturnsError(t *testing.T) {
	ns := newTestNS(t, "xerr")
	want := errors.New("from fn")
	if err := ns.Do(func() error { return want }); err != want {
		t.Errorf("Do = %v, want %v", err, want)
	}
}

// TestNSSockets checks that sockets belong to the namespace they were made in:
// a listener on 127.0.0.1 in one namespace is reachable from it and not from
// another.
func TestNSSockets(t *testing.T) {
	a, b := newTestNS(t, "xsocka"), newTestNS(t, "xsockb")
	l, err := a.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("a"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := a.Dial(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dialing within the namespace: %v", err)
	}
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil || buf[0] != 'a' {
		t.Errorf("read %q, %v; want \"a\"", buf, err)
	}
	c.Close()
	if c, err := b.Dial(ctx, "tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Errorf("dialing %v from another namespace succeeded", l.Addr())
	}
	pc, err := b.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
}
