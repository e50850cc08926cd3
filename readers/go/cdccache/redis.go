package cdccache

// Redis I/O of a get (readers/spec.md section 5): the read on a standalone
// server (one EVALSHA_RO of lua/read.lua) or on a Cluster (two pipelined
// round trips), the lease, the waiter's re-read, the fill and the release.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// snapshot is what a read found: the server time, the versions, the data
// key named from them, and the data key's value and PTTL.
type snapshot struct {
	nowUs   uint64
	epoch   uint64
	fields  []Fields
	dataKey string
	pttlMs  int64
	value   []byte
	found   bool
}

func (s *snapshot) versions() []uint64 {
	out := make([]uint64, 1+len(s.fields))
	out[0] = s.epoch
	for i, f := range s.fields {
		out[i+1] = f.V
	}
	return out
}

// replyText is a reply element as text; nil for a missing field or value.
func replyText(v any) (*string, error) {
	switch t := v.(type) {
	case nil:
		return nil, nil
	case string:
		return &t, nil
	case []byte:
		s := string(t)
		return &s, nil
	case int64:
		s := strconv.FormatInt(t, 10)
		return &s, nil
	}
	return nil, protocolf("unexpected reply element %T", v)
}

func replyInt(v any) (int64, error) {
	switch t := v.(type) {
	case int64:
		return t, nil
	case string:
		n, err := strconv.ParseInt(t, 10, 64)
		if err == nil {
			return n, nil
		}
	}
	return 0, protocolf("unexpected reply %v (%T), not an integer", v, v)
}

// parseFields checks every version text (section 3): texts are e, then v
// and pv of each record after the epoch.
func parseFields(layout *Layout, texts []*string) (uint64, []Fields, error) {
	if len(texts) != 1+2*(len(layout.Records)-1) {
		return 0, nil, protocolf("%d version fields for %d records", len(texts), len(layout.Records))
	}
	epoch, _, err := ParseVersion(layout.Records[0], "e", texts[0])
	if err != nil {
		return 0, nil, err
	}
	fields := make([]Fields, len(layout.Records)-1)
	for i, record := range layout.Records[1:] {
		f := &fields[i]
		if f.V, _, err = ParseVersion(record, "v", texts[1+2*i]); err != nil {
			return 0, nil, err
		}
		if f.PV, f.HasPV, err = ParseVersion(record, "pv", texts[2+2*i]); err != nil {
			return 0, nil, err
		}
	}
	return epoch, fields, nil
}

// redisFailure turns a go-redis error into the get's error: the context's
// own error when the get was cancelled (section 11: a cancelled get ends
// as Go ends cancelled work), a redis error otherwise.
func redisFailure(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var own *Error
	if errors.As(err, &own) {
		return err
	}
	return redisError(op, err)
}

func (c *Cache) read(ctx context.Context, layout *Layout) (*snapshot, error) {
	if c.cluster != nil {
		return c.readCluster(ctx, layout)
	}
	return c.readStandalone(ctx, layout)
}

func (c *Cache) readStandalone(ctx context.Context, layout *Layout) (*snapshot, error) {
	args := []any{layout.Key, layout.Deps}
	var reply any
	var err error
	if !c.noReadOnlyScripts.Load() {
		reply, err = c.readLua.RunRO(ctx, c.client, layout.Records, args...).Result()
		if err != nil && strings.Contains(strings.ToLower(err.Error()), "unknown command") {
			// A server before 7.0 has no EVALSHA_RO.
			c.noReadOnlyScripts.Store(true)
		}
	}
	if c.noReadOnlyScripts.Load() {
		reply, err = c.readLua.Run(ctx, c.client, layout.Records, args...).Result()
	}
	if err != nil {
		return nil, redisFailure(ctx, "the read script", err)
	}
	items, ok := reply.([]any)
	if !ok || len(items) != 2+2*len(layout.Records)+2 {
		return nil, protocolf("the read script replied %T of %d elements for %d records", reply, len(items), len(layout.Records))
	}
	seconds, err1 := replyInt(items[0])
	micros, err2 := replyInt(items[1])
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	texts := make([]*string, 0, len(items)-5)
	for _, item := range items[2 : len(items)-3] {
		text, err := replyText(item)
		if err != nil {
			return nil, err
		}
		texts = append(texts, text)
	}
	epoch, fields, err := parseFields(layout, texts)
	if err != nil {
		return nil, err
	}
	snap := &snapshot{nowUs: uint64(seconds)*1_000_000 + uint64(micros), epoch: epoch, fields: fields}
	snap.dataKey = layout.DataKey(epoch, snap.versions()[1:])
	scriptKey, err := replyText(items[len(items)-3])
	if err != nil {
		return nil, err
	}
	if scriptKey == nil || *scriptKey != snap.dataKey {
		// Valid versions are canonical, so the script's key is this key;
		// a different one means a different script runs under its SHA.
		return nil, protocolf("the read script named data key %v, not %q", scriptKey, snap.dataKey)
	}
	if snap.pttlMs, err = replyInt(items[len(items)-2]); err != nil {
		return nil, err
	}
	value, err := replyText(items[len(items)-1])
	if err != nil {
		return nil, err
	}
	if value != nil {
		snap.value, snap.found = []byte(*value), true
	}
	return snap, nil
}

