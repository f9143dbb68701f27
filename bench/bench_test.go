package bench

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	RunChildIfRequested()
	os.Exit(m.Run())
}

// benchRig starts sys's Env for a benchmark, or skips it if the system is
// not available.
func benchRig(b *testing.B, sys System) *Rig {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env, err := NewEnv(ctx, sys)
	if errors.Is(err, ErrNotSupported) {
		b.Skipf("%s: %v", sys, err)
	}
	if err != nil {
		b.Fatal(err)
	}
	r := NewRig(env)
	b.Cleanup(func() { r.Close() })
	return r
}

func eachSystem(b *testing.B, f func(b *testing.B, r *Rig)) {
	for _, sys := range Systems {
		b.Run(string(sys), func(b *testing.B) { f(b, benchRig(b, sys)) })
	}
}

func reportLatency(b *testing.B, l Latency) {
	b.ReportMetric(micros(l.P50()), "p50-µs")
	b.ReportMetric(micros(l.P99()), "p99-µs")
}

// BenchmarkBulk writes 64 KiB per iteration on one stream to the sink. The
// wait for the last bytes to arrive is outside the timed loop; the runner's
// bulk scenario times it.
func BenchmarkBulk(b *testing.B) {
	eachSystem(b, func(b *testing.B, r *Rig) {
		c, err := r.Env.Dial(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{opSink}); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, chunkSize)
		b.SetBytes(chunkSize)
		for b.Loop() {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := finishSink(c); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkPingPong is one 1-byte round trip on an open stream per
// iteration.
func BenchmarkPingPong(b *testing.B) {
	eachSystem(b, func(b *testing.B, r *Rig) {
		e, err := openEcho(b.Context(), r.Env.Dial)
		if err != nil {
			b.Fatal(err)
		}
		defer e.c.Close()
		var lat Latency
		for b.Loop() {
			t := time.Now()
			if err := e.roundTrip(byte(len(lat))); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t))
		}
		reportLatency(b, lat)
	})
}

// BenchmarkDatagramPingPong is one 1-byte datagram round trip per
// iteration; lost pongs are reported, not retried.
func BenchmarkDatagramPingPong(b *testing.B) {
	eachSystem(b, func(b *testing.B, r *Rig) {
		p, err := newPinger(b.Context(), r)
		if errors.Is(err, ErrNotSupported) {
			b.Skip(err)
		}
		if err != nil {
			b.Fatal(err)
		}
		var lat Latency
		lost := 0
		for b.Loop() {
			d, ok, err := p.ping(byte(len(lat) + lost))
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				lost++
				continue
			}
			lat = append(lat, d)
		}
		reportLatency(b, lat)
		b.ReportMetric(float64(lost), "lost")
	})
}

// BenchmarkMessages writes one 1 KiB message per iteration on one stream.
func BenchmarkMessages(b *testing.B) {
	eachSystem(b, func(b *testing.B, r *Rig) {
		c, err := r.Env.Dial(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{opSink}); err != nil {
			b.Fatal(err)
		}
		msg := make([]byte, messageSize)
		b.SetBytes(messageSize)
		for b.Loop() {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		if err := finishSink(c); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkStreamPerMessage opens a stream (TCP/TLS: a connection), writes
// one 1 KiB message and closes it, per iteration; the wait for the server
// to have read them all is inside the timing.
func BenchmarkStreamPerMessage(b *testing.B) {
	eachSystem(b, func(b *testing.B, r *Rig) {
		msg := make([]byte, 1+messageSize)
		msg[0] = opSink
		base := r.sunk.Load()
		sent := int64(0)
		var busy atomic.Int64
		b.SetBytes(messageSize)
		for b.Loop() {
			c, err := dialRetryBusy(b.Context(), r.Env.Dial, &busy)
			if err != nil {
				b.Fatal(err)
			}
			_, err = c.Write(msg)
			c.Close()
			if err != nil {
				b.Fatal(err)
			}
			sent++
			if sent%1000 == 0 { // bound the backlog
				if err := r.waitSunk(b.Context(), base+sent-500); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := r.waitSunk(b.Context(), base+sent); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(busy.Load()), "busy-retries")
	})
}

// BenchmarkSetupFirst is one first contact per iteration (new peer, which
// is prepared with the timer stopped; connection, stream, echoed byte).
func BenchmarkSetupFirst(b *testing.B) {
	eachSystem(b, func(b *testing.B, r *Rig) {
		var lat Latency
		for b.Loop() {
			b.StopTimer()
			p, err := r.Env.NewPeer(b.Context())
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			t := time.Now()
			e, err := openEcho(b.Context(), p.Dial)
			if err == nil {
				err = e.roundTrip(1)
				e.c.Close()
			}
			lat = append(lat, time.Since(t))
			b.StopTimer()
			p.Close()
			b.StartTimer()
			if err != nil {
				b.Fatal(err)
			}
		}
		reportLatency(b, lat)
	})
}

// BenchmarkSetupRepeat is one repeat contact per iteration: the peer drops
// its connection (timer stopped) and dials again.
func BenchmarkSetupRepeat(b *testing.B) {
	eachSystem(b, func(b *testing.B, r *Rig) {
		p, err := r.Env.NewPeer(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		if err := p.Disconnect(); errors.Is(err, ErrNotSupported) {
			b.Skip(err)
		}
		var lat Latency
		for b.Loop() {
			b.StopTimer()
			if err := p.Disconnect(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			t := time.Now()
			e, err := openEcho(b.Context(), p.Dial)
			if err == nil {
				err = e.roundTrip(1)
				e.c.Close()
			}
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t))
		}
		reportLatency(b, lat)
	})
}

// BenchmarkConcurrentStreams is 100 concurrent streams of 64 KiB each per
// iteration.
func BenchmarkConcurrentStreams(b *testing.B) {
	const streams, per = 100, 64 << 10
	eachSystem(b, func(b *testing.B, r *Rig) {
		b.SetBytes(streams * per)
		for b.Loop() {
			if _, _, err := ConcurrentStreams(b.Context(), r, streams, per); err != nil {
				b.Fatal(err)
			}
		}
	})
}
