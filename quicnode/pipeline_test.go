package quicnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/agentnet/agentnet/internal/vport"
	"github.com/stretchr/testify/require"
)

// echoListener serves port on n: every stream gets back what it sent.
func echoListener(t *testing.T, n *testNode, port uint16) net.Listener {
	t.Helper()
	ln, err := n.Listen(port)
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln
}

// trustedPair starts a rendezvous and two nodes that trust each other.
func trustedPair(t *testing.T) (a, b *testNode) {
	t.Helper()
	srv := startServer(t)
	a, b = startNode(t, srv, ""), startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	return a, b
}

// roundTrip writes msg on c, half-closes, and reads the answer to EOF.
func roundTrip(c net.Conn, msg []byte) ([]byte, error) {
	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return nil, fmt.Errorf("close write: %w", err)
	}
	return io.ReadAll(c)
}

func pipelined(c net.Conn) bool { return c.(*streamConn).ports != nil }

// dialMaybeStrict dials port of b from a, with DialStrict if strict.
func dialMaybeStrict(ctx context.Context, a, b *testNode, port uint16, strict bool) (net.Conn, error) {
	if strict {
		return a.DialStrict(ctx, mustTarget(b.Addr().String()), port)
	}
	return a.Dial(ctx, b.Addr().String(), port)
}

// alwaysFresh makes every link count as heard from a moment ago for the
// test, so that whether a dial pipelines does not depend on the machine's
// load (pipelineFresh has its own test).
func alwaysFresh(t *testing.T) {
	old := pipelineFreshMin.Swap(int64(time.Hour))
	t.Cleanup(func() { pipelineFreshMin.Store(old) })
}

// TestPipelinedDial: dials on a fresh link pipeline, the first one to a
// port included, and carry data byte-exact; a port closed between two
// dials on the same link is ErrPortClosed on the first Read (and on the
// Write once the refusal is there), after which the next dial waits and
// fails itself, and once the port is open again a dial waits, succeeds,
// and the next pipelines; DialStrict always waits.
func TestPipelinedDial(t *testing.T) {
	alwaysFresh(t)
	checkNoLeaks(t)
	a, b := trustedPair(t)
	ln := echoListener(t, b, 9000)
	ctx := ctxT(t, 20*time.Second)
	target := b.Addr().String()

	c, err := a.Dial(ctx, target, 9000)
	require.NoError(t, err)
	require.True(t, pipelined(c), "the first dial to a port pipelines on a fresh link")
	got, err := roundTrip(c, []byte("first"))
	require.NoError(t, err)
	require.Equal(t, "first", string(got))
	c.Close()

	for i := range 20 {
		c, err := a.Dial(ctx, target, 9000)
		require.NoError(t, err)
		require.True(t, pipelined(c), "dial %d to an answered port did not pipeline", i)
		msg := bytes.Repeat([]byte{byte(i)}, 1+i*700) // small and coalesced, and over maxCoalesce
		got, err := roundTrip(c, msg)
		require.NoError(t, err)
		require.Equal(t, msg, got)
		c.Close()
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB: header written alone
	c, err = a.Dial(ctx, target, 9000)
	require.NoError(t, err)
	require.True(t, pipelined(c))
	go func() { c.Write(big); c.(interface{ CloseWrite() error }).CloseWrite() }()
	got, err = io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, big, got)
	c.Close()

	// The port closes between two dials on the same link.
	ln.Close()
	c, err = a.Dial(ctx, target, 9000)
	require.NoError(t, err, "a pipelined dial does not wait for the answer")
	require.True(t, pipelined(c))
	_, err = c.Write([]byte("anyone?"))
	if err != nil {
		require.ErrorIs(t, err, ErrPortClosed)
	}
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, ErrPortClosed, "a closed port must be ErrPortClosed, never an EOF")
	_, err = c.Write([]byte("again"))
	require.ErrorIs(t, err, ErrPortClosed)
	c.Close()
	_, err = a.Dial(ctx, target, 9000)
	require.ErrorIs(t, err, ErrPortClosed, "after a refusal the next dial must wait and fail itself")
	_, err = a.Dial(ctx, target, 9000)
	require.ErrorIs(t, err, ErrPortClosed, "and so must the one after it")

	// The port opens again: the next dial waits and gets through, and the
	// one after it pipelines.
	echoListener(t, b, 9000)
	for i, want := range []bool{false, true} {
		c, err = a.Dial(ctx, target, 9000)
		require.NoError(t, err)
		require.Equal(t, want, pipelined(c), "dial %d after the port reopened", i)
		got, err = roundTrip(c, []byte("reopened"))
		require.NoError(t, err)
		require.Equal(t, "reopened", string(got))
		c.Close()
	}

	// DialStrict waits even for a port that answered before.
	echoListener(t, b, 9001)
	c, err = a.Dial(ctx, target, 9001)
	require.NoError(t, err)
	c.Close()
	c, err = a.DialStrict(ctx, mustTarget(target), 9001)
	require.NoError(t, err)
	require.False(t, pipelined(c))
	got, err = roundTrip(c, []byte("strict"))
	require.NoError(t, err)
	require.Equal(t, "strict", string(got))
	c.Close()
}

