package cdccache

// The bounded L1 (readers/spec.md section 8): entries served while verified
// within a bound, dropped early by the daemon's notices, cleared whenever
// the notice subscription drops or restarts.

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

type boundedEntry struct {
	id       string
	dataKey  string
	value    []byte
	records  []string
	verified time.Time
	// element is the entry's place in the insertion order (oldest first).
	element *list.Element
}

type boundedL1 struct {
	maxEntries  int
	epochRecord string

	mu       sync.Mutex
	entries  map[string]*boundedEntry
	order    *list.List
	byRecord map[string]map[string]struct{}
}

func newBoundedL1(maxEntries int, prefix string) *boundedL1 {
	return &boundedL1{
		maxEntries:  maxEntries,
		epochRecord: prefix + "epoch",
		entries:     make(map[string]*boundedEntry),
		order:       list.New(),
		byRecord:    make(map[string]map[string]struct{}),
	}
}

// fresh is the entry's value and data key when it was verified within bound.
func (l *boundedL1) fresh(id string, bound time.Duration, now time.Time) (value []byte, dataKey string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[id]
	if e == nil || now.Sub(e.verified) > bound {
		return nil, "", false
	}
	return e.value, e.dataKey, true
}

// put stores or re-verifies an entry. verified is when the Redis read
// began, so the bound also covers a notice that raced with the read.
func (l *boundedL1) put(id, dataKey string, value []byte, records []string, verified time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.entries[id]; e != nil {
		if verified.After(e.verified) {
			e.dataKey, e.value, e.verified = dataKey, value, verified
		}
		return
	}
	for len(l.entries) >= l.maxEntries {
		l.remove(l.order.Front().Value.(*boundedEntry))
	}
	e := &boundedEntry{id: id, dataKey: dataKey, value: value, records: records, verified: verified}
	e.element = l.order.PushBack(e)
	l.entries[id] = e
	for _, record := range records {
		ids := l.byRecord[record]
		if ids == nil {
			ids = make(map[string]struct{})
			l.byRecord[record] = ids
		}
		ids[id] = struct{}{}
	}
}

// invalidate drops every entry depending on record; returns how many.
func (l *boundedL1) invalidate(record string) int {
	if record == l.epochRecord {
		return l.clear()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	dropped := 0
	for id := range l.byRecord[record] {
		if e := l.entries[id]; e != nil {
			l.remove(e)
			dropped++
		}
	}
	return dropped
}

func (l *boundedL1) clear() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.entries)
	l.entries = make(map[string]*boundedEntry)
	l.order.Init()
	l.byRecord = make(map[string]map[string]struct{})
	return n
}

func (l *boundedL1) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

func (l *boundedL1) remove(e *boundedEntry) {
	delete(l.entries, e.id)
	l.order.Remove(e.element)
	for _, record := range e.records {
		if ids := l.byRecord[record]; ids != nil {
			delete(ids, e.id)
			if len(ids) == 0 {
				delete(l.byRecord, record)
			}
		}
	}
}

// notice is one of the daemon's notices ([notices] redis_channel): one
// JSON object per applied bump.
type notice struct {
	Kind         string `json:"kind"`
	Target       string `json:"target"`
	RecordKey    string `json:"record_key"`
	Version      uint64 `json:"version"`
	CommitTimeUs *int64 `json:"commit_time_us"`
}

// followNotices subscribes to the daemon's notices until ctx ends: each
// notice drops the entries depending on its record; every (re)subscribe
// and every loss of the subscription clears the whole L1, since notices
// sent meanwhile are lost (they are at most once).
func (c *Cache) followNotices(ctx context.Context, channel string) {
	const silence = 5 * time.Second
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		sub := c.client.Subscribe(ctx, channel)
		lastHeard := time.Now()
		for ctx.Err() == nil {
			msg, err := sub.ReceiveTimeout(ctx, silence/2)
			if err != nil {
				var netErr net.Error
				if errors.As(err, &netErr) && netErr.Timeout() && time.Since(lastHeard) < silence {
					// Quiet, not lost: a ping proves the connection alive.
					_ = sub.Ping(ctx)
					continue
				}
				if ctx.Err() == nil {
					c.s.logger.Warn("cdccache: the L1's notice subscription was lost; the L1 is cleared", "cache", c.s.name, "error", err)
				}
				break
			}
			lastHeard = time.Now()
			backoff = 100 * time.Millisecond
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					c.m.l1Reset.Add(float64(c.l1.clear()))
					c.noticesLive.Store(true)
				}
			case *redis.Message:
				var n notice
				if err := json.Unmarshal([]byte(m.Payload), &n); err != nil || n.RecordKey == "" {
					// A notice this library cannot read could name any
					// record: clear everything rather than serve past it.
					c.m.l1Reset.Add(float64(c.l1.clear()))
					continue
				}
				c.m.l1Notice.Add(float64(c.l1.invalidate(n.RecordKey)))
				if n.CommitTimeUs != nil && *n.CommitTimeUs > 0 {
					c.m.propagation.Observe(float64(time.Now().UnixMicro()-*n.CommitTimeUs) / 1000)
				}
			}
		}
		c.noticesLive.Store(false)
		_ = sub.Close()
		c.m.l1Reset.Add(float64(c.l1.clear()))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
