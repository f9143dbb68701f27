package quicnode

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/agentnet/agentnet/internal/natlab"
	"github.com/stretchr/testify/require"
)

// TestNATMigration moves one side of a direct home × home pair during a
// rate-limited transfer: its NAT rebinds to a new port, or its line is
// renumbered to a new public address. Both NATs filter by address and
// port, so the old path is dead and a new punch is needed; the transfer
// must carry on over the same QUIC connection, byte-exact, with no pause
// longer than 2 s, on a direct path afterwards. Each way round: the side
// that moves dialled the connection (quic-go's server side follows its new
// address once our probes open the other NAT) or accepted it (the dialler
// redirects its packets to the new address: quic-go cannot).
//
// AGENTNET_MIGRATE_MIB sets the transfer size (default 200 MiB, at 80
// Mbit/s: about 21 s each).
func TestNATMigration(t *testing.T) {
	ln := newLabNet(t)
	size := int64(200) << 20
	if v := os.Getenv("AGENTNET_MIGRATE_MIB"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		size = int64(n) << 20
	}
	type move struct {
		name     string
		wildcard bool                          // sockets bound to the unspecified address
		prep     func(p *labPair) func() error // on the test goroutine; returns the move
	}
	site := func(p *labPair, a bool) *natlab.Site {
		if a {
			return p.sa
		}
		return p.sb
	}
	rebind := func(a bool) func(p *labPair) func() error {
		return func(p *labPair) func() error { return site(p, a).Rebind }
	}
	renumber := func(a bool) func(p *labPair) func() error {
		return func(p *labPair) func() error {
			return func() error { _, err := site(p, a).Renumber(); return err }
		}
	}
	// roam moves the host to a new site behind another home NAT (a new
	// LAN address and a new public address: a laptop changing networks),
	// rate-limited as its first site was.
	roam := func(a bool) func(p *labPair) func() error {
		return func(p *labPair) func() error {
			to := ln.lab.AddSite(site(p, a).Name()+"-new", natlab.KindHome)
			require.NoError(t, to.SetRate(80_000_000))
			h := p.hb
			if a {
				h = p.ha
			}
			return func() error { _, err := h.MoveTo(to); return err }
		}
	}
	cases := []move{
		{"rebind-dialer", false, rebind(true)},
		{"rebind-acceptor", false, rebind(false)},
		{"renumber-dialer", false, renumber(true)},
		{"renumber-acceptor", false, renumber(false)},
		{"roam-dialer", true, roam(true)},
		{"roam-acceptor", true, roam(false)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := ln.pairWith(t, natlab.KindHome, natlab.KindHome, tc.wildcard)
			require.NoError(t, p.sa.SetRate(80_000_000))
			hit := tc.prep(p)
			before := p.a.Stats().Paths.Repaired + p.b.Stats().Paths.Repaired
			moved := make(chan time.Time, 1)
			res := migrateTransfer(t, p, size, 3*time.Second, func() {
				if err := hit(); err != nil {
					t.Errorf("%s: %v", tc.name, err)
				}
				moved <- time.Now()
			})
			require.NoError(t, res.err)
			require.Equal(t, "direct", pathTo(p.a, p.b), "the pair must be direct afterwards")
			require.Same(t, res.link, p.a.liveLink(p.b.PublicKey()).Conn, "the transfer's connection must be the one still in use")
			repaired := p.a.Stats().Paths.Repaired + p.b.Stats().Paths.Repaired - before
			require.GreaterOrEqual(t, repaired, uint64(1), "the path must have been repaired in place")
			at := <-moved
			t.Logf("%s: %d MiB byte-exact over one connection; longest pause %v at %v after the move; repairs %d (redirects a %d, b %d; unroutable writes a %d, b %d)",
				tc.name, size>>20, res.gap.Round(time.Millisecond), res.gapAt.Sub(at).Round(time.Millisecond), repaired,
				p.a.Stats().Paths.Redirected, p.b.Stats().Paths.Redirected, p.a.Stats().Paths.Unroutable, p.b.Stats().Paths.Unroutable)
			require.LessOrEqual(t, res.gap, 2*time.Second, "longest pause in the transfer")
		})
	}
}

type migrateResult struct {
	err   error
	gap   time.Duration // the longest pause between two reads at the receiver
	gapAt time.Time     // when it ended
	link  any           // the QUIC connection the transfer began on
}

// migrateTransfer sends size bytes from p.a to p.b and calls hit after
// the transfer has run for after.
func migrateTransfer(t *testing.T, p *labPair, size int64, after time.Duration, hit func()) migrateResult {
	ln, err := p.b.Listen(9100)
	require.NoError(t, err)
	defer ln.Close()
	type recv struct {
		sum   []byte
		gap   time.Duration
		gapAt time.Time
		err   error
	}
	got := make(chan recv, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- recv{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		buf := make([]byte, 64<<10)
		var r recv
		last := time.Now()
		for {
			k, err := c.Read(buf)
			now := time.Now()
			if k > 0 {
				if d := now.Sub(last); d > r.gap {
					r.gap, r.gapAt = d, now
				}
				last = now
				h.Write(buf[:k])
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				r.err = fmt.Errorf("receiver: %w", err)
				break
			}
		}
		r.sum = h.Sum(nil)
		got <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := p.a.Dial(ctx, p.b.Addr().String(), 9100)
	require.NoError(t, err)
	defer c.Close()
	res := migrateResult{link: p.a.liveLink(p.b.PublicKey()).Conn}
	require.Equal(t, "direct", pathTo(p.a, p.b), "the pair must start direct")
	c.SetDeadline(time.Now().Add(120 * time.Second))
	timer := time.AfterFunc(after, hit)
	defer timer.Stop()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.Reader, size)); err != nil {
		res.err = fmt.Errorf("sender: %w", err)
		return res
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		res.err = fmt.Errorf("sender: %w", err)
		return res
	}
	select {
	case r := <-got:
		res.gap, res.gapAt = r.gap, r.gapAt
		switch {
		case r.err != nil:
			res.err = r.err
		case !bytes.Equal(r.sum, h.Sum(nil)):
			res.err = errors.New("transfer corrupted")
		}
	case <-ctx.Done():
		res.err = errors.New("transfer did not finish")
	}
	return res
}
