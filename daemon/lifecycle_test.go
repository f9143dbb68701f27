package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// TestShutdownEndpoint: POST /v1/shutdown answers, then Run returns as on
// SIGTERM and the socket is gone.
func TestShutdownEndpoint(t *testing.T) {
	checkNoLeaks(t)
	srv := rendezvoustest.New(t)
	d, err := New(Config{StateDir: filepath.Join(t.TempDir(), "a"), ListenAddr: "127.0.0.1:0", RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey()})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Run(context.Background()) }()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	c := ctl.NewClient(d.Socket())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.Do(ctx, "POST", ctl.PathShutdown, map[string]any{"force": true}, nil)
	requireCode(t, err, ctl.CodeInvalidArgument) // strict body: nothing happens
	var res ctl.ShutdownResult
	require.NoError(t, c.Do(ctx, "POST", ctl.PathShutdown, nil, &res))
	require.True(t, res.Stopping)
	require.Equal(t, os.Getpid(), res.PID)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after /v1/shutdown")
	}
	_, err = os.Stat(d.Socket())
	require.True(t, errors.Is(err, os.ErrNotExist), "socket removed")
}

// TestTrustEvents: an incoming trust request is published on the target's
// own bus as trust.request (with the note), the approval reaches the
// requester's bus as trust.changed.
func TestTrustEvents(t *testing.T) {
	srv := rendezvoustest.New(t)
	dir := t.TempDir()
	a := startDaemon(t, Config{StateDir: filepath.Join(dir, "a"), RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey(), Hostname: "alice"})
	b := startDaemon(t, Config{StateDir: filepath.Join(dir, "b"), RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey(), Hostname: "bob"})
	waitRegistered(t, a)
	waitRegistered(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	subB, err := b.c.Stream(ctx, "POST", ctl.PathEventsSubscribe, ctl.SubscribeRequest{Patterns: []string{"trust.>"}})
	require.NoError(t, err)
	defer subB.Close()
	subA, err := a.c.Stream(ctx, "POST", ctl.PathEventsSubscribe, ctl.SubscribeRequest{Patterns: []string{"trust.>"}})
	require.NoError(t, err)
	defer subA.Close()

	var res ctl.TrustResult
	a.must(t, "POST", ctl.PathTrustRequest, ctl.TrustRequest{Peer: "bob", Note: "alice here"}, &res)
	next := func(s *ctl.Stream) (ctl.Event, ctl.TrustEvent) {
		var ev ctl.Event
		require.NoError(t, s.Next(&ev))
		var te ctl.TrustEvent
		require.NoError(t, json.Unmarshal([]byte(ev.Data), &te), ev.Data)
		return ev, te
	}
	ev, te := next(subB)
	require.Equal(t, ctl.TopicTrustRequest, ev.Topic)
	require.Equal(t, b.Status().Addr, ev.From, "published by bob's own daemon")
	require.Equal(t, "alice here", te.Note)
	require.Equal(t, "alice", te.Hostname)
	require.Equal(t, a.Status().Addr, te.Addr)
	require.Equal(t, "pending-in", te.State)

	b.must(t, "POST", ctl.PathTrustApprove, ctl.PeerRequest{Peer: te.Addr}, &res)
	ev, te = next(subB)
	require.Equal(t, ctl.TopicTrustChanged, ev.Topic)
	require.Equal(t, "trusted", te.State)
	require.Equal(t, "pending-in", te.Old)
	// Alice: her own request is not a trust.request; the approval is a change.
	for {
		ev, te = next(subA)
		require.NotEqual(t, ctl.TopicTrustRequest, ev.Topic)
		if te.State == "trusted" {
			break
		}
	}
	require.Equal(t, ctl.TopicTrustChanged, ev.Topic)
	require.Equal(t, b.Status().Addr, te.Addr)
}
