package daemon

import (
	"context"
	"net/http"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/service"
	"github.com/agentnet/agentnet/service/event"
)

func (d *Daemon) handlePublish(w http.ResponseWriter, r *http.Request) error {
	var req ctl.PublishRequest
	if err := decode(w, r, maxSmallBody+event.MaxData*4/3, &req); err != nil {
		return err
	}
	if err := event.ValidateTopic(req.Topic); err != nil {
		return ctl.Errorf(ctl.CodeInvalidArgument, "dot-separated segments of printable ASCII, no '*' or '>'", "%v", err)
	}
	data, err := payload(req.Data, req.DataBase64)
	if err != nil {
		return err
	}
	if len(data) > event.MaxData {
		return invalid("event data of %d bytes: at most %d", len(data), event.MaxData)
	}
	res := ctl.PublishResult{Topic: req.Topic, To: req.To}
	if req.To == "" {
		_, n, err := d.bus.Publish(req.Topic, data, d.node.Addr())
		if err != nil {
			return err
		}
		res.Delivered = n
		return writeOK(w, res)
	}
	t, err := d.checkPeer(req.To)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), defaultTimeout)
	defer cancel()
	c, err := d.dial(ctx, t, service.PortEvents)
	if err != nil {
		return err
	}
	if res.Delivered, err = event.Publish(ctx, c, req.Topic, data); err != nil {
		return ctxErr(ctx, err)
	}
	return writeOK(w, res)
}

func eventLine(ev event.Event) ctl.Event {
	e := ctl.Event{Topic: ev.Topic, From: ev.From.String(), Seq: ev.Seq, Time: ev.Time.UTC(), Dropped: ev.Dropped}
	e.Data, e.DataBase64 = dataFields(ev.Data)
	return e
}

func (d *Daemon) handleSubscribe(w http.ResponseWriter, r *http.Request) error {
	var req ctl.SubscribeRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	if len(req.Patterns) == 0 {
		req.Patterns = []string{">"}
	}
	if len(req.Patterns) > event.MaxPatterns {
		return invalid("%d patterns: at most %d", len(req.Patterns), event.MaxPatterns)
	}
	for _, p := range req.Patterns {
		if err := event.ValidatePattern(p); err != nil {
			return ctl.Errorf(ctl.CodeInvalidArgument, "patterns: a.b, a.*, a.> or >", "%v", err)
		}
	}
	if req.Count < 0 {
		return invalid("count %d: want 0 (unlimited) or more", req.Count)
	}
	ctx := r.Context()
	sw := &streamWriter{w: w}
	if req.From == "" {
		sub, err := d.bus.Subscribe(req.Patterns, event.SubscribeOptions{})
		if err != nil {
			return err
		}
		defer sub.Close()
		sw.start()
		for n := 0; req.Count == 0 || n < req.Count; n++ {
			select {
			case ev, ok := <-sub.Events():
				if !ok {
					return nil
				}
				if !sw.line(eventLine(ev)) {
					return nil
				}
			case <-ctx.Done():
				return nil
			}
		}
		return nil
	}
	t, err := d.checkPeer(req.From)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	c, err := d.dial(dctx, t, service.PortEvents)
	if err != nil {
		cancel()
		return err
	}
	rs, err := event.Subscribe(dctx, c, req.Patterns)
	cancel()
	if err != nil {
		return ctxErr(dctx, err)
	}
	defer rs.Close()
	stop := context.AfterFunc(ctx, func() { rs.Close() })
	defer stop()
	sw.start()
	for n := 0; req.Count == 0 || n < req.Count; n++ {
		ev, err := rs.Next()
		if err != nil {
			if ctx.Err() == nil {
				sw.fail(d.apiError(err))
			}
			return nil
		}
		if !sw.line(eventLine(ev)) {
			return nil
		}
	}
	return nil
}
