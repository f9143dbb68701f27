package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"

	"github.com/agentnet/agentnet/ctl"
)

func init() {
	registerCLI(&cliCommand{
		noun: "events", verb: "publish", summary: "publish an event on our bus, or with --to on a peer's",
		args:   []cliArg{{Name: "topic", Help: "dot-separated, e.g. builds.linux.done"}},
		output: ctl.PublishResult{}, errors: peerCodes,
		example: `agentnet events publish builds.linux.done --data '{"ok":true}'`,
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			data := fs.String("data", "", "the event's data (at most 60 KiB)")
			to := fs.String("to", "", "publish on this peer's bus instead of ours")
			return func(x *cliCtx) (any, error) {
				var res ctl.PublishResult
				return res, x.call(http.MethodPost, ctl.PathEventsPublish, ctl.PublishRequest{Topic: x.args[0], Data: *data, To: *to}, &res)
			}
		},
		human: func(w io.Writer, v any) {
			r := v.(ctl.PublishResult)
			where := "our bus"
			if r.To != "" {
				where = r.To + "'s bus"
			}
			fmt.Fprintf(w, "published %s on %s, queued for %d subscribers\n", r.Topic, where, r.Delivered)
		},
	})
	registerCLI(&cliCommand{
		noun: "events", verb: "subscribe", summary: "print events matching the patterns as they come (streaming)",
		args:      []cliArg{{Name: "pattern", Help: "a.b, a.*, a.> or > (default >: everything)", Optional: true, Variadic: true}},
		streaming: true, output: ctl.Event{}, errors: peerCodes,
		example: "agentnet events subscribe 'builds.>' --from bob --json",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			from := fs.String("from", "", "subscribe to this peer's bus instead of ours")
			n := fs.Int("n", 0, "events to print before exiting; 0 = until interrupted")
			return func(x *cliCtx) (any, error) {
				if *n < 0 {
					return nil, badUsage("-n %d: want 0 or more", *n)
				}
				req := ctl.SubscribeRequest{Patterns: x.args, From: *from, Count: *n}
				if len(req.Patterns) == 0 {
					req.Patterns = []string{">"}
				}
				s, err := x.client.Stream(x.ctx, http.MethodPost, ctl.PathEventsSubscribe, req)
				if err != nil {
					return nil, err
				}
				defer s.Close()
				stop := afterDone(x.ctx, func() { s.Close() })
				defer stop()
				x.note("subscribed to %v", req.Patterns)
				for {
					var ev ctl.Event
					if err := s.Next(&ev); err != nil {
						return nil, streamEnd(x, err)
					}
					x.emit(ev)
				}
			}
		},
		human: func(w io.Writer, v any) {
			ev := v.(ctl.Event)
			data := ev.Data
			if data == "" {
				data = ev.DataBase64
			}
			fmt.Fprintf(w, "%s %s %s", ev.Topic, ev.From, data)
			if ev.Dropped > 0 {
				fmt.Fprintf(w, " (%d dropped so far)", ev.Dropped)
			}
			fmt.Fprintln(w)
		},
	})
}
