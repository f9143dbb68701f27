package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/agentnet/agentnet/ctl"
)

func init() {
	registerCLI(&cliCommand{
		noun: "expose", summary: "serve a local TCP service on a virtual port to trusted peers, until interrupted (streaming)",
		args:      []cliArg{{Name: "port", Help: "virtual port peers dial, 1-65535"}},
		streaming: true, output: ctl.Exposed{}, errors: []ctl.Code{ctl.CodePortInUse},
		example: "agentnet expose 80 --to 127.0.0.1:8080",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			to := fs.String("to", "", "the local service, host:port (required)")
			return func(x *cliCtx) (any, error) {
				port, err := portArg(x.args[0])
				if err != nil {
					return nil, err
				}
				if *to == "" {
					return nil, badUsage("--to host:port is required")
				}
				return nil, holdStream(x, ctl.PathExpose, ctl.ExposeRequest{Port: port, To: *to}, &ctl.Exposed{})
			}
		},
		human: func(w io.Writer, v any) {
			e := v.(*ctl.Exposed)
			fmt.Fprintf(w, "exposing %s on %s to trusted peers; Ctrl-C to stop\n", e.To, e.Addr)
		},
	})
	registerCLI(&cliCommand{
		noun: "forward", summary: "carry a local TCP port to a peer's virtual port, until interrupted (streaming; no root needed)",
		args:      []cliArg{{Name: "local-port", Help: "local TCP port or address (8080, 127.0.0.1:8080; 0 picks one)"}, {Name: "peer:port", Help: "the peer (address or hostname) and virtual port"}},
		streaming: true, output: ctl.Forwarded{}, errors: []ctl.Code{ctl.CodeNotTrusted, ctl.CodePortInUse},
		example: "agentnet forward 8080 bob:80",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				target := x.args[1]
				i := strings.LastIndexByte(target, ':')
				if i < 0 {
					return nil, badUsage("%q: want peer:port", target)
				}
				port, err := portArg(target[i+1:])
				if err != nil {
					return nil, err
				}
				return nil, holdStream(x, ctl.PathForward, ctl.ForwardRequest{Listen: x.args[0], Peer: target[:i], Port: port}, &ctl.Forwarded{})
			}
		},
		human: func(w io.Writer, v any) {
			f := v.(*ctl.Forwarded)
			fmt.Fprintf(w, "forwarding %s to %s:%d; Ctrl-C to stop\n", f.Listen, f.Peer, f.Port)
		},
	})
}

// holdStream opens a streaming request whose first line says it is set up,
// prints that line, and keeps the request (and so the daemon's listener)
// open until the command is interrupted or the daemon ends it.
func holdStream(x *cliCtx, path string, req, first any) error {
	s, err := x.client.Stream(x.ctx, http.MethodPost, path, req)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Next(first); err != nil {
		return streamEnd(x, err)
	}
	x.emit(first)
	stop := afterDone(x.ctx, func() { s.Close() })
	defer stop()
	var extra map[string]any
	for {
		if err := s.Next(&extra); err != nil {
			if x.ctx.Err() != nil {
				return nil
			}
			if err == io.EOF {
				return &ctl.Error{Code: ctl.CodeUnavailable, Message: "the daemon ended the stream", Hint: "is the daemon shutting down? (agentnet status)"}
			}
			return err
		}
	}
}

// afterDone runs f when ctx ends; the returned func cancels that.
func afterDone(ctx context.Context, f func()) (stop func() bool) {
	return context.AfterFunc(ctx, f)
}
