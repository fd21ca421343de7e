package kubetest

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNS runs fn on a locked thread inside Options.NetNS (or as it is, when
// there is none) and puts the thread back afterwards. Sockets fn opens stay
// in the namespace.
func (e *Env) inNS(fn func() error) (err error) {
	if e.opts.NetNS == "" {
		return fn()
	}
	target, err := netns.GetFromPath(e.opts.NetNS)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", e.opts.NetNS, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			// The goroutine stays locked: its thread ends with it.
			err = errors.Join(err, rerr)
			orig.Close()
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	}()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("entering network namespace %s: %w", e.opts.NetNS, err)
	}
	return fn()
}
