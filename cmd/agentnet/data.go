package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/agentnet/agentnet/ctl"
)

// peerCodes are the errors of every command that reaches a peer.
var peerCodes = []ctl.Code{ctl.CodeNotTrusted, ctl.CodeUnreachable, ctl.CodePortClosed, ctl.CodeTimeout}

func init() {
	registerCLI(&cliCommand{
		noun: "ping", summary: "measure round trips to a peer's echo service (port 7)",
		args:   []cliArg{{Name: "peer", Help: "address or hostname"}},
		output: ctl.PingResult{}, errors: peerCodes,
		example: "agentnet ping bob -c 5",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			count := fs.Int("c", 4, "round trips (1-1000)")
			interval := fs.Duration("i", 0, "pause between round trips (default 200ms)")
			return func(x *cliCtx) (any, error) {
				var res ctl.PingResult
				req := ctl.PingRequest{Peer: x.args[0], Count: *count, IntervalMS: int(interval.Milliseconds()), TimeoutMS: timeoutMS(x)}
				if !x.timeoutSet {
					// Room for every round trip and pause.
					gap := max(*interval, 200*time.Millisecond)
					x.timeout = max(x.timeout, time.Duration(*count)*gap+10*time.Second)
				}
				return res, x.call(http.MethodPost, ctl.PathPing, req, &res)
			}
		},
		human: func(w io.Writer, v any) {
			r := v.(ctl.PingResult)
			fmt.Fprintf(w, "echo from %s (%s): connected in %.2f ms\n", r.Peer, r.Addr, r.ConnectMS)
			for i, rtt := range r.RTTs {
				fmt.Fprintf(w, "seq=%d time=%.3f ms\n", i, rtt)
			}
			fmt.Fprintf(w, "%d round trips, min/avg/max = %.3f/%.3f/%.3f ms\n", len(r.RTTs), r.MinMS, r.AvgMS, r.MaxMS)
		},
	})
	registerCLI(&cliCommand{
		noun: "send", summary: "send data on one stream to a peer's virtual port and print the answer",
		args:   []cliArg{{Name: "peer", Help: "address or hostname"}, {Name: "port", Help: "virtual port, 1-65535"}},
		output: ctl.SendResult{}, errors: peerCodes,
		example: `agentnet send bob 5000 --data "hello"`,
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			data := fs.String("data", "", "the data to send (default: read standard input)")
			return func(x *cliCtx) (any, error) {
				port, err := portArg(x.args[1])
				if err != nil {
					return nil, err
				}
				req := ctl.SendRequest{Peer: x.args[0], Port: port, Data: *data}
				if !flagSet(fs, "data") {
					b, err := io.ReadAll(io.LimitReader(x.stdin, 16<<20))
					if err != nil {
						return nil, err
					}
					if utf8.Valid(b) {
						req.Data = string(b)
					} else {
						req.DataBase64 = base64.StdEncoding.EncodeToString(b)
					}
				}
				var res ctl.SendResult
				return res, x.call(http.MethodPost, ctl.PathSend, req, &res)
			}
		},
		human: func(w io.Writer, v any) {
			r := v.(ctl.SendResult)
			fmt.Fprintf(w, "sent %d bytes to %s:%d\n", r.Bytes, r.Peer, r.Port)
			if r.ReplyBytes > 0 {
				if r.Reply != "" {
					fmt.Fprintf(w, "reply (%d bytes): %s\n", r.ReplyBytes, r.Reply)
				} else {
					fmt.Fprintf(w, "reply (%d bytes, base64): %s\n", r.ReplyBytes, r.ReplyBase64)
				}
			}
		},
	})
	registerCLI(&cliCommand{
		noun: "recv", summary: "listen on a virtual port and print what each stream carries, until interrupted (streaming; -n to stop after some)",
		args:      []cliArg{{Name: "port", Help: "virtual port, 1-65535"}},
		streaming: true, output: ctl.Received{}, errors: []ctl.Code{ctl.CodePortInUse},
		example: "agentnet recv 5000 -n 1 --json",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			n := fs.Int("n", 0, "streams to receive before exiting (default 0: until interrupted)")
			maxBytes := fs.Int("max-bytes", 0, "bytes kept per stream (default: the daemon's message limit)")
			return func(x *cliCtx) (any, error) {
				port, err := portArg(x.args[0])
				if err != nil {
					return nil, err
				}
				if *n < 0 {
					return nil, badUsage("-n %d: want 0 or more", *n)
				}
				s, err := x.client.Stream(x.ctx, http.MethodPost, ctl.PathRecv, ctl.RecvRequest{Port: port, Count: *n, MaxBytes: *maxBytes})
				if err != nil {
					return nil, err
				}
				defer s.Close()
				x.note("listening on virtual port %d", port)
				for {
					var r ctl.Received
					if err := s.Next(&r); err != nil {
						return nil, streamEnd(x, err)
					}
					x.emit(r)
				}
			}
		},
		human: func(w io.Writer, v any) {
			r := v.(ctl.Received)
			if r.Data != "" || r.DataBase64 == "" {
				// One write per stream, its newline included: a line
				// printed by another process on the same terminal cannot
				// land inside it.
				out := r.Data
				if out != "" && out[len(out)-1] != '\n' {
					out += "\n"
				}
				io.WriteString(w, out)
				return
			}
			fmt.Fprintln(w, r.DataBase64)
		},
	})
	registerCLI(&cliCommand{
		noun: "connect", summary: "pipe standard input and output to a peer's virtual port, like nc (streaming, raw bytes); exits 0 only if both directions ended cleanly",
		args:      []cliArg{{Name: "peer", Help: "address or hostname"}, {Name: "port", Help: "virtual port, 1-65535"}},
		streaming: true, errors: append([]ctl.Code{ctl.CodeStreamReset, ctl.CodeUnavailable}, peerCodes...),
		example: "tar c dir | agentnet connect bob 5000",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				port, err := portArg(x.args[1])
				if err != nil {
					return nil, err
				}
				return nil, connect(x, x.args[0], port)
			}
		},
	})
	registerCLI(&cliCommand{
		noun: "bench", summary: "measure throughput (discard service, else echo) and round trips to a peer",
		args:   []cliArg{{Name: "peer", Help: "address or hostname"}},
		output: ctl.BenchResult{}, errors: peerCodes,
		example: "agentnet bench bob --bytes 67108864",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			size := fs.Int64("bytes", 16<<20, "bytes to transfer")
			pings := fs.Int("pings", 20, "round trips to time")
			return func(x *cliCtx) (any, error) {
				var res ctl.BenchResult
				return res, x.call(http.MethodPost, ctl.PathBench, ctl.BenchRequest{Peer: x.args[0], Bytes: *size, Pings: *pings}, &res)
			}
		},
		human: func(w io.Writer, v any) {
			r := v.(ctl.BenchResult)
			fmt.Fprintf(w, "%s (%s): %s in %.3f s = %.1f Mbit/s via %s\n", r.Peer, r.Addr, bytesHuman(r.Bytes), r.Seconds, r.MbitPerS, r.Service)
			if r.RTTCount > 0 {
				fmt.Fprintf(w, "rtt min/avg/max = %.3f/%.3f/%.3f ms over %d round trips\n", r.RTTMinMS, r.RTTAvgMS, r.RTTMaxMS, r.RTTCount)
			}
		},
	})
}

