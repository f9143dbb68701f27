package event

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/service"
)

const (
	firstFrameTimeout = 10 * time.Second
	writeTimeout      = 30 * time.Second
)

// Server serves a Bus to peers. Set the fields, then call Serve.
type Server struct {
	Bus *Bus
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger

	acc service.Acceptor
}

// Serve accepts streams on l until l fails or the Server closes; it closes l.
func (s *Server) Serve(l net.Listener) error { return s.acc.Serve(l, s.handle) }

// Close closes the listeners and every stream, and waits. Idempotent.
func (s *Server) Close() error { return s.acc.Close() }

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func writeAck(c net.Conn, a Ack) error {
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.Write(AppendFrame(nil, TypeAck, AppendAck(nil, a)))
	return err
}

func (s *Server) handle(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(firstFrameTimeout))
	typ, body, err := ReadFrame(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	from := peerAddr(c.RemoteAddr())
	switch typ {
	case TypeSubscribe:
		s.serveSubscriber(c, br, body)
	case TypePublish:
		for {
			topic, data, err := ParsePublish(body)
			a := Ack{Status: StatusOK}
			if err == nil {
				var n int
				if _, n, err = s.Bus.Publish(topic, data, from); err == nil {
					a.Delivered = uint32(n)
				}
			}
			if err != nil {
				a = Ack{Status: StatusBadRequest, Text: err.Error()}
			}
			if writeAck(c, a) != nil {
				return
			}
			if typ, body, err = ReadFrame(br); err != nil || typ != TypePublish {
				return
			}
		}
	default:
		writeAck(c, Ack{Status: StatusBadRequest, Text: fmt.Sprintf("unexpected frame type %d", typ)})
	}
}

// serveSubscriber streams matching events to a remote subscriber until the
// stream ends. Remote subscribers see only events our own node published.
func (s *Server) serveSubscriber(c net.Conn, br *bufio.Reader, body []byte) {
	patterns, err := ParseSubscribe(body)
	var sub *Subscription
	if err == nil {
		sub, err = s.Bus.Subscribe(patterns, SubscribeOptions{OwnOnly: true})
	}
	if err != nil {
		writeAck(c, Ack{Status: StatusBadRequest, Text: err.Error()})
		return
	}
	defer sub.Close()
	if writeAck(c, Ack{Status: StatusOK}) != nil {
		return
	}
	// The subscriber sends nothing more; a read returning means it went away.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		var b [1]byte
		for {
			if _, err := br.Read(b[:]); err != nil {
				return
			}
		}
	}()
	defer func() { c.Close(); <-gone }()
	var buf []byte
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				return
			}
			buf, err = AppendEvent(buf[:0], ev)
			if err != nil {
				continue
			}
			c.SetWriteDeadline(time.Now().Add(writeTimeout))
			if _, err := c.Write(AppendFrame(nil, TypeEvent, buf)); err != nil {
				s.log().Debug("event subscriber gone", "remote", c.RemoteAddr(), "err", err)
				return
			}
		case <-gone:
			return
		}
	}
}

// peerAddr returns the node address of a stream's remote end (zero if it
// is not an agentnet address, e.g. in tests over TCP).
func peerAddr(a net.Addr) addressing.Addr {
	if sa, ok := a.(addressing.SockAddr); ok {
		return sa.Addr()
	}
	return addressing.Addr{}
}

// RemoteSubscription is a subscription to a peer's bus.
type RemoteSubscription struct {
	c  net.Conn
	br *bufio.Reader
}

// Subscribe subscribes on c (a fresh stream to a peer's event port) and
// waits for the peer's ack. The subscription owns c.
func Subscribe(ctx context.Context, c net.Conn, patterns []string) (*RemoteSubscription, error) {
	for _, p := range patterns {
		if err := ValidatePattern(p); err != nil {
			c.Close()
			return nil, err
		}
	}
	body, err := AppendSubscribe(nil, patterns)
	if err != nil {
		c.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	br := bufio.NewReader(c)
	if _, err := c.Write(AppendFrame(nil, TypeSubscribe, body)); err != nil {
		c.Close()
		return nil, fmt.Errorf("event: subscribe: %w", err)
	}
	if err := readAck(br); err != nil {
		c.Close()
		return nil, fmt.Errorf("event: subscribe: %w", err)
	}
	if !stop() {
		c.Close()
		return nil, ctx.Err()
	}
	c.SetDeadline(time.Time{})
	return &RemoteSubscription{c: c, br: br}, nil
}

// ErrRefused is matched by errors for a refusing ack (*RefusedError).
var ErrRefused = errors.New("event: refused")

// RefusedError is a peer's refusal (a refusing ack). Text is the peer's
// explanation: its words, not ours, so Error leaves it out and PeerText
// returns it.
type RefusedError struct {
	Status byte // StatusBadRequest, StatusRefused, or one this version does not know
	Text   string
}

func (e *RefusedError) Error() string {
	switch e.Status {
	case StatusBadRequest:
		return "event: refused: bad request"
	case StatusRefused:
		return "event: refused"
	}
	return fmt.Sprintf("event: refused: status %d", e.Status)
}

// Is matches ErrRefused.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// PeerText returns the peer's explanation.
func (e *RefusedError) PeerText() string { return e.Text }

func readAck(br *bufio.Reader) error {
	typ, body, err := ReadFrame(br)
	if err != nil {
		return err
	}
	if typ != TypeAck {
		return fmt.Errorf("%w: frame type %d, want ack", ErrMalformed, typ)
	}
	a, err := ParseAck(body)
	if err != nil {
		return err
	}
	if a.Status != StatusOK {
		return &RefusedError{Status: a.Status, Text: a.Text}
	}
	return nil
}

// Next returns the next event. It fails when the stream ends or Close is
// called.
func (r *RemoteSubscription) Next() (Event, error) {
	for {
		typ, body, err := ReadFrame(r.br)
		if err != nil {
			return Event{}, err
		}
		if typ != TypeEvent {
			continue // unknown frames are skipped (forward compatibility)
		}
		return ParseEvent(body)
	}
}

// Close ends the subscription.
func (r *RemoteSubscription) Close() error { return r.c.Close() }

// Publish publishes one event on c (a stream to a peer's event port) and
// returns how many of the peer's subscribers it was queued for. It closes c.
func Publish(ctx context.Context, c net.Conn, topic string, data []byte) (int, error) {
	defer c.Close()
	if err := ValidateTopic(topic); err != nil {
		return 0, err
	}
	body, err := AppendPublish(nil, topic, data)
	if err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write(AppendFrame(nil, TypePublish, body)); err != nil {
		return 0, fmt.Errorf("event: publish: %w", err)
	}
	br := bufio.NewReader(c)
	typ, fb, err := ReadFrame(br)
	if err != nil {
		return 0, fmt.Errorf("event: publish: %w", err)
	}
	if typ != TypeAck {
		return 0, fmt.Errorf("%w: frame type %d, want ack", ErrMalformed, typ)
	}
	a, err := ParseAck(fb)
	if err != nil {
		return 0, err
	}
	if a.Status != StatusOK {
		return 0, &RefusedError{Status: a.Status, Text: a.Text}
	}
	return int(a.Delivered), nil
}
