package event

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// DefaultQueue is the queue length of a subscription.
const DefaultQueue = 256

// Bus fans published events out to subscriptions. The zero value is not
// usable; create it with NewBus. It is safe for concurrent use.
type Bus struct {
	self addressing.Addr

	mu     sync.Mutex
	closed bool
	seq    uint64
	subs   map[*Subscription]struct{}

	dropped atomic.Uint64 // over every subscription
}

// NewBus returns a bus for the node at self (the From of events it
// publishes itself).
func NewBus(self addressing.Addr) *Bus {
	return &Bus{self: self, subs: make(map[*Subscription]struct{})}
}

// Dropped returns the number of events dropped over all subscriptions.
func (b *Bus) Dropped() uint64 { return b.dropped.Load() }

// SubscribeOptions tune a subscription.
type SubscribeOptions struct {
	// Queue is the queue length; 0 means DefaultQueue.
	Queue int
	// OwnOnly limits the subscription to events the bus's own node
	// published (remote subscribers do not see what other peers pushed).
	OwnOnly bool
}

// Subscription receives the events that match its patterns.
type Subscription struct {
	bus      *Bus
	patterns []string
	ownOnly  bool
	ch       chan Event
	dropped  atomic.Uint64
	once     sync.Once
}

// Subscribe adds a subscription for events whose topic matches any of
// patterns.
func (b *Bus) Subscribe(patterns []string, opt SubscribeOptions) (*Subscription, error) {
	if len(patterns) == 0 || len(patterns) > MaxPatterns {
		return nil, fmt.Errorf("event: subscribe: want 1-%d patterns", MaxPatterns)
	}
	for _, p := range patterns {
		if err := ValidatePattern(p); err != nil {
			return nil, err
		}
	}
	q := opt.Queue
	if q <= 0 {
		q = DefaultQueue
	}
	s := &Subscription{bus: b, patterns: append([]string(nil), patterns...), ownOnly: opt.OwnOnly, ch: make(chan Event, q)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("event: subscribe: %w", net.ErrClosed)
	}
	b.subs[s] = struct{}{}
	return s, nil
}

// Events returns the subscription's channel; it is closed by Close (or when
// the bus closes).
func (s *Subscription) Events() <-chan Event { return s.ch }

// Dropped returns how many events this subscription lost to a full queue.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription. It is idempotent.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.closeLocked()
}

func (s *Subscription) closeLocked() {
	s.once.Do(func() {
		delete(s.bus.subs, s)
		close(s.ch)
	})
}

func (s *Subscription) matches(ev *Event) bool {
	if s.ownOnly && ev.From != s.bus.self {
		return false
	}
	for _, p := range s.patterns {
		if Match(p, ev.Topic) {
			return true
		}
	}
	return false
}

// ErrInvalid is wrapped by Publish errors about the topic or data.
var ErrInvalid = errors.New("event: invalid event")

// Publish queues an event for every matching subscription without blocking
// and returns the event as published and the number of subscriptions it was
// queued for. A zero from means the bus's own node. data is copied.
func (b *Bus) Publish(topic string, data []byte, from addressing.Addr) (Event, int, error) {
	if err := ValidateTopic(topic); err != nil {
		return Event{}, 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(data) > MaxData {
		return Event{}, 0, fmt.Errorf("%w: %d bytes of data, max %d", ErrInvalid, len(data), MaxData)
	}
	if !from.IsValid() {
		from = b.self
	}
	ev := Event{Topic: topic, Data: append([]byte(nil), data...), From: from, Time: time.Now()}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return Event{}, 0, fmt.Errorf("event: publish: %w", net.ErrClosed)
	}
	b.seq++
	ev.Seq = b.seq
	n := 0
	for s := range b.subs {
		if !s.matches(&ev) {
			continue
		}
		e := ev
		e.Dropped = s.dropped.Load()
		select {
		case s.ch <- e:
			n++
		default:
			s.dropped.Add(1)
			b.dropped.Add(1)
		}
	}
	return ev, n, nil
}

// Close ends every subscription; later calls fail with net.ErrClosed.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for s := range b.subs {
		s.closeLocked()
	}
}
