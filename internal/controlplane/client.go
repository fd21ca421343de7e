package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"
)

// The control socket's wire format and its client: one JSON Request per
// connection, one JSON Response back (a stream of them for monitor), then
// the server closes the connection. The daemon serves it (cmd/xdplb); the
// CLI and the soak (internal/soak) are its clients.

// Request is a control-socket request.
type Request struct {
	// Command is one of: status, vips, backends, conntrack, maglev, explain,
	// reload, plan, monitor, top, bgp, drain, undrain, announce.
	Command string `json:"command"`
	// VIP selects a VIP ("ADDR:PORT/PROTO", as xdp.VIPKey.String prints
	// it): a filter for conntrack, the subject of maglev and explain.
	VIP string `json:"vip,omitempty"`
	// From is the client ("ADDR:PORT") for explain.
	From string `json:"from,omitempty"`
	// SYN makes explain run a TCP SYN rather than an ACK.
	SYN bool `json:"syn,omitempty"`
	// Name and Config are the candidate file of plan: its name (for
	// errors) and content. No Config plans the daemon's own file.
	Name   string `json:"name,omitempty"`
	Config []byte `json:"config,omitempty"`
	// Filter selects the events of monitor.
	Filter *MonitorFilter `json:"filter,omitempty"`
	// State is active or standby for announce; empty asks for the state.
	State string `json:"state,omitempty"`
}

// Response is a control-socket response: Data on success, Error otherwise.
type Response struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// ControlTimeout bounds one exchange on the control socket, on both sides.
const ControlTimeout = 10 * time.Second

var (
	// ErrNotRunning is returned by Dial, Call and Stream when nothing
	// listens on the socket.
	ErrNotRunning = errors.New("xdplb is not running")
	// ErrControlPermission is returned by Dial, Call and Stream when the
	// caller may not connect to the socket.
	ErrControlPermission = errors.New("permission denied")
)

// Dial connects to the daemon's control socket at path; its errors say
// what to do: ErrNotRunning, ErrControlPermission.
func Dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%w (no control socket at %s); start it with 'systemctl start xdplb' or 'xdplb run'", ErrNotRunning, path)
		case errors.Is(err, fs.ErrPermission):
			return nil, fmt.Errorf("%w on %s: the control socket is root-only; run with sudo", ErrControlPermission, path)
		}
		return nil, fmt.Errorf("connecting to the control socket %s: %w", path, err)
	}
	return c, nil
}

// Call sends req to the daemon listening at path and decodes the answer's
// data into out (unless out is nil). A daemon error is returned with the
// daemon's text; connection errors say what to do (Dial).
func Call(ctx context.Context, path string, req Request, out any) error {
	c, done, err := send(ctx, path, req, time.Now().Add(ControlTimeout))
	if err != nil {
		return err
	}
	defer done()
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return ioError(ctx, path, "reading the answer", err)
	}
	if !resp.OK {
		if resp.Error == "" {
			return fmt.Errorf("xdplb on %s answered with an error and no text", path)
		}
		return errors.New(resp.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Data, out); err != nil {
		return fmt.Errorf("decoding the answer of xdplb on %s: %w", path, err)
	}
	return nil
}

// Stream sends req to the daemon at path and calls fn with the data of each
// Response it streams back, until the daemon closes the stream, ctx ends
// (nil) or fn fails. A Response with an error ends it with that error.
func Stream(ctx context.Context, path string, req Request, fn func(json.RawMessage) error) error {
	c, done, err := send(ctx, path, req, time.Time{})
	if err != nil {
		return err
	}
	defer done()
	dec := json.NewDecoder(c)
	for {
		var resp Response
		if err := dec.Decode(&resp); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("xdplb on %s ended the stream", path)
			}
			return fmt.Errorf("control socket %s: reading the stream: %w", path, err)
		}
		if !resp.OK {
			return errors.New(resp.Error)
		}
		if err := fn(resp.Data); err != nil {
			return err
		}
	}
}

// send dials path and sends req, with deadline on the connection (none if
// zero) and ctx's end cutting it short; done closes it.
func send(ctx context.Context, path string, req Request, deadline time.Time) (c net.Conn, done func(), err error) {
	if c, err = Dial(ctx, path); err != nil {
		return nil, nil, err
	}
	c.SetDeadline(deadline) // before ctx's end may set one
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	done = func() {
		stop()
		c.Close()
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		done()
		return nil, nil, ioError(ctx, path, "sending the request", err)
	}
	return c, done, nil
}

func ioError(ctx context.Context, path, doing string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("xdplb on %s did not answer within %v", path, ControlTimeout)
	}
	return fmt.Errorf("control socket %s: %s: %w", path, doing, err)
}
