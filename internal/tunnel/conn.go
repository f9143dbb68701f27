package tunnel

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/coder/websocket"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, FrameLen(MaxPayload)); return &b }}

// getBuf returns an empty buffer with room for n bytes.
func getBuf(n int) []byte {
	if n > FrameLen(MaxPayload) {
		return make([]byte, 0, n)
	}
	return (*bufPool.Get().(*[]byte))[:0]
}

func putBuf(b []byte) {
	if cap(b) < FrameLen(MaxPayload) || cap(b) > 2*FrameLen(MaxPayload) {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}

// readMessage reads the next binary message into buf (at most MaxMessage
// bytes; the connection's read limit enforces it).
func readMessage(ctx context.Context, ws *websocket.Conn, buf []byte) ([]byte, error) {
	typ, r, err := ws.Reader(ctx)
	if err != nil {
		return nil, err
	}
	if typ != websocket.MessageBinary {
		return nil, errors.New("tunnel: text message")
	}
	n := 0
	for {
		if n == len(buf) {
			return nil, errors.New("tunnel: message too large")
		}
		m, err := r.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) {
			return buf[:n], nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// writeMessage writes b as one binary message.
func writeMessage(ctx context.Context, ws *websocket.Conn, b []byte) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return ws.Write(ctx, websocket.MessageBinary, b)
}

// packBatch appends first and then every frame already queued on ch that
// fits into one message, returning the buffers to the pool.
func packBatch(batch, first []byte, ch chan []byte) []byte {
	batch = append(batch, first...)
	putBuf(first)
	for len(batch) <= MaxMessage-FrameLen(MaxPayload) {
		select {
		case f := <-ch:
			batch = append(batch, f...)
			putBuf(f)
		default:
			return batch
		}
	}
	return batch
}

// keepalive pings ws every pingEvery until ctx ends; a ping unanswered
// within pingTimeout calls fail.
func keepalive(ctx context.Context, ws *websocket.Conn, fail func()) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, pingTimeout)
		err := ws.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				fail()
			}
			return
		}
	}
}

// deadline is a resettable deadline whose wait channel closes when it
// passes (after net.Pipe's pipeDeadline).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

func (d *deadline) init() { d.cancel = make(chan struct{}) }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		c := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(c) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