func (c *Cache) readCluster(ctx context.Context, layout *Layout) (*snapshot, error) {
	pipe := c.client.Pipeline()
	now := pipe.Do(ctx, "TIME")
	epochCmd := pipe.HGet(ctx, layout.Records[0], "e")
	recordCmds := make([]*redis.SliceCmd, 0, len(layout.Records)-1)
	for _, record := range layout.Records[1:] {
		recordCmds = append(recordCmds, pipe.HMGet(ctx, record, "v", "pv"))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, redisFailure(ctx, "reading the version records", err)
	}
	timeReply, err := now.Slice()
	if err != nil || len(timeReply) != 2 {
		return nil, protocolf("TIME replied %v (%v)", timeReply, err)
	}
	seconds, err1 := replyInt(timeReply[0])
	micros, err2 := replyInt(timeReply[1])
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	texts := make([]*string, 0, 1+2*len(recordCmds))
	switch e, err := epochCmd.Result(); {
	case errors.Is(err, redis.Nil):
		texts = append(texts, nil)
	case err != nil:
		return nil, redisFailure(ctx, "reading the epoch", err)
	default:
		texts = append(texts, &e)
	}
	for _, cmd := range recordCmds {
		pair, err := cmd.Result()
		if err != nil {
			return nil, redisFailure(ctx, "reading a version record", err)
		}
		if len(pair) != 2 {
			return nil, protocolf("HMGET replied %d fields, not 2", len(pair))
		}
		for _, item := range pair {
			text, err := replyText(item)
			if err != nil {
				return nil, err
			}
			texts = append(texts, text)
		}
	}
	epoch, fields, err := parseFields(layout, texts)
	if err != nil {
		return nil, err
	}
	snap := &snapshot{nowUs: uint64(seconds)*1_000_000 + uint64(micros), epoch: epoch, fields: fields}
	snap.dataKey = layout.DataKey(epoch, snap.versions()[1:])
	pipe = c.client.Pipeline()
	get := pipe.Get(ctx, snap.dataKey)
	pttl := pipe.PTTL(ctx, snap.dataKey)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, redisFailure(ctx, "reading the data key", err)
	}
	switch value, err := get.Bytes(); {
	case errors.Is(err, redis.Nil):
	case err != nil:
		return nil, redisFailure(ctx, "reading the data key", err)
	default:
		snap.value, snap.found = value, true
	}
	snap.pttlMs = int64(pttl.Val() / time.Millisecond)
	if d := pttl.Val(); d < 0 {
		// go-redis keeps PTTL's -1 and -2 as they are, as a Duration.
		snap.pttlMs = int64(d)
	}
	return snap, nil
}

// getValue is GET key; found is false when there is no value.
func (c *Cache) getValue(ctx context.Context, key string) (value []byte, found bool, err error) {
	value, err = c.client.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, redisFailure(ctx, "reading a data key", err)
	}
	return value, true, nil
}

// poll is the waiter's re-read: GET of the data key and PTTL of its lease,
// pipelined. leaseGone is PTTL -2: no lease key.
func (c *Cache) poll(ctx context.Context, dataKey string) (value []byte, found, leaseGone bool, err error) {
	pipe := c.client.Pipeline()
	get := pipe.Get(ctx, dataKey)
	pttl := pipe.PTTL(ctx, LeaseKey(dataKey))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, false, redisFailure(ctx, "polling the data key", err)
	}
	if value, err = get.Bytes(); err == nil {
		return value, true, false, nil
	} else if !errors.Is(err, redis.Nil) {
		return nil, false, false, redisFailure(ctx, "polling the data key", err)
	}
	return nil, false, pttl.Val() == -2, nil
}

// tryLease is SET <lease key> <token> NX PX <lease>; the token when taken.
func (c *Cache) tryLease(ctx context.Context, dataKey string) (token string, taken bool, err error) {
	var random [16]byte
	if _, err := rand.Read(random[:]); err != nil {
		return "", false, err
	}
	token = hex.EncodeToString(random[:])
	err = c.client.Do(ctx, "SET", LeaseKey(dataKey), token, "NX", "PX", c.s.lease.Milliseconds()).Err()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, redisFailure(ctx, "taking the lease", err)
	}
	return token, true, nil
}

// release deletes the lease only while it holds token (lua/release.lua).
// It runs even when ctx is cancelled (section 5, rule 6: a cancelled
// holder releases at once), best effort: its error is ignored, the lease
// expires anyway.
func (c *Cache) release(ctx context.Context, dataKey, token string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := c.releaseLua.Run(ctx, c.client, []string{LeaseKey(dataKey)}, token).Err(); err != nil {
		c.s.logger.Debug("cdccache: releasing a lease failed; it expires", "cache", c.s.name, "error", err)
	}
}

// fill is SET <data key> <envelope> PX <ttl>.
func (c *Cache) fill(ctx context.Context, dataKey string, envelope []byte, ttl time.Duration) error {
	if err := c.client.Set(ctx, dataKey, envelope, ttl).Err(); err != nil {
		return redisFailure(ctx, "filling the data key", err)
	}
	return nil
}

// The envelope (section 7): "c1:<loader duration in ms>:" then the bytes.
func encodeEnvelope(deltaMs int64, value []byte) []byte {
	out := make([]byte, 0, len(value)+24)
	out = append(out, "c1:"...)
	out = strconv.AppendInt(out, max(deltaMs, 0), 10)
	out = append(out, ':')
	return append(out, value...)
}

// decodeEnvelope is the loader's duration and the value; a value without
// the envelope (a data key filled by hand) is returned whole with 0.
func decodeEnvelope(raw []byte) (deltaMs int64, value []byte) {
	if len(raw) < 5 || string(raw[:3]) != "c1:" {
		return 0, raw
	}
	end := 3
	for end < len(raw) && end < 3+19 && raw[end] >= '0' && raw[end] <= '9' {
		end++
	}
	if end == 3 || end >= len(raw) || raw[end] != ':' {
		return 0, raw
	}
	n, err := strconv.ParseInt(string(raw[3:end]), 10, 64)
	if err != nil {
		return 0, raw
	}
	return n, raw[end+1:]
}
