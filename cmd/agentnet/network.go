package main

import (
	"flag"
	"net/http"

	"github.com/agentnet/agentnet/ctl"
)

// The network commands are the CLI side of networks (DESIGN.md §4). The
// daemon answers not_implemented until networks land in the rendezvous and
// quicnode.
func init() {
	for _, v := range []struct {
		verb, summary, method, path string
		args                        []cliArg
		req                         func(args []string) ctl.NetworkRequest
	}{
		{"create", "create a network we own", http.MethodPost, ctl.PathNetworks,
			[]cliArg{{Name: "name", Help: "the network's name"}}, func(a []string) ctl.NetworkRequest { return ctl.NetworkRequest{Name: a[0]} }},
		{"invite", "make an invite token for a network", http.MethodPost, ctl.PathNetworks + "/invite",
			[]cliArg{{Name: "network", Help: "network name or ID"}}, func(a []string) ctl.NetworkRequest { return ctl.NetworkRequest{Name: a[0]} }},
		{"join", "join a network with an invite token", http.MethodPost, ctl.PathNetworks + "/join",
			[]cliArg{{Name: "token", Help: "the invite token"}}, func(a []string) ctl.NetworkRequest { return ctl.NetworkRequest{Token: a[0]} }},
		{"leave", "leave a network", http.MethodPost, ctl.PathNetworks + "/leave",
			[]cliArg{{Name: "network", Help: "network name or ID"}}, func(a []string) ctl.NetworkRequest { return ctl.NetworkRequest{Name: a[0]} }},
		{"members", "list a network's members", http.MethodPost, ctl.PathNetworks + "/members",
			[]cliArg{{Name: "network", Help: "network name or ID"}}, func(a []string) ctl.NetworkRequest { return ctl.NetworkRequest{Name: a[0]} }},
	} {
		registerCLI(&cliCommand{
			noun: "network", verb: v.verb, summary: v.summary + " (not implemented yet)", args: v.args,
			output: ctl.NetworkResult{}, errors: []ctl.Code{ctl.CodeNotImplemented},
			setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
				return func(x *cliCtx) (any, error) {
					var res ctl.NetworkResult
					return res, x.call(v.method, v.path, v.req(x.args), &res)
				}
			},
		})
	}
}