// TestPipelinedRefusalPaths: every way a caller can use a pipelined stream
// to a port that has closed ends in ErrPortClosed: reading first, writing
// then closing the write side, closing without writing.
func TestPipelinedRefusalPaths(t *testing.T) {
	alwaysFresh(t)
	checkNoLeaks(t)
	a, b := trustedPair(t)
	ctx := ctxT(t, 20*time.Second)
	target := b.Addr().String()
	for _, how := range []string{"read-first", "write-closewrite-read", "closewrite-read"} {
		t.Run(how, func(t *testing.T) {
			ln := echoListener(t, b, 9100)
			c, err := a.Dial(ctx, target, 9100)
			require.NoError(t, err)
			c.Close()
			ln.Close()
			c, err = a.Dial(ctx, target, 9100)
			require.NoError(t, err)
			require.True(t, pipelined(c))
			defer c.Close()
			switch how {
			case "write-closewrite-read":
				if _, err := c.Write([]byte("x")); err != nil {
					require.ErrorIs(t, err, ErrPortClosed)
				}
				fallthrough
			case "closewrite-read":
				if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
					require.ErrorIs(t, err, ErrPortClosed)
				}
			}
			_, err = io.ReadAll(c)
			require.ErrorIs(t, err, ErrPortClosed)
		})
	}
}

// TestPipelinedServerSpeaksFirst: a pipelined stream whose dialer reads
// before it writes still reaches the listener (the header goes out with the
// Read), and an accepted version 1 stream's first write comes after the
// status byte even when the application writes at once.
func TestPipelinedServerSpeaksFirst(t *testing.T) {
	alwaysFresh(t)
	checkNoLeaks(t)
	a, b := trustedPair(t)
	ln, err := b.Listen(9200)
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	defer wg.Wait()
	defer ln.Close()
	ctx := ctxT(t, 20*time.Second)
	for i := range 50 {
		// The first waits for the status byte (version 1), the others
		// pipeline.
		c, err := dialMaybeStrict(ctx, a, b, 9200, i == 0)
		require.NoError(t, err)
		require.Equal(t, i > 0, pipelined(c), "dial %d", i)
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		require.Equal(t, "hello", string(got), "stream %d", i)
		c.Close()
	}
}

