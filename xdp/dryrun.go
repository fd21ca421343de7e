package xdp

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// The dry-run build is the load-balancer program compiled with cfg_dry_run
// set (bpf/lb.h, object dryrun): the same code, which counts nothing, pins nothing and
// transmits nothing, and notes what it would have done in its own map
// dry_result. It is loaded with the datapath's maps (MapReplacements), so it
// sees the live tables, backends and pins, pinned by this process or by an
// earlier one.

// DryRunResult is what the program would do with a frame.
type DryRunResult struct {
	// Verdict is the XDP action (XDPPass, XDPDrop, XDPTx, XDPRedirect).
	Verdict uint32
	// Reason is the verdict counter the packet would have counted, named as
	// Counters names it: "tx/dsr_l2", "pass/not_vip", "drop/no_backend", ...
	Reason string
	// BackendID is the backend the packet was sent to; 0 when none.
	BackendID uint32
	// Pin is the pin the program would have written for the flow: "" (none),
	// "create" or "replace" (a pin replacing one to a backend down or gone).
	Pin string
	// Out is the frame as it leaves, for XDPTx and XDPRedirect; nil otherwise.
	Out []byte
}

// dryObjects is the dry-run build: its program and its private result map.
type dryObjects struct {
	Prog   *ebpf.Program `ebpf:"xdplb"`
	Result *ebpf.Map     `ebpf:"dry_result"`
}

func (o *dryObjects) close() error {
	return errors.Join(o.Prog.Close(), o.Result.Close())
}

// DryRun runs frame once through the dry-run build of the program
// (BPF_PROG_TEST_RUN) against the datapath's maps and reports what the
// program would do with it, changing nothing: no counter, no pin, no pin's
// last-seen stamp, no transmit. The build is loaded by the first call, with
// the datapath's knobs, and released by Close.
//
// The frame runs as BPF_PROG_TEST_RUN runs it, as if it arrived on the
// loopback interface: a backend behind any other interface shows as
// XDPRedirect (or drop/redirect_failed when that interface is no tx port)
// where a frame arriving on the backend's interface would be sent with
// XDPTx. DryRunOn says on which interface it arrives.
func (d *Datapath) DryRun(frame []byte) (DryRunResult, error) { return d.DryRunOn(frame, 0) }

// xdpMD is the program's context (struct xdp_md) as BPF_PROG_TEST_RUN takes
// it: data_end the frame's length, and the ingress interface.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// DryRunOn is DryRun for a frame arriving on the interface of index
// ingress (0: loopback, as DryRun), which must exist in the caller's network
// namespace.
func (d *Datapath) DryRunOn(frame []byte, ingress int) (DryRunResult, error) {
	d.dryMu.Lock()
	defer d.dryMu.Unlock()
	o, err := d.loadDryRun()
	if err != nil {
		return DryRunResult{}, err
	}
	if err := o.Result.Put(uint32(0), &lbDryOutcome{}); err != nil {
		return DryRunResult{}, fmt.Errorf("dry run: clearing the result: %w", err)
	}
	opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+512)}
	if ingress > 0 {
		opts.Context = xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ingress)}
	}
	verdict, err := o.Prog.Run(&opts)
	if err != nil {
		return DryRunResult{}, fmt.Errorf("dry run: %w", err)
	}
	var out lbDryOutcome
	if err := o.Result.Lookup(uint32(0), &out); err != nil {
		return DryRunResult{}, fmt.Errorf("dry run: reading the result: %w", err)
	}
	if out.Done != 1 {
		return DryRunResult{}, fmt.Errorf("dry run: verdict %d without a result: the program did not finish", verdict)
	}
	n, ok := counterNames[lbXdplbCounter(out.Reason)]
	if !ok || out.Reason >= uint32(lbXdplbCounterCOUNTER_EVENTS) {
		return DryRunResult{}, fmt.Errorf("dry run: reason %d is no verdict counter", out.Reason)
	}
	r := DryRunResult{Verdict: verdict, Reason: n.action + "/" + n.reason, BackendID: out.BackendId}
	switch lbXdplbDryPin(out.Pin) {
	case lbXdplbDryPinDRY_PIN_CREATE:
		r.Pin = "create"
	case lbXdplbDryPinDRY_PIN_REPLACE:
		r.Pin = "replace"
	}
	if verdict == XDPTx || verdict == XDPRedirect {
		r.Out = opts.DataOut
	}
	return r, nil
}

// loadDryRun loads the dry-run build once. d.dryMu is held.
func (d *Datapath) loadDryRun() (*dryObjects, error) {
	if d.dryClosed {
		return nil, errors.New("dry run: datapath closed")
	}
	if d.dry != nil {
		return d.dry, nil
	}
	spec, err := loadDryrun()
	if err != nil {
		return nil, err
	}
	if err := d.opts.configure(spec); err != nil {
		return nil, fmt.Errorf("loading the dry-run build: %w", err)
	}
	var o dryObjects
	if err := spec.LoadAndAssign(&o, &ebpf.CollectionOptions{MapReplacements: d.maps()}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the dry-run build: %+v", ve)
		}
		return nil, fmt.Errorf("loading the dry-run build: %w", err)
	}
	d.dry = &o
	return d.dry, nil
}

// closeDryRun releases the dry-run build; later DryRun calls fail.
func (d *Datapath) closeDryRun() error {
	d.dryMu.Lock()
	defer d.dryMu.Unlock()
	d.dryClosed = true
	if d.dry == nil {
		return nil
	}
	err := d.dry.close()
	d.dry = nil
	return err
}
