package rendezvous

import (
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/agentnet/agentnet/addressing"
)

// rateLimiter is a set of token buckets keyed by K, bounded to size entries
// (least recently used evicted, so memory stays bounded whatever the number
// of keys; an evicted key starts again with a full bucket). Safe for
// concurrent use.
type rateLimiter[K comparable] struct {
	rate, burst float64

	mu      sync.Mutex
	buckets *simplelru.LRU[K, *bucket]
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter[K comparable](rate float64, burst, size int) *rateLimiter[K] {
	lru, err := simplelru.NewLRU[K, *bucket](size, nil)
	if err != nil {
		panic(err) // size > 0 is guaranteed by Limits.withDefaults
	}
	return &rateLimiter[K]{rate: rate, burst: float64(burst), buckets: lru}
}

// allow takes one token from k's bucket and reports whether there was one.
func (l *rateLimiter[K]) allow(k K, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets.Get(k)
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets.Add(k, b)
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt*l.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// addrKey returns the rate-limit key of a source address: the address itself
// for IPv4, its /64 prefix for IPv6 (one subscriber usually holds a /64).
func addrKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// fairLimiter shares one request rate among the keys that use one source
// address (addrKey): each of the n keys seen on the address within fairIdle
// gets rate/n (burst/n, at least one token), so a key that floods gets only
// its share and a co-located key that asks for less than its share always
// gets it (CGNAT users share addresses). At most fairKeys keys are tracked
// per address (the least recently seen forgotten), and the address as a
// whole never gets more than twice the rate (many fresh keys); addresses
// are bounded like rateLimiter's. Safe for concurrent use.
type fairLimiter struct {
	rate, burst float64

	mu    sync.Mutex
	addrs *simplelru.LRU[netip.Addr, *fairGroup]
}

type fairGroup struct {
	total bucket // twice the rate and burst: the address's ceiling
	keys  map[addressing.PublicKey]*bucket
}

const (
	fairKeys = 64
	fairIdle = 10 * time.Second
)

func newFairLimiter(rate float64, burst, size int) *fairLimiter {
	lru, err := simplelru.NewLRU[netip.Addr, *fairGroup](size, nil)
	if err != nil {
		panic(err) // size > 0 is guaranteed by Limits.withDefaults
	}
	return &fairLimiter{rate: rate, burst: float64(burst), addrs: lru}
}

// allow takes one token of k's share of a's rate and reports whether there
// was one.
func (l *fairLimiter) allow(a netip.Addr, k addressing.PublicKey, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, ok := l.addrs.Get(a)
	if !ok {
		g = &fairGroup{total: bucket{tokens: 2 * l.burst, last: now}, keys: make(map[addressing.PublicKey]*bucket)}
		l.addrs.Add(a, g)
	}
	var oldest addressing.PublicKey
	var oldestAt time.Time
	for kk, b := range g.keys {
		switch {
		case kk == k:
		case now.Sub(b.last) > fairIdle:
			delete(g.keys, kk)
		case oldestAt.IsZero() || b.last.Before(oldestAt):
			oldest, oldestAt = kk, b.last
		}
	}
	b := g.keys[k]
	if b == nil {
		if len(g.keys) >= fairKeys {
			delete(g.keys, oldest)
		}
		b = &bucket{tokens: max(1, l.burst/float64(len(g.keys)+1)), last: now}
		g.keys[k] = b
	}
	n := float64(len(g.keys))
	b.refill(l.rate/n, max(1, l.burst/n), now)
	g.total.refill(2*l.rate, 2*l.burst, now)
	if b.tokens < 1 || g.total.tokens < 1 {
		return false
	}
	b.tokens--
	g.total.tokens--
	return true
}

func (b *bucket) refill(rate, burst float64, now time.Time) {
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(burst, b.tokens+dt*rate)
	}
	b.tokens = min(b.tokens, burst)
	b.last = now
}
