package health

import (
	"container/heap"
	"hash/fnv"
	"math/rand/v2"
	"time"
)

// Scheduling. A target's checks start at its phase within the interval,
// counted from the Unix epoch: phase + k×interval. The phase comes from a
// hash of the target's key, so that the targets' checks spread evenly over
// the interval and a target keeps its place across reloads; each turn then
// adds a random jitter of less than a twentieth of the interval, so that
// targets whose phases happen to be close do not stay in step.

// jitterDivisor bounds the jitter: less than interval/jitterDivisor.
const jitterDivisor = 20

// phase returns t's offset within its interval.
func phase(t *target) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(t.Key.Service))
	h.Write([]byte{0})
	b, _ := t.Key.Backend.MarshalBinary()
	h.Write(b)
	return time.Duration(h.Sum64() % uint64(t.Check.Interval))
}

// slotAtOrAfter returns t's first turn at or after now, without jitter.
func slotAtOrAfter(t *target, now time.Time) time.Time {
	iv := int64(t.Check.Interval)
	off := int64(phase(t))
	n := now.UnixNano() - off
	k := n / iv
	if k*iv < n {
		k++
	}
	return time.Unix(0, k*iv+off)
}

func (c *Checker) jitter(interval time.Duration) time.Duration {
	n := int64(interval / jitterDivisor)
	if n <= 0 {
		return 0
	}
	if c.opts.Rand != nil {
		return time.Duration(c.opts.Rand.Int64N(n))
	}
	return time.Duration(rand.Int64N(n))
}

// schedule queues t's first check, in its first turn from now.
func (c *Checker) schedule(t *target, now time.Time) {
	t.slot = slotAtOrAfter(t, now)
	t.due = t.slot.Add(c.jitter(t.Check.Interval))
	c.queue.push(t)
}

// reschedule queues t's check of its next turn. A Checker that fell behind
// (a long pause, a saturated pool) does not catch up with a burst: turns
// already past are skipped.
func (c *Checker) reschedule(t *target, now time.Time) {
	t.slot = t.slot.Add(t.Check.Interval)
	if t.slot.Before(now) {
		t.slot = slotAtOrAfter(t, now)
	}
	t.due = t.slot.Add(c.jitter(t.Check.Interval))
	c.queue.push(t)
}

// dueQueue is a min-heap of targets by due time.
type dueQueue []*target

func (q dueQueue) Len() int { return len(q) }
func (q dueQueue) Less(i, j int) bool {
	if !q[i].due.Equal(q[j].due) {
		return q[i].due.Before(q[j].due)
	}
	return compareKeys(q[i].Key, q[j].Key) < 0
}
func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *dueQueue) Push(x any) {
	t := x.(*target)
	t.index = len(*q)
	*q = append(*q, t)
}
func (q *dueQueue) Pop() any {
	old := *q
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	t.index = -1
	return t
}

func (q *dueQueue) push(t *target) { heap.Push(q, t) }
func (q *dueQueue) pop() *target   { return heap.Pop(q).(*target) }

// remove takes t out of the queue if it is in it.
func (q *dueQueue) remove(t *target) {
	if t.index >= 0 && t.index < len(*q) && (*q)[t.index] == t {
		heap.Remove(q, t.index)
	}
}
