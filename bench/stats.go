package bench

import (
	"runtime"
	"slices"
	"syscall"
	"time"
)

// Latency is a set of round-trip samples.
type Latency []time.Duration

// Percentile returns the p-th percentile (0-100) by the nearest-rank
// method, or 0 for no samples.
func (l Latency) Percentile(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}

// P50 and P99 are the median and 99th percentile.
func (l Latency) P50() time.Duration { return l.Percentile(50) }
func (l Latency) P99() time.Duration { return l.Percentile(99) }

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// processCPU returns the CPU time (user + system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// meter measures the wall and process CPU time of a piece of work.
type meter struct {
	start time.Time
	cpu   time.Duration
}

func startMeter() meter { return meter{start: time.Now(), cpu: processCPU()} }

// stop returns the wall and CPU time since startMeter.
func (m meter) stop() (wall, cpu time.Duration) {
	return time.Since(m.start), processCPU() - m.cpu
}

// memSnapshot is the live heap and goroutine count at a quiet moment.
type memSnapshot struct {
	heap       uint64
	goroutines int
}

// quietSnapshot waits until the goroutine count is stable, collects garbage
// twice and reads the live heap.
func quietSnapshot() memSnapshot {
	prev := -1
	for i := 0; i < 40; i++ {
		n := runtime.NumGoroutine()
		if n == prev {
			break
		}
		prev = n
		time.Sleep(50 * time.Millisecond)
	}
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnapshot{heap: ms.HeapAlloc, goroutines: runtime.NumGoroutine()}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
