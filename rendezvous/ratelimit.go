package rendezvous

import (
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
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