// TestPipelinedConcurrent: many goroutines opening pipelined streams on
// one link at once, each with its own bytes.
func TestPipelinedConcurrent(t *testing.T) {
	alwaysFresh(t)
	checkNoLeaks(t)
	a, b := trustedPair(t)
	echoListener(t, b, 9300)
	ctx := ctxT(t, 60*time.Second)
	target := b.Addr().String()
	c, err := a.Dial(ctx, target, 9300)
	require.NoError(t, err)
	c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for g := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				c, err := a.Dial(ctx, target, 9300)
				if err != nil {
					errs <- err
					return
				}
				msg := fmt.Appendf(nil, "g%d-i%d-%s", g, i, bytes.Repeat([]byte("z"), g*i))
				got, err := roundTrip(c, msg)
				c.Close()
				if err != nil || !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("g%d i%d: %q, %v", g, i, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestLateStreamHeader: a stream whose header arrives in pieces, late, is
// handed to a goroutine and still dispatched, and meanwhile the link's
// other streams are served; a stream reset before its header is refused
// without counting as a bad stream.
func TestLateStreamHeader(t *testing.T) {
	alwaysFresh(t)
	checkNoLeaks(t)
	a, b := trustedPair(t)
	echoListener(t, b, 9400)
	ctx := ctxT(t, 20*time.Second)
	c, err := a.Dial(ctx, b.Addr().String(), 9400)
	require.NoError(t, err)
	c.Close()
	l := a.liveLink(b.PublicKey())
	require.NotNil(t, l)

	slow, err := l.Conn.OpenStreamSync(ctx)
	require.NoError(t, err)
	hdr := vport.AppendStreamHeader(nil, vport.StreamHeader{Dst: 9400, Src: 50000, Pipelined: true})
	_, err = slow.Write(hdr[:2])
	require.NoError(t, err)

	// Another stream is served while the slow one's header is missing.
	c, err = a.Dial(ctx, b.Addr().String(), 9400)
	require.NoError(t, err)
	got, err := roundTrip(c, []byte("meanwhile"))
	require.NoError(t, err)
	require.Equal(t, "meanwhile", string(got))
	c.Close()

	time.Sleep(20 * inlineHeaderWait)
	_, err = slow.Write(append(hdr[2:], "late"...))
	require.NoError(t, err)
	require.NoError(t, slow.Close())
	got, err = io.ReadAll(slow)
	require.NoError(t, err)
	require.Equal(t, "late", string(got))

	before := b.Stats().BadStreams
	reset, err := l.Conn.OpenStreamSync(ctx)
	require.NoError(t, err)
	reset.Write([]byte{vport.VersionPipelined})
	reset.CancelWrite(StreamAborted)
	_, err = io.ReadAll(reset)
	var se interface{ Timeout() bool }
	require.Error(t, err)
	require.False(t, errors.As(err, &se) && se.Timeout())
	require.Equal(t, before, b.Stats().BadStreams, "a stream its opener reset is not a bad stream")
}

// TestPipelineOnlyOnFreshLinks: a dial to an answered port pipelines only
// on a link heard from within pipelineFresh; on a link quiet for longer it
// waits for the answer (so a stale link is found out at the dial, and the
// dial moves on to a fresh one).
func TestPipelineOnlyOnFreshLinks(t *testing.T) {
	checkNoLeaks(t)
	a, b := trustedPair(t)
	echoListener(t, b, 9500)
	ctx := ctxT(t, 20*time.Second)
	target := b.Addr().String()
	c, err := a.Dial(ctx, target, 9500)
	require.NoError(t, err)
	got, err := roundTrip(c, []byte("one"))
	require.NoError(t, err)
	require.Equal(t, "one", string(got))
	c.Close()
	l := a.liveLink(b.PublicKey())
	require.NotNil(t, l)
	require.True(t, l.HeardWithin(time.Now(), time.Second), "the answer marks the link heard")
	old := pipelineFreshMin.Swap(int64(time.Nanosecond))
	defer pipelineFreshMin.Store(old)
	// Longer than three smoothed round trips on loopback, whatever the load.
	for l.HeardWithin(time.Now(), pipelineFresh(l)) {
		time.Sleep(time.Millisecond)
	}
	c, err = a.Dial(ctx, target, 9500)
	require.NoError(t, err)
	require.False(t, pipelined(c), "a dial on a quiet link must wait for the answer")
	got, err = roundTrip(c, []byte("two"))
	require.NoError(t, err)
	require.Equal(t, "two", string(got))
	c.Close()
	pipelineFreshMin.Store(int64(time.Hour))
	c, err = a.Dial(ctx, target, 9500)
	require.NoError(t, err)
	require.True(t, pipelined(c), "a dial on a link heard from a moment ago pipelines")
	c.Close()
}

// TestPipelinedDialReachesAcceptorWithoutWrite: a pipelined dial whose
// caller waits for the acceptor before it writes (as with TCP, where the
// connect alone makes Accept return) still reaches the listener.
func TestPipelinedDialReachesAcceptorWithoutWrite(t *testing.T) {
	checkNoLeaks(t)
	alwaysFresh(t)
	a, b := trustedPair(t)
	ln, err := b.Listen(9600)
	require.NoError(t, err)
	defer ln.Close()
	ctx := ctxT(t, 20*time.Second)
	for i := range 3 {
		c, err := dialMaybeStrict(ctx, a, b, 9600, i == 0)
		require.NoError(t, err)
		require.Equal(t, i > 0, pipelined(c), "dial %d", i)
		accepted := make(chan net.Conn, 1)
		go func() {
			s, err := ln.Accept()
			if err == nil {
				accepted <- s
			}
		}()
		var s net.Conn
		select {
		case s = <-accepted:
		case <-time.After(5 * time.Second):
			t.Fatalf("dial %d never reached the listener without a write", i)
		}
		_, err = c.Write([]byte("late"))
		require.NoError(t, err)
		got := make([]byte, 4)
		_, err = io.ReadFull(s, got)
		require.NoError(t, err)
		require.Equal(t, "late", string(got))
		s.Close()
		c.Close()
	}
}

// TestFirstContactPipelines: the first dial to a peer pipelines on the new
// connection, and keeps the typed errors: a closed port is ErrPortClosed on
// the first Read (then the next dial waits and fails itself), and a peer
// whose gate refuses us after our side of the handshake finished is
// ErrNotTrusted on the first Read, after a Write or without one, never an
// EOF or a generic reset.
func TestFirstContactPipelines(t *testing.T) {
	alwaysFresh(t)
	checkNoLeaks(t)
	srv := startServer(t)
	a, b := startNode(t, srv, ""), startNode(t, srv, "")
	establishTrust(t, a, b, b.Addr().String())
	ctx := ctxT(t, 20*time.Second)
	target := b.Addr().String()

	require.Nil(t, a.liveLink(b.PublicKey()), "no connection before the first dial")
	c, err := a.Dial(ctx, target, 9700)
	require.NoError(t, err, "a first contact does not wait for the port's answer")
	require.True(t, pipelined(c))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, ErrPortClosed, "a closed port on first contact")
	c.Close()
	_, err = a.Dial(ctx, target, 9700)
	require.ErrorIs(t, err, ErrPortClosed, "the next dial waits and fails itself")

	echoListener(t, b, 9701)
	require.NoError(t, a.Disconnect(target))
	require.Eventually(t, func() bool { return a.liveLink(b.PublicKey()) == nil }, 5*time.Second, 5*time.Millisecond)
	c, err = a.Dial(ctx, target, 9701)
	require.NoError(t, err)
	require.True(t, pipelined(c))
	got, err := roundTrip(c, []byte("first contact"))
	require.NoError(t, err)
	require.Equal(t, "first contact", string(got))
	c.Close()

	// b stops admitting a, but its knock table still has a's keys (the
	// moment between a revocation and the knock table's rebuild), so a's
	// handshake finishes on a's side and b's gate refuses it after. The
	// rendezvous is down so that a keeps trusting b and dials the address
	// that worked.
	require.NoError(t, srv.srv.Close())
	// With the rendezvous down the revocation is applied at b and queued
	// for a (RevokeTrust says so once its context ends).
	err = b.RevokeTrust(ctxT(t, 200*time.Millisecond), a.Addr().String())
	require.ErrorContains(t, err, "queued")
	require.False(t, b.store.IsTrusted(a.PublicKey()))
	require.Eventually(t, func() bool { return a.liveLink(b.PublicKey()) == nil }, 5*time.Second, 5*time.Millisecond)
	require.True(t, a.store.IsTrusted(b.PublicKey()), "a must not have heard of the revocation")
	b.knock.rebuild(append(b.admissibleKeys(), a.PublicKey()))
	// Now and then the dial itself fails: the refusal arrived before the
	// stream was opened (and dials get it again from the refused
	// connection until it is gone), or a late trust event at b rebuilt
	// its knock table without a. Dial until both ways of using a stream
	// have met the refusal after the dial (rarely more than two dials).
	streams := 0
	for i := 0; i < 20 && streams < 2; i++ {
		how := []string{"read", "write-read"}[streams]
		c, err := a.Dial(ctx, target, 9701)
		if err != nil {
			require.ErrorIs(t, err, ErrNotTrusted, how)
			require.Eventually(t, func() bool { return a.liveLink(b.PublicKey()) == nil }, 5*time.Second, time.Millisecond)
			b.knock.rebuild(append(b.admissibleKeys(), a.PublicKey()))
			continue
		}
		streams++
		require.True(t, pipelined(c), how)
		if how == "write-read" {
			if _, err := c.Write([]byte("let me in")); err != nil {
				require.ErrorIs(t, err, ErrNotTrusted, how)
			}
		}
		_, err = c.Read(make([]byte, 1))
		require.ErrorIs(t, err, ErrNotTrusted, how)
		c.Close()
	}
	require.Equal(t, 2, streams, "too few dials got as far as a pipelined stream: the refusal after the handshake went untested")
}
