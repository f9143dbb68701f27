// Package smallmap is a map that keeps its first entry inline.
//
// A Go map's first entry allocates a whole group of eight slots: with the
// 32-byte keys of agentnet's per-peer tables, 0.4–0.7 KB. Most agents talk
// to one peer or a few (an agent and its orchestrator), and a node keeps
// several such tables, so for them that first group is most of what the
// table costs. A Map holds one entry in the struct itself and makes a Go
// map only for the second.
//
// A Map is not safe for concurrent use; its owner's lock guards it, as it
// would guard a map. The zero Map is empty and ready to use.
package smallmap

import "iter"

// Map is a map from K to V whose first entry is stored inline.
type Map[K comparable, V any] struct {
	k   K
	v   V
	one bool    // k and v hold an entry
	m   map[K]V // every other entry; never holds k while one is set
}

// Get returns the value stored for k and whether there is one.
func (s *Map[K, V]) Get(k K) (V, bool) {
	if s.one && s.k == k {
		return s.v, true
	}
	v, ok := s.m[k]
	return v, ok
}

// Set stores v for k.
func (s *Map[K, V]) Set(k K, v V) {
	switch {
	case s.one && s.k == k:
		s.v = v
	case !s.one && !s.inMap(k):
		s.k, s.v, s.one = k, v, true
	default:
		if s.m == nil {
			s.m = make(map[K]V)
		}
		s.m[k] = v
	}
}

func (s *Map[K, V]) inMap(k K) bool {
	_, ok := s.m[k]
	return ok
}

// Delete removes k's entry, if any.
func (s *Map[K, V]) Delete(k K) {
	if s.one && s.k == k {
		var zk K
		var zv V
		s.k, s.v, s.one = zk, zv, false
		return
	}
	delete(s.m, k)
	if len(s.m) == 0 {
		s.m = nil // a map never shrinks: let it go
	}
}

// Len returns the number of entries.
func (s *Map[K, V]) Len() int {
	n := len(s.m)
	if s.one {
		n++
	}
	return n
}

// All yields every entry, in no particular order. The loop body may
// Delete entries (those not yet yielded are then not yielded) and Set
// existing ones; an entry it adds may or may not be yielded, as with a
// map.
func (s *Map[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if s.one {
			if !yield(s.k, s.v) {
				return
			}
		}
		for k, v := range s.m {
			if !yield(k, v) {
				return
			}
		}
	}
}
