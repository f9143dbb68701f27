package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"

	"github.com/agentnet/agentnet/ctl"
)

func init() {
	registerCLI(&cliCommand{
		noun: "trust", verb: "request", summary: "ask a peer (address or hostname) to trust us",
		args:   []cliArg{{Name: "peer", Help: "address (0:3f2a.91c0.0b17) or hostname"}},
		output: ctl.TrustResult{}, errors: []ctl.Code{ctl.CodeConflict},
		example: `agentnet trust request bob --note "alice, from the build farm"`,
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			note := fs.String("note", "", "a note the peer sees with the request (at most 256 bytes)")
			return func(x *cliCtx) (any, error) {
				var res ctl.TrustResult
				return res, x.call(http.MethodPost, ctl.PathTrustRequest, ctl.TrustRequest{Peer: x.args[0], Note: *note}, &res)
			}
		},
		human: printTrustResult,
	})
	registerCLI(&cliCommand{
		noun: "trust", verb: "pending", summary: "list trust requests waiting for our decision",
		output: ctl.TrustList{},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var l ctl.TrustList
				return l, x.call(http.MethodGet, ctl.PathTrustPending, nil, &l)
			}
		},
		human: printTrustList,
	})
	for _, a := range []struct{ verb, path, summary string }{
		{"approve", ctl.PathTrustApprove, "approve a pending trust request"},
		{"reject", ctl.PathTrustReject, "reject a pending trust request"},
		{"revoke", ctl.PathTrustRevoke, "revoke trust: live connections to the peer close at once"},
	} {
		registerCLI(&cliCommand{
			noun: "trust", verb: a.verb, summary: a.summary,
			args:   []cliArg{{Name: "peer", Help: "address or hostname"}},
			output: ctl.TrustResult{}, errors: []ctl.Code{ctl.CodeNotFound, ctl.CodeConflict},
			setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
				return func(x *cliCtx) (any, error) {
					var res ctl.TrustResult
					return res, x.call(http.MethodPost, a.path, ctl.PeerRequest{Peer: x.args[0]}, &res)
				}
			},
			human: printTrustResult,
		})
	}
	registerCLI(&cliCommand{
		noun: "trust", verb: "forget", summary: "delete the record of a peer that is not trusted (a request, a rejected or revoked peer), and our unanswered requests to it",
		args:   []cliArg{{Name: "peer", Help: "address or hostname"}},
		output: ctl.ForgetResult{}, errors: []ctl.Code{ctl.CodeNotFound, ctl.CodeConflict},
		example: "agentnet trust forget 0:3f2a.91c0.0b17",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var res ctl.ForgetResult
				return res, x.call(http.MethodPost, ctl.PathTrustForget, ctl.PeerRequest{Peer: x.args[0]}, &res)
			}
		},
		human: func(w io.Writer, v any) {
			r := v.(ctl.ForgetResult)
			for _, t := range r.Forgotten {
				who := t.Addr
				if who == "" {
					who = "request to " + t.Target
				}
				fmt.Fprintf(w, "forgot %s (%s)\n", who, t.State)
			}
		},
	})
	registerCLI(&cliCommand{
		noun: "trust", verb: "list", summary: "list every trust record and its state",
		output: ctl.TrustList{},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var l ctl.TrustList
				return l, x.call(http.MethodGet, ctl.PathTrust, nil, &l)
			}
		},
		human: printTrustList,
	})
}

func printTrustResult(w io.Writer, v any) {
	r := v.(ctl.TrustResult)
	peer := r.Peer
	if r.Addr != "" && r.Addr != r.Peer {
		peer += " (" + r.Addr + ")"
	}
	fmt.Fprintf(w, "%s: %s\n", peer, r.State)
	if !r.Delivered {
		fmt.Fprintf(w, "not delivered yet, queued: %s\n", r.Warning)
	}
}

func printTrustList(w io.Writer, v any) {
	l := v.(ctl.TrustList)
	if len(l.Records) == 0 {
		fmt.Fprintln(w, "no trust records")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDR\tHOSTNAME\tSTATE\tNOTE")
	for _, r := range l.Records {
		addr := r.Addr
		if addr == "" {
			addr = "(asked " + r.Target + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", addr, dash(r.Hostname), r.State, r.Note)
	}
	tw.Flush()
}
