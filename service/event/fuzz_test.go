package event

import (
	"bytes"
	"testing"
	"time"
)

func seedEvent() []byte {
	b, _ := AppendEvent(nil, Event{Topic: "jobs.done", Data: []byte("ok"), From: self, Seq: 1, Time: time.Unix(1, 0)})
	return b
}

// FuzzParseEvent: parsing never panics and round-trips.
func FuzzParseEvent(f *testing.F) {
	f.Add(seedEvent())
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseEvent(b)
		if err != nil {
			return
		}
		enc, err := AppendEvent(nil, ev)
		if err != nil {
			t.Fatalf("parsed event does not encode: %v", err)
		}
		ev2, err := ParseEvent(enc)
		if err != nil || ev2.Topic != ev.Topic || !bytes.Equal(ev2.Data, ev.Data) || ev2.From != ev.From || ev2.Seq != ev.Seq || ev2.Dropped != ev.Dropped || !ev2.Time.Equal(ev.Time) {
			t.Fatalf("round trip: %+v -> %+v, %v", ev, ev2, err)
		}
	})
}

// FuzzParseSubscribe: parsing never panics and round-trips.
func FuzzParseSubscribe(f *testing.F) {
	b, _ := AppendSubscribe(nil, []string{"jobs.*", "a.>", ">"})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := ParseSubscribe(b)
		if err != nil {
			return
		}
		enc, err := AppendSubscribe(nil, ps)
		if err != nil {
			t.Fatalf("parsed patterns do not encode: %v", err)
		}
		ps2, err := ParseSubscribe(enc)
		if err != nil || len(ps2) != len(ps) {
			t.Fatalf("round trip: %q -> %q, %v", ps, ps2, err)
		}
		for i := range ps {
			if ps[i] != ps2[i] {
				t.Fatalf("round trip: %q -> %q", ps, ps2)
			}
			// Pattern syntax checks never panic either.
			if ValidatePattern(ps[i]) == nil {
				Match(ps[i], "a.b.c")
			}
		}
	})
}

// FuzzParsePublish: parsing never panics and round-trips.
func FuzzParsePublish(f *testing.F) {
	b, _ := AppendPublish(nil, "chat.hi", []byte("hey"))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		topic, data, err := ParsePublish(b)
		if err != nil {
			return
		}
		enc, err := AppendPublish(nil, topic, data)
		if err != nil {
			t.Fatalf("parsed publish does not encode: %v", err)
		}
		t2, d2, err := ParsePublish(enc)
		if err != nil || t2 != topic || !bytes.Equal(d2, data) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}

// FuzzParseAck: parsing never panics and round-trips.
func FuzzParseAck(f *testing.F) {
	f.Add(AppendAck(nil, Ack{Status: StatusOK, Delivered: 2}))
	f.Add(AppendAck(nil, Ack{Status: StatusBadRequest, Text: "bad pattern"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAck(b)
		if err != nil {
			return
		}
		a2, err := ParseAck(AppendAck(nil, a))
		if err != nil || a2 != a {
			t.Fatalf("round trip: %+v -> %+v, %v", a, a2, err)
		}
	})
}

// FuzzMatch: topic and pattern checks never panic, and a valid topic
// matches itself and ">".
func FuzzMatch(f *testing.F) {
	f.Add("a.*.c", "a.b.c")
	f.Add(">", "x")
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		if ValidatePattern(pattern) == nil && ValidateTopic(topic) == nil {
			Match(pattern, topic)
		}
		if ValidateTopic(topic) == nil && (!Match(topic, topic) || !Match(">", topic)) {
			t.Fatalf("valid topic %q does not match itself or >", topic)
		}
	})
}
