package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/service/event"
)

const waitDesc = "Block until something new happens, at most timeout_ms: an inbox item (message or file) wait has not returned before, a trust request waiting for our decision, a change of trust (our request approved, a peer revoked), or an event on our bus matching topics. kinds picks which (default all). Items are returned once each; inbox items stay in the inbox until inbox_delete. With from, waits for events on that trusted peer's bus instead. Peer-sent content is under untrusted. timed_out: nothing happened. Errors: not_running, invalid_argument (bad pattern or kind), not_trusted and unreachable (with from)."

// Bounds of wait.
const (
	defaultWaitTimeout = 25 * time.Second
	maxWaitTimeout     = 10 * time.Minute
	ringSize           = 256 // events kept for wait; older ones are dropped and counted
	waitRecheck        = 5 * time.Second
	previewBytes       = 4 << 10
)

// WaitInput is the input of wait.
type WaitInput struct {
	Kinds     []string `json:"kinds,omitempty" jsonschema:"what to wait for: inbox, trust, event (default all three)"`
	Topics    []string `json:"topics,omitempty" jsonschema:"event topic patterns: a.b, a.*, a.> or > (default >)"`
	From      string   `json:"from,omitempty" jsonschema:"wait for events on this trusted peer's bus instead of ours"`
	TimeoutMS int      `json:"timeout_ms,omitempty" jsonschema:"block at most this long (default 25000, at most 600000); MCP clients may time requests out sooner"`
	Max       int      `json:"max,omitempty" jsonschema:"return at most this many items (default 10, at most 100)"`
}

// WaitItem is one thing that happened; exactly one of Inbox, Trust, Event
// is set, as Kind says.
type WaitItem struct {
	Kind  string       `json:"kind" jsonschema:"inbox, trust or event"`
	Inbox *InboxItem   `json:"inbox,omitempty" jsonschema:"a new inbox item, with the start of its content under untrusted"`
	Trust *TrustRecord `json:"trust,omitempty" jsonschema:"a trust request waiting for our decision (state pending-in), or a record whose state changed"`
	Event *Event       `json:"event,omitempty"`
}

// WaitResult is the answer of wait.
type WaitResult struct {
	Items         []WaitItem `json:"items"`
	TimedOut      bool       `json:"timed_out" jsonschema:"nothing happened within timeout_ms"`
	EventsDropped uint64     `json:"events_dropped" jsonschema:"events lost before wait could return them (more than 256 unread)"`
}

// watcher keeps a subscription to the daemon's own bus: its events are
// kept (bounded) for wait, and every event wakes waiters.
type watcher struct {
	c   *ctl.Client
	log *slog.Logger

	mu        sync.Mutex
	self      string // our address, as the bus reports our own events
	connected bool
	err       error
	ring      []ringEntry
	dropped   uint64
	wake      chan struct{} // closed and replaced on every change
	seenInbox map[string]bool
	seenTrust map[string]time.Time // pending-in key -> updated
}

type ringEntry struct {
	ev       ctl.Event
	consumed bool
}

func newWatcher(c *ctl.Client, log *slog.Logger) *watcher {
	return &watcher{c: c, log: log, wake: make(chan struct{}), seenInbox: map[string]bool{}, seenTrust: map[string]time.Time{}}
}

