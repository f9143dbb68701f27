package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Services of the rig's server side, chosen by the first byte of a stream.
// The byte costs every system the same, and it makes a raw QUIC stream
// visible to the acceptor as soon as it is opened (as quicnode's port
// header does).
const (
	opEcho byte = 'e' // copy every byte back until EOF
	opSink byte = 's' // read to EOF, then answer one byte (ackByte) and close
)

const ackByte = 'k'

// Rig is an Env with the bench services running on its server side: stream
// echo, stream sink (counted) and datagram echo. Scenarios take a Rig.
type Rig struct {
	Env Env

	sunk     atomic.Int64  // sink streams read to EOF
	sunkWake chan struct{} // capacity 1: sunk changed
	active   atomic.Int64  // server-side stream handlers running

	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{} // server sides of live streams
	dgOnce sync.Once
	dgErr  error
	dgCli  net.PacketConn
	dgTo   net.Addr
	once   sync.Once
}

// NewRig starts the services on env's server side. Close closes env.
func NewRig(env Env) *Rig {
	r := &Rig{Env: env, sunkWake: make(chan struct{}, 1), conns: make(map[net.Conn]struct{})}
	r.wg.Add(1)
	go r.acceptLoop()
	return r
}

// Close closes the Env and every server-side stream, and waits for the
// service goroutines.
func (r *Rig) Close() error {
	var err error
	r.once.Do(func() {
		err = r.Env.Close()
		r.mu.Lock()
		r.closed = true
		for c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return err
}

func (r *Rig) acceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.Env.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			c.Close()
			return
		}
		r.conns[c] = struct{}{}
		r.mu.Unlock()
		r.active.Add(1)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer r.active.Add(-1)
			r.serve(c)
			c.Close()
			r.mu.Lock()
			delete(r.conns, c)
			r.mu.Unlock()
		}()
	}
}

func (r *Rig) serve(c net.Conn) {
	buf := make([]byte, 64<<10)
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case opEcho:
		// A plain read/write loop on every system (io.Copy would splice on
		// TCP).
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				closeWrite(c)
				return
			}
		}
	case opSink:
		for {
			_, err := c.Read(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		r.sunk.Add(1)
		select {
		case r.sunkWake <- struct{}{}:
		default:
		}
		c.Write([]byte{ackByte})
	}
}

// waitSunk waits until n sink streams have been read to EOF in total.
func (r *Rig) waitSunk(ctx context.Context, n int64) error {
	for r.sunk.Load() < n {
		select {
		case <-r.sunkWake:
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("bench: %d of %d streams arrived: %w", r.sunk.Load(), n, ctx.Err())
		}
	}
	return nil
}

// waitHandlers waits until no server-side stream handler runs.
func (r *Rig) waitHandlers(ctx context.Context) error {
	for r.active.Load() > 0 {
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("bench: %d stream handlers still running: %w", r.active.Load(), ctx.Err())
		}
	}
	return nil
}

// datagrams returns the client endpoint and the server address, starting the
// server's datagram echo on first use.
func (r *Rig) datagrams(ctx context.Context) (net.PacketConn, net.Addr, error) {
	r.dgOnce.Do(func() {
		cli, srv, to, err := r.Env.Datagrams(ctx)
		if err != nil {
			r.dgErr = err
			return
		}
		r.dgCli, r.dgTo = cli, to
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := srv.ReadFrom(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					return
				}
				srv.WriteTo(buf[:n], from)
			}
		}()
	})
	return r.dgCli, r.dgTo, r.dgErr
}
