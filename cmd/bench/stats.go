package main

import (
	"cmp"
	"maps"
	"slices"
)

// spread is the median of repeated measurements with their range: on a
// shared, noisy machine the median resists an outlier round, and the range
// shows how noisy it was.
type spread struct {
	median, min, max float64
	n                int
}

// summarize returns the spread of xs; the zero spread when xs is empty.
// The median of an even count is the mean of the middle two.
func summarize(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{median: m, min: s[0], max: s[len(s)-1], n: len(s)}
}

// collect returns f of each element of xs.
func collect[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// best returns the key whose values have the highest median, and that
// spread; ties go to the smaller key, the fewer clients. ok is false for an
// empty map.
func best[K cmp.Ordered](byKey map[K][]float64) (key K, s spread, ok bool) {
	for _, k := range sortedKeys(byKey) {
		if ks := summarize(byKey[k]); !ok || ks.median > s.median {
			key, s, ok = k, ks, true
		}
	}
	return key, s, ok
}

// sortedKeys returns m's keys in order, for output that does not depend on
// map iteration.
func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}