// loop subscribes and re-subscribes (after a daemon restart) until ctx ends.
func (w *watcher) loop(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := w.subscribe(ctx)
		w.mu.Lock()
		w.connected, w.err = false, err
		w.notifyLocked()
		w.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		w.log.Debug("event subscription ended", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (w *watcher) subscribe(ctx context.Context) error {
	var st ctl.Status
	if err := w.c.Do(ctx, http.MethodGet, ctl.PathStatus, nil, &st); err != nil {
		return err
	}
	s, err := w.c.Stream(ctx, http.MethodPost, ctl.PathEventsSubscribe, ctl.SubscribeRequest{Patterns: []string{">"}})
	if err != nil {
		return err
	}
	defer s.Close()
	w.mu.Lock()
	w.self, w.connected, w.err = st.Addr, true, nil
	w.notifyLocked()
	w.mu.Unlock()
	for {
		var ev ctl.Event
		if err := s.Next(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("the daemon ended the event stream")
			}
			return err
		}
		w.mu.Lock()
		if len(w.ring) == ringSize {
			if !w.ring[0].consumed {
				w.dropped++
			}
			w.ring = slices.Delete(w.ring, 0, 1)
		}
		w.ring = append(w.ring, ringEntry{ev: ev})
		w.notifyLocked()
		w.mu.Unlock()
	}
}

func (w *watcher) notifyLocked() {
	close(w.wake)
	w.wake = make(chan struct{})
}

// state returns the wake channel to wait on and whether the subscription
// is live (and if not, why).
func (w *watcher) state() (<-chan struct{}, bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wake, w.connected, w.err
}

func (s *Server) wait(ctx context.Context, _ *mcp.CallToolRequest, in WaitInput) (WaitResult, error) {
	to := defaultWaitTimeout
	switch {
	case in.TimeoutMS < 0 || in.TimeoutMS > int(maxWaitTimeout/time.Millisecond):
		return WaitResult{}, errorf(ctl.CodeInvalidArgument, "", "timeout_ms %d: want 0-%d", in.TimeoutMS, maxWaitTimeout/time.Millisecond)
	case in.TimeoutMS > 0:
		to = time.Duration(in.TimeoutMS) * time.Millisecond
	}
	max := 10
	switch {
	case in.Max < 0 || in.Max > 100:
		return WaitResult{}, errorf(ctl.CodeInvalidArgument, "", "max %d: want 1-100", in.Max)
	case in.Max > 0:
		max = in.Max
	}
	kinds := map[string]bool{"inbox": true, "trust": true, "event": true}
	if len(in.Kinds) > 0 {
		kinds = map[string]bool{}
		for _, k := range in.Kinds {
			if k != "inbox" && k != "trust" && k != "event" {
				return WaitResult{}, errorf(ctl.CodeInvalidArgument, "kinds: inbox, trust, event", "unknown kind %q", k)
			}
			kinds[k] = true
		}
	}
	topics := in.Topics
	if len(topics) == 0 {
		topics = []string{">"}
	}
	if len(topics) > event.MaxPatterns {
		return WaitResult{}, errorf(ctl.CodeInvalidArgument, "", "%d topic patterns: at most %d", len(topics), event.MaxPatterns)
	}
	for _, p := range topics {
		if err := event.ValidatePattern(p); err != nil {
			return WaitResult{}, errorf(ctl.CodeInvalidArgument, "patterns: a.b, a.*, a.> or >", "%v", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	if in.From != "" {
		return s.waitRemote(ctx, in.From, topics, max)
	}
	var res WaitResult
	grace := time.Now().Add(3 * time.Second) // for a fresh server or a restarting daemon
	for {
		wake, connected, werr := s.watch.state()
		if !connected {
			if werr != nil && (ctl.CodeOf(werr) == ctl.CodeNotRunning || time.Now().After(grace)) {
				return WaitResult{}, werr
			}
			if time.Now().After(grace) {
				return WaitResult{}, errorf(ctl.CodeUnavailable, "retry", "the event subscription is not up")
			}
			select {
			case <-wake:
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return WaitResult{Items: []WaitItem{}, TimedOut: true}, nil
			}
			continue
		}
		items, err := s.collect(ctx, kinds, topics, max)
		if err != nil {
			return WaitResult{}, err
		}
		s.watch.mu.Lock()
		res.EventsDropped = s.watch.dropped
		s.watch.mu.Unlock()
		if len(items) > 0 {
			res.Items = items
			return res, nil
		}
		select {
		case <-wake:
		case <-time.After(waitRecheck):
		case <-ctx.Done():
			res.Items, res.TimedOut = []WaitItem{}, true
			return res, nil
		}
	}
}

// collect gathers what wait has not returned yet: new inbox items and
// pending trust requests (read from the API, so nothing is missed while
// the subscription was down), trust changes and matching events (from the
// ring).
func (s *Server) collect(ctx context.Context, kinds map[string]bool, topics []string, max int) ([]WaitItem, error) {
	var items []WaitItem
	if kinds["inbox"] {
		var l ctl.InboxList
		if err := s.c.Do(ctx, http.MethodGet, ctl.PathInbox, nil, &l); err != nil {
			return nil, err
		}
		sort.SliceStable(l.Items, func(i, j int) bool { return l.Items[i].Received.Before(l.Items[j].Received) })
		present := map[string]bool{}
		s.watch.mu.Lock()
		for _, it := range l.Items {
			present[it.ID] = true
		}
		for id := range s.watch.seenInbox {
			if !present[id] {
				delete(s.watch.seenInbox, id)
			}
		}
		var fresh []ctl.InboxItem
		for _, it := range l.Items {
			if !s.watch.seenInbox[it.ID] && len(fresh) < max {
				fresh = append(fresh, it)
				s.watch.seenInbox[it.ID] = true
			}
		}
		s.watch.mu.Unlock()
		for _, it := range fresh {
			ii := inboxItem(it)
			if it.Kind != "file" || it.Bytes <= previewBytes {
				if d, err := s.readContent(ctx, it, 0, min(previewBytes, s.cfg.Policy.maxData())); err == nil {
					if ii.Untrusted == nil {
						ii.Untrusted = &InboxUntrusted{}
					}
					ii.Untrusted.Content = &d
				}
			}
			items = append(items, WaitItem{Kind: "inbox", Inbox: &ii})
		}
	}
	if kinds["trust"] && len(items) < max {
		var l ctl.TrustList
		if err := s.c.Do(ctx, http.MethodGet, ctl.PathTrustPending, nil, &l); err != nil {
			return nil, err
		}
		s.watch.mu.Lock()
		present := map[string]bool{}
		for _, r := range l.Records {
			present[r.Key] = true
			if u, seen := s.watch.seenTrust[r.Key]; (!seen || !u.Equal(r.Updated)) && len(items) < max {
				s.watch.seenTrust[r.Key] = r.Updated
				tr := s.trustRecord(r)
				items = append(items, WaitItem{Kind: "trust", Trust: &tr})
			}
		}
		for k := range s.watch.seenTrust {
			if !present[k] {
				delete(s.watch.seenTrust, k)
			}
		}
		s.watch.mu.Unlock()
	}
	s.watch.mu.Lock()
	defer s.watch.mu.Unlock()
	self := s.watch.self
	for i := range s.watch.ring {
		if len(items) >= max {
			break
		}
		e := &s.watch.ring[i]
		if e.consumed {
			continue
		}
		own := e.ev.From == self
		switch {
		case own && e.ev.Topic == ctl.TopicInboxReceived, own && e.ev.Topic == ctl.TopicTrustRequest:
			// Wake-ups only: the items come from the API above.
			e.consumed = true
		case own && e.ev.Topic == ctl.TopicTrustChanged:
			if kinds["trust"] {
				e.consumed = true
				if tr, ok := s.trustChange(e.ev); ok {
					items = append(items, WaitItem{Kind: "trust", Trust: &tr})
				}
			}
		default:
			if kinds["event"] && matchAny(topics, e.ev.Topic) {
				e.consumed = true
				ev := s.event(e.ev)
				items = append(items, WaitItem{Kind: "event", Event: &ev})
			}
		}
	}
	return items, nil
}

// trustChange turns a trust.changed event of our own daemon into a record.
func (s *Server) trustChange(ev ctl.Event) (TrustRecord, bool) {
	var te ctl.TrustEvent
	if err := json.Unmarshal([]byte(ev.Data), &te); err != nil || te.Addr == "" {
		return TrustRecord{}, false
	}
	return TrustRecord{Addr: te.Addr, Key: te.Key, Hostname: te.Hostname, State: te.State, Created: ev.Time, Updated: ev.Time}, true
}

func matchAny(patterns []string, topic string) bool {
	for _, p := range patterns {
		if event.Match(p, topic) {
			return true
		}
	}
	return false
}

// waitRemote waits for events on a peer's bus.
func (s *Server) waitRemote(ctx context.Context, from string, topics []string, max int) (WaitResult, error) {
	st, err := s.c.Stream(ctx, http.MethodPost, ctl.PathEventsSubscribe, ctl.SubscribeRequest{Patterns: topics, From: from, Count: max})
	if err != nil {
		if ctx.Err() != nil {
			return WaitResult{Items: []WaitItem{}, TimedOut: true}, nil
		}
		return WaitResult{}, err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	res := WaitResult{Items: []WaitItem{}}
	var ev ctl.Event
	if err := st.Next(&ev); err != nil {
		if ctx.Err() != nil {
			res.TimedOut = true
			return res, nil
		}
		return WaitResult{}, err
	}
	e := s.event(ev)
	res.Items = append(res.Items, WaitItem{Kind: "event", Event: &e})
	res.EventsDropped = ev.Dropped
	return res, nil
}