// connect pipes standard input to the stream and the stream to standard
// output. It succeeds only if both directions ended cleanly: the peer's EOF
// arrived, and all of standard input was handed to the peer's stream
// (the daemon confirms it). A stream cut on the way (the peer reset it, its
// node went away, trust was revoked, a daemon stopped) fails with the code
// the daemon reported (stream_reset, not_trusted, unavailable), even if
// some data arrived. Interrupting cuts the stream (the peer sees a reset).
func connect(x *cliCtx, peer string, port int) error {
	ctx, cancel := context.WithTimeout(x.ctx, x.timeout)
	c, err := x.client.Connect(ctx, ctl.ConnectRequest{Peer: peer, Port: port, TimeoutMS: timeoutMS(x)})
	cancel()
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			c.Abort()
		}
	}()
	stop := afterDone(x.ctx, func() { c.Abort() })
	defer stop()
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, stdinOnly{x.stdin})
		var se stdinError
		switch {
		case errors.As(err, &se):
			c.Abort()
		case err == nil:
			err = c.CloseWrite()
		}
		sent <- err
	}()
	_, rerr := io.Copy(x.stdout, c)
	if x.ctx.Err() != nil {
		return nil
	}
	if rerr != nil {
		return rerr
	}
	// The peer ended its side. Standard input goes on to its end (the
	// peer may still read), unless it is a terminal, which may never end.
	if f, isFile := x.stdin.(*os.File); isFile && isTerminal(f) {
		c.CloseWrite()
	} else if err := <-sent; err != nil {
		var se stdinError
		if errors.As(err, &se) {
			return se.err
		}
		// The daemon refused our data: Wait says why.
		if werr := c.Wait(); werr != nil {
			return werr
		}
		return err
	}
	if err := c.Wait(); err != nil {
		if x.ctx.Err() != nil {
			return nil
		}
		return err
	}
	ok = true
	c.Close()
	return nil
}

// stdinOnly marks read errors of standard input, so they are not taken for
// the stream's.
type stdinOnly struct{ r io.Reader }

type stdinError struct{ err error }

func (e stdinError) Error() string { return "read standard input: " + e.err.Error() }

func (s stdinOnly) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err != nil && err != io.EOF {
		err = stdinError{err}
	}
	return n, err
}

func portArg(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, badUsage("port %q: want 1-65535", s)
	}
	return p, nil
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// streamEnd turns the end of a stream into the command's result: a normal
// end or an interrupt is success.
func streamEnd(x *cliCtx, err error) error {
	if errors.Is(err, io.EOF) || x.ctx.Err() != nil {
		return nil
	}
	return err
}
