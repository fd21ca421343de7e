package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/internal/controlplane"
)

// The control socket: one JSON Request per connection, one JSON Response
// back, then the server closes the connection. The wire format and the
// client are controlplane's (client.go); this is the server.

// defaultSocket is where the daemon listens unless paths.socket says
// otherwise, and where the CLI looks unless --socket says otherwise.
const defaultSocket = "/run/xdplb/xdplb.sock"

// maxRequestSize bounds a request; real ones are under a hundred bytes, but
// a plan carries a configuration file.
const maxRequestSize = 16 << 20

var (
	// errAnotherRunning is returned by serveControl when a live daemon
	// already answers on the socket.
	errAnotherRunning = errors.New("another xdplb is running")
)

// serveControl answers requests for api on a unix socket at path until ctx
// is done, then closes the socket and removes its file. The parent
// directory is created (0755) if missing; a stale socket file left by a
// daemon that died is replaced, but a live one is an error
// (errAnotherRunning). The socket gets mode (0600, root only, when zero)
// before it appears at path.
func serveControl(ctx context.Context, path string, mode os.FileMode, api controlAPI, log *slog.Logger) error {
	if mode == 0 {
		mode = 0o600
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating the control socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	ln, err := listenUnixMode(path, mode)
	if err != nil {
		return err
	}
	self, err := os.Stat(path)
	if err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	defer func() {
		// Remove the file only if it is still ours: a daemon started after
		// us may have replaced it.
		if fi, err := os.Stat(path); err == nil && os.SameFile(fi, self) {
			os.Remove(path)
		}
	}()
	log.Info("control socket listening", "path", path, "mode", fmt.Sprintf("%#o", mode))

	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("control socket %s: %w", path, err)
			}
			// Out of file descriptors or similar: the condition may pass.
			log.Warn("control socket: accepting a connection", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveControlConn(ctx, c, api, log)
		}()
	}
}

// listenUnixMode listens on a socket that appears at path with mode: it is
// bound under a temporary name, chmod'ed, then renamed into place, so that it
// is never reachable with the permissions of the umask.
func listenUnixMode(path string, mode os.FileMode) (*net.UnixListener, error) {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+strconv.Itoa(os.Getpid()))
	os.Remove(tmp) // left by a previous process with our pid
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on the control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // serveControl removes path itself
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("control socket: %w", err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("control socket: %w", err))
	}
	return ln, nil
}

// removeStaleSocket removes the socket file at path if nothing answers on
// it. It refuses to remove anything that is not a socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: the file exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w on %s", errAnotherRunning, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control socket %s: probing for a running xdplb: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing the stale control socket: %w", err)
	}
	return nil
}

// serveControlConn answers the one request on c and closes it. It returns
// within controlplane.ControlTimeout of its start, or when ctx is done, or
// when the api call it makes returns, whichever is last.
func serveControlConn(ctx context.Context, c *net.UnixConn, api controlAPI, log *slog.Logger) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	c.SetDeadline(time.Now().Add(controlplane.ControlTimeout))

	var req Request
	dec := json.NewDecoder(io.LimitReader(c, maxRequestSize))
	dec.DisallowUnknownFields()
	var resp Response
	err := dec.Decode(&req)
	if err == nil && req.Command == "monitor" {
		serveMonitor(ctx, c, api, req, log)
		return
	}
	if err != nil {
		resp.Error = fmt.Sprintf("decoding the request: %v", err)
	} else if data, err := dispatchControl(api, req); err != nil {
		resp.Error = err.Error()
	} else if resp.Data, err = json.Marshal(data); err != nil {
		resp.Error = fmt.Sprintf("encoding the answer: %v", err)
	} else {
		resp.OK = true
	}
	if !resp.OK {
		log.Debug("control request failed", "command", req.Command, "err", resp.Error)
	}
	if err := json.NewEncoder(c).Encode(resp); err != nil && ctx.Err() == nil {
		log.Warn("control socket: writing an answer", "command", req.Command, "err", err)
	}
}

// monitorWriteTimeout bounds the write of one event to a monitor client: a
// client that reads nothing for that long is gone. (A slow one loses events
// meanwhile; nothing waits for it but its own stream.)
const monitorWriteTimeout = time.Minute

// serveMonitor streams events on c: one Response per line, each with one
// MonitorEvent, until the client closes the connection or ctx is done. A
// request the daemon refuses gets one Response with the error.
func serveMonitor(ctx context.Context, c *net.UnixConn, api controlAPI, req Request, log *slog.Logger) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.SetDeadline(time.Time{})
	// The client sends nothing more: a read that ends means it left.
	go func() {
		io.Copy(io.Discard, c)
		cancel()
	}()
	enc := json.NewEncoder(c)
	var f MonitorFilter
	if req.Filter != nil {
		f = *req.Filter
	}
	err := api.Monitor(ctx, f, func(e MonitorEvent) error {
		data, err := json.Marshal(e)
		if err != nil {
			return err
		}
		c.SetWriteDeadline(time.Now().Add(monitorWriteTimeout))
		return enc.Encode(Response{OK: true, Data: data})
	})
	if err != nil && ctx.Err() == nil {
		c.SetWriteDeadline(time.Now().Add(controlplane.ControlTimeout))
		if werr := enc.Encode(Response{Error: err.Error()}); werr != nil {
			log.Debug("monitor: writing the error", "err", werr)
		}
	}
}

// dispatchControl calls the api method that answers req.
func dispatchControl(api controlAPI, req Request) (any, error) {
	switch req.Command {
	case "status":
		return api.Status(), nil
	case "vips":
		return api.VIPs(), nil
	case "backends":
		return api.Backends(), nil
	case "conntrack":
		return api.Flows(req.VIP)
	case "maglev":
		return api.Maglev(req.VIP)
	case "explain":
		return api.Explain(req.From, req.VIP, req.SYN)
	case "reload":
		return api.Reload(), nil
	case "plan":
		return api.Plan(req.Name, req.Config)
	case "top":
		return api.Top()
	case "bgp":
		return api.BGP()
	case "drain":
		return api.SetDrained(true)
	case "undrain":
		return api.SetDrained(false)
	case "announce":
		switch req.State {
		case "", "active", "standby":
			return api.L2State(req.State)
		}
		return nil, fmt.Errorf("announce: state %q: want active or standby", req.State)
	}
	return nil, fmt.Errorf("unknown command %q", req.Command)
}
