package event

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
)

var self = addressing.MustParseAddr("0:3f2a.91c0.0b17")

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, topic string
		want           bool
	}{
		{"a.b", "a.b", true},
		{"a.b", "a.b.c", false},
		{"a.*", "a.b", true},
		{"a.*", "a", false},
		{"a.*", "a.b.c", false},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{">", "a", true},
		{">", "a.b.c", true},
		{"*.b.*", "x.b.y", true},
		{"*.b.*", "x.c.y", false},
		{"*", "a", true},
		{"*", "a.b", false},
		{"a.b.c", "a.b", false},
	} {
		require.NoError(t, ValidatePattern(c.pattern))
		require.NoError(t, ValidateTopic(c.topic))
		require.Equal(t, c.want, Match(c.pattern, c.topic), "%s ~ %s", c.pattern, c.topic)
	}
}

func TestValidate(t *testing.T) {
	for _, bad := range []string{"", "a..b", ".a", "a.", "a b", "a.*", "a.>", ">"} {
		require.Error(t, ValidateTopic(bad), "topic %q", bad)
	}
	for _, bad := range []string{"", "a..b", ">.a", "a.>.b", "a*", "a.b>"} {
		require.Error(t, ValidatePattern(bad), "pattern %q", bad)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	ev := Event{Topic: "jobs.done", Data: []byte("ok"), From: self, Seq: 7, Time: time.Unix(0, 12345), Dropped: 2}
	b, err := AppendEvent(nil, ev)
	require.NoError(t, err)
	got, err := ParseEvent(append(b, 9, 9))
	require.NoError(t, err)
	require.Equal(t, ev.Topic, got.Topic)
	require.Equal(t, ev.Data, got.Data)
	require.Equal(t, ev.From, got.From)
	require.Equal(t, ev.Seq, got.Seq)
	require.True(t, ev.Time.Equal(got.Time))
	require.Equal(t, ev.Dropped, got.Dropped)

	sb, err := AppendSubscribe(nil, []string{"a.*", ">"})
	require.NoError(t, err)
	ps, err := ParseSubscribe(sb)
	require.NoError(t, err)
	require.Equal(t, []string{"a.*", ">"}, ps)

	pb, err := AppendPublish(nil, "a.b", []byte("x"))
	require.NoError(t, err)
	topic, data, err := ParsePublish(pb)
	require.NoError(t, err)
	require.Equal(t, "a.b", topic)
	require.Equal(t, "x", string(data))

	a := Ack{Status: StatusBadRequest, Delivered: 3, Text: "no"}
	ga, err := ParseAck(AppendAck(nil, a))
	require.NoError(t, err)
	require.Equal(t, a, ga)

	_, err = AppendPublish(nil, "a", make([]byte, MaxData+1))
	require.Error(t, err)
	_, err = ParseEvent(b[:20])
	require.ErrorIs(t, err, ErrMalformed)
}

func TestBusDropsAndCounts(t *testing.T) {
	bus := NewBus(self)
	defer bus.Close()
	slow, err := bus.Subscribe([]string{"a.>"}, SubscribeOptions{Queue: 2})
	require.NoError(t, err)
	other, err := bus.Subscribe([]string{"b.*"}, SubscribeOptions{})
	require.NoError(t, err)
	for range 5 {
		_, n, err := bus.Publish("a.x", []byte("d"), addressing.Addr{})
		require.NoError(t, err)
		require.LessOrEqual(t, n, 1)
	}
	require.Equal(t, uint64(3), slow.Dropped())
	require.Equal(t, uint64(3), bus.Dropped())
	ev := <-slow.Events()
	require.Equal(t, uint64(0), ev.Dropped)
	require.Equal(t, self, ev.From)
	<-slow.Events()
	// The next delivered event carries the drop count so far.
	bus.Publish("a.y", nil, addressing.Addr{})
	ev = <-slow.Events()
	require.Equal(t, uint64(3), ev.Dropped)
	require.Empty(t, other.Events())

	// OwnOnly subscriptions do not see events other peers pushed.
	own, err := bus.Subscribe([]string{">"}, SubscribeOptions{OwnOnly: true})
	require.NoError(t, err)
	_, n, err := bus.Publish("a.z", nil, addressing.MustParseAddr("0:0000.0000.0001"))
	require.NoError(t, err)
	require.Equal(t, 1, n) // slow only
	require.Empty(t, own.Events())
	own.Close()
	own.Close()

	_, _, err = bus.Publish("bad..topic", nil, addressing.Addr{})
	require.ErrorIs(t, err, ErrInvalid)
	bus.Close()
	ev, ok := <-slow.Events() // queued before the close
	require.True(t, ok)
	require.Equal(t, "a.z", ev.Topic)
	_, ok = <-slow.Events()
	require.False(t, ok)
	_, err = bus.Subscribe([]string{">"}, SubscribeOptions{})
	require.Error(t, err)
}

func TestServerSubscribePublish(t *testing.T) {
	bus := NewBus(self)
	srv := &Server{Bus: bus}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); srv.Serve(l) }()
	defer func() { srv.Close(); bus.Close(); wg.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	sub, err := Subscribe(ctx, c, []string{"jobs.*"})
	require.NoError(t, err)
	defer sub.Close()
	_, n, err := bus.Publish("jobs.done", []byte("42"), addressing.Addr{})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	ev, err := sub.Next()
	require.NoError(t, err)
	require.Equal(t, "jobs.done", ev.Topic)
	require.Equal(t, "42", string(ev.Data))

	// A remote publish reaches local subscribers only.
	local, err := bus.Subscribe([]string{"chat.>"}, SubscribeOptions{})
	require.NoError(t, err)
	c2, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	n, err = Publish(ctx, c2, "chat.hi", []byte("hey"))
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got := <-local.Events()
	require.Equal(t, "hey", string(got.Data))

	// A bad pattern is refused by the server too.
	c3, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	body, _ := AppendSubscribe(nil, []string{"a..b"})
	c3.Write(AppendFrame(nil, TypeSubscribe, body))
	typ, fb, err := ReadFrame(c3)
	require.NoError(t, err)
	require.Equal(t, TypeAck, typ)
	a, _ := ParseAck(fb)
	require.Equal(t, StatusBadRequest, a.Status)
	c3.Close()
}
