package cdccache

// The exact L1: version records and values held in process, valid until
// Redis reports a change of a version record through client tracking.
//
// Each primary gets one dedicated connection that turns on tracking in
// broadcasting mode for the version prefix, redirected to itself, and then
// subscribes to __redis__:invalidate: Redis then publishes on it the names
// of the version records written on that node, whoever wrote them. The
// tracking and the subscription live and die with that one connection, so
// a dropped connection cannot leave tracking half on. The L1 is live only
// while every primary's connection is subscribed; any drop, reconnect,
// silence past twice the health interval or change of primaries clears it.
//
// A read of version records registers before it is sent; an invalidation
// (or a reset) processed while it is in flight marks it dirty, and a dirty
// read's versions are not stored. So a record is held only when no change
// of it was reported between the read's start and its end.

import (
	"container/list"
	"context"
	"errors"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

const invalidateChannel = "__redis__:invalidate"

type heldRecord struct {
	key     string
	version uint64
	element *list.Element
}

type heldValue struct {
	dataKey string
	value   []byte
	records []string
	// expires is when its Redis time to live ends; zero: no TTL.
	expires time.Time
	element *list.Element
}

type pendingRead struct {
	records []string
	session uint64
	dirty   bool
}

type exactL1 struct {
	maxEntries, maxBytes int

	mu sync.Mutex
	// expected are the primaries' addresses; live the ones whose tracking
	// connection is subscribed. The L1 serves only while all are live.
	expected map[string]bool
	live     map[string]bool
	// session grows with every reset: a read begun in an older session is
	// never stored.
	session  uint64
	records  map[string]*heldRecord
	recordsL *list.List
	values   map[string]*heldValue
	valuesL  *list.List
	bytes    int
	byRecord map[string]map[string]struct{}
	pending  map[string]map[*pendingRead]struct{}
}

func newExactL1(maxEntries, maxBytes int) *exactL1 {
	l := &exactL1{
		maxEntries: maxEntries,
		maxBytes:   maxBytes,
		expected:   map[string]bool{},
		live:       map[string]bool{},
		pending:    map[string]map[*pendingRead]struct{}{},
	}
	l.resetLocked()
	return l
}

func (l *exactL1) serving() bool {
	if len(l.expected) == 0 {
		return false
	}
	for addr := range l.expected {
		if !l.live[addr] {
			return false
		}
	}
	return true
}

// setExpected names the primaries to track; a change clears the L1.
func (l *exactL1) setExpected(addrs []string) (dropped int, changed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	same := len(addrs) == len(l.expected)
	for _, a := range addrs {
		same = same && l.expected[a]
	}
	if same {
		return 0, false
	}
	l.expected = map[string]bool{}
	for _, a := range addrs {
		l.expected[a] = true
	}
	for a := range l.live {
		if !l.expected[a] {
			delete(l.live, a)
		}
	}
	return l.resetLocked(), true
}

// goLive: addr's tracking connection subscribed; a new session begins on
// an empty L1.
func (l *exactL1) goLive(addr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live[addr] = true
	return l.resetLocked()
}

// goDark: addr's tracking is lost; the L1 is emptied and unused until back.
func (l *exactL1) goDark(addr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.live, addr)
	return l.resetLocked()
}

// invalidate drops the records Redis reported changed, and their values.
func (l *exactL1) invalidate(keys []string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	dropped := 0
	for _, key := range keys {
		for p := range l.pending[key] {
			p.dirty = true
		}
		if r := l.records[key]; r != nil {
			l.recordsL.Remove(r.element)
			delete(l.records, key)
			dropped++
		}
		for dataKey := range l.byRecord[key] {
			dropped += l.dropValueLocked(dataKey)
		}
	}
	return dropped
}

// lookup is the data key and value when every record and the value are held.
func (l *exactL1) lookup(layout *Layout, now time.Time) (dataKey string, value []byte, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.serving() {
		return "", nil, false
	}
	var buf [8]uint64
	versions := buf[:0]
	for _, record := range layout.Records {
		r := l.records[record]
		if r == nil {
			return "", nil, false
		}
		versions = append(versions, r.version)
	}
	dataKey = layout.DataKey(versions[0], versions[1:])
	v := l.values[dataKey]
	if v == nil {
		return "", nil, false
	}
	if !v.expires.IsZero() && !now.Before(v.expires) {
		l.dropValueLocked(dataKey)
		return "", nil, false
	}
	l.valuesL.MoveToBack(v.element)
	for _, record := range layout.Records {
		l.recordsL.MoveToBack(l.records[record].element)
	}
	return dataKey, v.value, true
}

