package smallmap

import (
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMatchesAMap: any sequence of Set, Delete, Get and All gives what a
// Go map gives.
func TestMatchesAMap(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		var s Map[int, int]
		want := map[int]int{}
		for i := range 300 {
			k := r.IntN(6) // few keys, so each is set and deleted often
			switch r.IntN(4) {
			case 0, 1:
				s.Set(k, i)
				want[k] = i
			case 2:
				s.Delete(k)
				delete(want, k)
			case 3:
				v, ok := s.Get(k)
				w, wok := want[k]
				require.Equal(t, wok, ok, "seed %d step %d key %d", seed, i, k)
				require.Equal(t, w, v)
			}
			require.Equal(t, len(want), s.Len())
			require.Equal(t, want, maps.Collect(s.All()), "seed %d step %d", seed, i)
		}
	}
}

// TestOneEntryAllocatesNothing: the first entry lives in the struct.
func TestOneEntryAllocatesNothing(t *testing.T) {
	var s Map[[32]byte, [64]byte]
	k := [32]byte{1}
	allocs := testing.AllocsPerRun(100, func() {
		s.Set(k, [64]byte{2})
		if _, ok := s.Get(k); !ok {
			t.Fatal("lost")
		}
		s.Delete(k)
	})
	require.Zero(t, allocs)
	s.Set(k, [64]byte{})
	s.Set([32]byte{2}, [64]byte{})
	require.Equal(t, 2, s.Len())
	require.NotNil(t, s.m, "the second entry goes to a map")
}

// TestDeleteWhileRanging: entries deleted by the loop body are not
// yielded afterwards; the rest are, once each.
func TestDeleteWhileRanging(t *testing.T) {
	var s Map[int, int]
	for i := range 10 {
		s.Set(i, i)
	}
	seen := map[int]int{}
	for k := range s.All() {
		seen[k]++
		for j := range 10 {
			if j != k {
				s.Delete(j)
			}
		}
	}
	require.Len(t, seen, 1, "everything else was deleted by the first iteration")
	require.Equal(t, 1, s.Len())
}
