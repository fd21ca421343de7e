package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/internal/testnet"
)

// The CPUs of the forwarding benchmarks: the appliance's receive work runs
// alone on applianceCPU; the generator, the sinks and everything else on
// otherCPU.
const (
	otherCPU     = 0
	applianceCPU = 1
)

// canPin reports whether the machine has the two CPUs the layout needs.
func canPin() bool { return runtime.NumCPU() >= 2 }

// withSysfs runs fn on a thread of its own, in a private mount namespace and
// inside ns's network namespace, with a sysfs mounted on /sys that shows ns's
// interfaces (a sysfs shows the network namespace of whoever mounted it). The
// thread is thrown away afterwards, so nothing else ever runs in that mount
// namespace, and nobody else sees the mount.
func withSysfs(ns *testnet.NS, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unsharing the mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("making the mounts private: %w", err)
			}
			if err := netns.Set(ns.Handle()); err != nil {
				return fmt.Errorf("entering network namespace %s: %w", ns.Name, err)
			}
			if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
				return fmt.Errorf("mounting sysfs for %s: %w", ns.Name, err)
			}
			return fn()
		}()
	}()
	return <-errc
}

// napiThread is the kernel thread that runs an interface's NAPI polls once
// threaded NAPI is on (napi/DEV-ID).
type napiThread struct {
	Dev string
	PID int
}

// threadedNAPI turns threaded NAPI on for dev in ns and returns its NAPI
// threads. A veth has NAPI only while an XDP program is attached (or GRO is
// on) and the device is up; detaching the program removes the threads, so
// call it again after every attach.
func threadedNAPI(ns *testnet.NS, dev string) ([]napiThread, error) {
	err := withSysfs(ns, func() error {
		return os.WriteFile(filepath.Join("/sys/class/net", dev, "threaded"), []byte("1"), 0)
	})
	if err != nil {
		return nil, fmt.Errorf("threaded NAPI on %s: %w", dev, err)
	}
	prefix := "napi/" + dev + "-"
	if len(prefix) > 15 { // TASK_COMM_LEN - 1
		prefix = prefix[:15]
	}
	var out []napiThread
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", d.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(comm), prefix) {
			out = append(out, napiThread{Dev: dev, PID: pid})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("threaded NAPI on %s: no %s* thread", dev, prefix)
	}
	return out, nil
}

// placeThreads pins threads to cpu; with fifo they also run SCHED_FIFO, so
// that they drain their rings before the generator on the same CPU sends
// more. Without two CPUs it does nothing.
func placeThreads(threads []napiThread, cpu int, fifo bool) error {
	if !canPin() {
		return nil
	}
	for _, t := range threads {
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(t.PID, &set); err != nil {
			return fmt.Errorf("pinning napi thread %d (%s) to CPU %d: %w", t.PID, t.Dev, cpu, err)
		}
		if fifo {
			attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 10}
			if err := unix.SchedSetAttr(t.PID, &attr, 0); err != nil {
				return fmt.Errorf("making napi thread %d (%s) SCHED_FIFO: %w", t.PID, t.Dev, err)
			}
		}
	}
	return nil
}

// runtimeOf is the CPU time a thread (or a process's main thread) has had,
// from /proc/PID/schedstat.
func runtimeOf(pid int) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "schedstat"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/%d/schedstat: empty", pid)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns), err
}

// threadsRuns sums the times threads were scheduled in (the third field of
// /proc/PID/schedstat): for a NAPI thread that sleeps when its rings are
// empty, its wake-ups.
func threadsRuns(threads []napiThread) (uint64, error) {
	var sum uint64
	for _, t := range threads {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(t.PID), "schedstat"))
		if err != nil {
			return 0, fmt.Errorf("napi thread %d (%s): %w", t.PID, t.Dev, err)
		}
		f := strings.Fields(string(b))
		if len(f) < 3 {
			return 0, fmt.Errorf("/proc/%d/schedstat: %q: want 3 fields", t.PID, b)
		}
		n, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/schedstat: %w", t.PID, err)
		}
		sum += n
	}
	return sum, nil
}

// threadsRuntime sums the CPU time of threads.
func threadsRuntime(threads []napiThread) (time.Duration, error) {
	var sum time.Duration
	for _, t := range threads {
		d, err := runtimeOf(t.PID)
		if err != nil {
			return 0, fmt.Errorf("napi thread %d (%s): %w", t.PID, t.Dev, err)
		}
		sum += d
	}
	return sum, nil
}

// processRuntime sums the CPU time of every thread of process pid.
func processRuntime(pid int) (time.Duration, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("task %d: %w", tid, err)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}

// cpuBusy is the time CPU cpu was busy (user, nice, system, irq, softirq)
// and the time stolen from it by the hypervisor, from /proc/stat.
func cpuBusy(cpu int) (busy, steal time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	name := "cpu" + strconv.Itoa(cpu)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 9 || f[0] != name {
			continue
		}
		var v [8]int64
		for i := range v {
			if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
				return 0, 0, fmt.Errorf("/proc/stat %s: %w", name, err)
			}
		}
		const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
		// user nice system idle iowait irq softirq steal
		busy = time.Duration(v[0]+v[1]+v[2]+v[5]+v[6]) * tick
		return busy, time.Duration(v[7]) * tick, nil
	}
	return 0, 0, fmt.Errorf("/proc/stat: no %s", name)
}

// onCPU runs fn on the calling goroutine's thread pinned to cpu, and puts
// the thread's affinity back afterwards. Without two CPUs it just runs fn.
func onCPU(cpu int, fn func() error) error {
	if !canPin() {
		return fn()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return fmt.Errorf("reading the thread's CPU affinity: %w", err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pinning the thread to CPU %d: %w", cpu, err)
	}
	err := fn()
	if rerr := unix.SchedSetaffinity(0, &old); rerr != nil {
		// Keep the goroutine's thread out of circulation rather than
		// leave a pinned thread to the scheduler.
		runtime.LockOSThread()
		err = errors.Join(err, fmt.Errorf("restoring the thread's CPU affinity: %w", rerr))
	}
	return err
}

// pinProcess pins every thread of this process to cpu (new threads inherit
// the affinity of the thread that makes them) and returns a function that
// puts back the affinity each had.
func pinProcess(cpu int) (restore func() error, err error) {
	if !canPin() {
		return func() error { return nil }, nil
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var procMask unix.CPUSet
	if err := unix.SchedGetaffinity(os.Getpid(), &procMask); err != nil {
		return nil, fmt.Errorf("reading the process's CPU affinity: %w", err)
	}
	old := map[int]unix.CPUSet{}
	var set unix.CPUSet
	set.Set(cpu)
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		var m unix.CPUSet
		if unix.SchedGetaffinity(tid, &m) != nil {
			continue // ended
		}
		if unix.SchedSetaffinity(tid, &set) == nil {
			old[tid] = m
		}
	}
	return func() error {
		var errs []error
		for tid, m := range old {
			if err := unix.SchedSetaffinity(tid, &m); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("restoring the CPU affinity of thread %d: %w", tid, err))
			}
		}
		// Threads made while pinned have CPU cpu only: give them the
		// affinity the process had.
		all := procMask
		if tasks, err := os.ReadDir("/proc/self/task"); err == nil {
			for _, t := range tasks {
				if tid, err := strconv.Atoi(t.Name()); err == nil {
					if _, ok := old[tid]; !ok {
						_ = unix.SchedSetaffinity(tid, &all)
					}
				}
			}
		}
		return errors.Join(errs...)
	}, nil
}