// begin registers a read of records about to be sent; nil while the L1
// does not serve (nothing will be stored).
func (l *exactL1) begin(records []string) *pendingRead {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.serving() {
		return nil
	}
	p := &pendingRead{records: records, session: l.session}
	for _, record := range records {
		set := l.pending[record]
		if set == nil {
			set = map[*pendingRead]struct{}{}
			l.pending[record] = set
		}
		set[p] = struct{}{}
	}
	return p
}

// commit ends a read; it stores the versions (the epoch's e, then each
// record's v, in p.records' order) unless the read failed (versions nil),
// an invalidation or a reset came while it was in flight, or covered says
// a record lives where no tracking connection listens.
func (l *exactL1) commit(p *pendingRead, versions []uint64, covered func(string) bool) {
	if p == nil {
		return
	}
	ok := versions != nil
	if ok && covered != nil {
		for _, record := range p.records {
			if !covered(record) {
				ok = false
				break
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, record := range p.records {
		if set := l.pending[record]; set != nil {
			delete(set, p)
			if len(set) == 0 {
				delete(l.pending, record)
			}
		}
	}
	if !ok || p.dirty || p.session != l.session || !l.serving() {
		return
	}
	for i, record := range p.records {
		if r := l.records[record]; r != nil {
			r.version = versions[i]
			l.recordsL.MoveToBack(r.element)
			continue
		}
		r := &heldRecord{key: record, version: versions[i]}
		r.element = l.recordsL.PushBack(r)
		l.records[record] = r
	}
	for len(l.records) > l.maxEntries {
		oldest := l.recordsL.Front().Value.(*heldRecord)
		l.recordsL.Remove(oldest.element)
		delete(l.records, oldest.key)
		for dataKey := range l.byRecord[oldest.key] {
			l.dropValueLocked(dataKey)
		}
	}
}

// putValue holds a value whose records are held; it is never held past
// expires (its Redis time to live), so no L1 value outlives the TTL the
// daemon counts on.
func (l *exactL1) putValue(dataKey string, value []byte, records []string, expires time.Time) {
	if len(value) > l.maxBytes {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.serving() {
		return
	}
	for _, record := range records {
		if l.records[record] == nil {
			// Invalidated meanwhile (or never held): nothing would find
			// the value, and nothing would drop it.
			return
		}
	}
	l.dropValueLocked(dataKey)
	v := &heldValue{dataKey: dataKey, value: value, records: records, expires: expires}
	v.element = l.valuesL.PushBack(v)
	l.values[dataKey] = v
	l.bytes += len(value)
	for _, record := range records {
		set := l.byRecord[record]
		if set == nil {
			set = map[string]struct{}{}
			l.byRecord[record] = set
		}
		set[dataKey] = struct{}{}
	}
	for len(l.values) > l.maxEntries || l.bytes > l.maxBytes {
		l.dropValueLocked(l.valuesL.Front().Value.(*heldValue).dataKey)
	}
}

func (l *exactL1) sizes() (records, values, bytes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.records), len(l.values), l.bytes
}

func (l *exactL1) dropValueLocked(dataKey string) int {
	v := l.values[dataKey]
	if v == nil {
		return 0
	}
	delete(l.values, dataKey)
	l.valuesL.Remove(v.element)
	l.bytes -= len(v.value)
	for _, record := range v.records {
		if set := l.byRecord[record]; set != nil {
			delete(set, dataKey)
			if len(set) == 0 {
				delete(l.byRecord, record)
			}
		}
	}
	return 1
}

func (l *exactL1) resetLocked() int {
	dropped := len(l.records) + len(l.values)
	l.records = map[string]*heldRecord{}
	l.recordsL = list.New()
	l.values = map[string]*heldValue{}
	l.valuesL = list.New()
	l.bytes = 0
	l.byRecord = map[string]map[string]struct{}{}
	for _, set := range l.pending {
		for p := range set {
			p.dirty = true
		}
	}
	l.session++
	return dropped
}

// ---------------------------------------------------------------- connections

// trackedNode is one primary's tracking connection.
type trackedNode struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// trackingOptions copies a node client's options for the dedicated
// tracking connection: RESP2 (invalidations arrive as Pub/Sub messages on
// the redirect connection) and tracking turned on at every (re)connect,
// before the subscription.
func trackingOptions(node *redis.Options, prefix string) *redis.Options {
	clone := *node
	opt := &clone
	if node.MaintNotificationsConfig != nil {
		maint := *node.MaintNotificationsConfig
		opt.MaintNotificationsConfig = &maint
	}
	opt.Protocol = 2
	opt.PoolSize = 1
	opt.MinIdleConns = 0
	opt.MaxIdleConns = 0
	userOnConnect := node.OnConnect
	opt.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		if userOnConnect != nil {
			if err := userOnConnect(ctx, cn); err != nil {
				return err
			}
		}
		id, err := cn.ClientID(ctx).Result()
		if err != nil {
			return err
		}
		return cn.Process(ctx, redis.NewStatusCmd(ctx, "CLIENT", "TRACKING", "ON", "REDIRECT", id, "BCAST", "PREFIX", prefix))
	}
	return opt
}

// runTracking keeps one tracking connection per primary until ctx ends.
func (c *Cache) runTracking(ctx context.Context) {
	interval := c.s.tracking.HealthInterval
	nodes := map[string]*trackedNode{}
	defer func() {
		for _, n := range nodes {
			n.cancel()
			<-n.done
		}
	}()
	for {
		primaries, err := c.primaries(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.s.logger.Warn("cdccache: listing the primaries for client tracking failed", "cache", c.s.name, "error", err)
		} else {
			addrs := make([]string, 0, len(primaries))
			for addr := range primaries {
				addrs = append(addrs, addr)
			}
			sort.Strings(addrs)
			if dropped, changed := c.exact.setExpected(addrs); changed {
				c.m.l1Reset.Add(float64(dropped))
			}
			for addr, n := range nodes {
				if primaries[addr] == nil {
					n.cancel()
					<-n.done
					delete(nodes, addr)
				}
			}
			for addr, opt := range primaries {
				if nodes[addr] == nil {
					nctx, cancel := context.WithCancel(ctx)
					n := &trackedNode{cancel: cancel, done: make(chan struct{})}
					nodes[addr] = n
					go func() {
						defer close(n.done)
						c.trackNode(nctx, addr, opt)
					}()
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// primaries are the addresses and options of the primaries to track.
func (c *Cache) primaries(ctx context.Context) (map[string]*redis.Options, error) {
	out := map[string]*redis.Options{}
	if c.cluster == nil {
		opt := c.standalone.Options()
		out[opt.Addr] = opt
		return out, nil
	}
	var mu sync.Mutex
	err := c.cluster.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		opt := node.Options()
		mu.Lock()
		out[opt.Addr] = opt
		mu.Unlock()
		return nil
	})
	return out, err
}

// covered says whether a record's primary is tracked (Cluster only).
func (c *Cache) covered(record string) bool {
	node, err := c.cluster.MasterForKey(context.Background(), record)
	if err != nil {
		return false
	}
	c.exact.mu.Lock()
	defer c.exact.mu.Unlock()
	return c.exact.live[node.Options().Addr]
}

// trackNode runs one primary's tracking connection until ctx ends.
func (c *Cache) trackNode(ctx context.Context, addr string, node *redis.Options) {
	interval := c.s.tracking.HealthInterval
	client := redis.NewClient(trackingOptions(node, c.s.prefix))
	defer client.Close()
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		sub := client.Subscribe(ctx, invalidateChannel)
		lastHeard := time.Now()
		for ctx.Err() == nil {
			msg, err := sub.ReceiveTimeout(ctx, interval)
			if err != nil {
				var netErr net.Error
				if errors.As(err, &netErr) && netErr.Timeout() && time.Since(lastHeard) < 2*interval {
					_ = sub.Ping(ctx)
					continue
				}
				if ctx.Err() == nil {
					// A flush of the database arrives as a message without
					// keys, which go-redis reports as an error: the reset
					// below is the right answer to it too.
					c.s.logger.Warn("cdccache: a tracking connection was lost or reset; the L1 is cleared", "cache", c.s.name, "addr", addr, "error", err)
				}
				break
			}
			lastHeard = time.Now()
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" && m.Channel == invalidateChannel {
					c.m.l1Reset.Add(float64(c.exact.goLive(addr)))
					backoff = 50 * time.Millisecond
				}
			case *redis.Message:
				keys := m.PayloadSlice
				if keys == nil && m.Payload != "" {
					keys = []string{m.Payload}
				}
				c.m.l1Tracking.Add(float64(c.exact.invalidate(keys)))
			}
		}
		_ = sub.Close()
		c.m.l1Reset.Add(float64(c.exact.goDark(addr)))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
