package service

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAcceptorCloseStopsEverything(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var a Acceptor
	var handled atomic.Int32
	served := make(chan error, 1)
	go func() {
		served <- a.Serve(l, func(c net.Conn) {
			handled.Add(1)
			io.Copy(io.Discard, c) // blocks until Close closes c
		})
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	require.Eventually(t, func() bool { return handled.Load() == 1 }, 5*time.Second, 5*time.Millisecond)

	done := make(chan struct{})
	go func() { a.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock the handler")
	}
	require.Error(t, <-served)
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	require.True(t, errors.Is(a.Serve(l2, func(net.Conn) {}), net.ErrClosed))
	require.NoError(t, a.Close(), "idempotent")
}
