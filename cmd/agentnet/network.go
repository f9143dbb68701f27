package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/agentnet/agentnet/ctl"
)

// The network commands (README, "Networks"): a network is named by its name
// or ID. Members reach each other without trust requests.
func init() {
	netArg := cliArg{Name: "network", Help: "network name or ID"}
	registerCLI(&cliCommand{
		noun: "network", verb: "list", summary: "list the networks this node is in",
		output: ctl.NetworkList{},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var l ctl.NetworkList
				return l, x.call(http.MethodGet, ctl.PathNetworks, nil, &l)
			}
		},
		human: printNetworkList,
	})
	registerCLI(&cliCommand{
		noun: "network", verb: "create", summary: "create a network we own",
		args:   []cliArg{{Name: "name", Help: "the network's name (a-z, 0-9, '-'; unique at the rendezvous)"}},
		output: ctl.Network{}, errors: []ctl.Code{ctl.CodeConflict},
		example: "agentnet network create builders",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var n ctl.Network
				return n, x.call(http.MethodPost, ctl.PathNetworks, ctl.NetworkCreateRequest{Name: x.args[0]}, &n)
			}
		},
		human: printNetwork,
	})
	registerCLI(&cliCommand{
		noun: "network", verb: "invite", summary: "make an invite token (owner only); give it to the invitee",
		args:   []cliArg{netArg},
		output: ctl.NetworkInvite{}, errors: []ctl.Code{ctl.CodeNotFound, ctl.CodeConflict},
		example: "agentnet network invite builders --for bob --ttl 1h",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			invitee := fs.String("for", "", "who may join: a key, or the address or hostname of a peer whose key we know; none: a bearer token anyone holding it can use")
			ttl := fs.Duration("ttl", 24*time.Hour, "how long the invite is valid")
			return func(x *cliCtx) (any, error) {
				if *ttl < time.Second || *ttl > 365*24*time.Hour {
					return nil, badUsage("--ttl %v out of range: want 1s to 8760h", *ttl)
				}
				var res ctl.NetworkInvite
				req := ctl.NetworkInviteRequest{Invitee: *invitee, TTLSeconds: int(ttl.Seconds())}
				return res, x.call(http.MethodPost, ctl.NetworkPath(x.args[0], "invite"), req, &res)
			}
		},
		human: func(w io.Writer, v any) {
			r := v.(ctl.NetworkInvite)
			who := "anyone holding this token (keep it secret)"
			if !r.Bearer {
				who = "key " + r.Invitee
			}
			fmt.Fprintf(w, "invite to %s (%d) for %s, valid until %s:\n%s\n", r.Network.Name, r.Network.ID, who, r.Expires.Local().Format(time.RFC3339), r.Token)
		},
	})
	registerCLI(&cliCommand{
		noun: "network", verb: "join", summary: "join a network with an invite token",
		args:   []cliArg{{Name: "token", Help: "the invite token, anet-invite:…"}},
		output: ctl.Network{}, errors: []ctl.Code{ctl.CodeNotFound, ctl.CodeNotTrusted, ctl.CodeConflict},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var n ctl.Network
				return n, x.call(http.MethodPost, ctl.PathNetworksJoin, ctl.NetworkJoinRequest{Token: x.args[0]}, &n)
			}
		},
		human: printNetwork,
	})
	registerCLI(&cliCommand{
		noun: "network", verb: "leave", summary: "leave a network: links to its members close at once",
		args:   []cliArg{netArg},
		output: ctl.Network{}, errors: []ctl.Code{ctl.CodeNotFound, ctl.CodeConflict},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var n ctl.Network
				return n, x.call(http.MethodPost, ctl.NetworkPath(x.args[0], "leave"), nil, &n)
			}
		},
		human: func(w io.Writer, v any) {
			n := v.(ctl.Network)
			fmt.Fprintf(w, "left %s (%d)\n", n.Name, n.ID)
		},
	})
	registerCLI(&cliCommand{
		noun: "network", verb: "members", summary: "list a network's members, as our node verified them",
		args:   []cliArg{netArg},
		output: ctl.NetworkMembers{}, errors: []ctl.Code{ctl.CodeNotFound},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var m ctl.NetworkMembers
				return m, x.call(http.MethodGet, ctl.NetworkPath(x.args[0], ""), nil, &m)
			}
		},
		human: printNetworkMembers,
	})
	registerCLI(&cliCommand{
		noun: "network", verb: "remove", summary: "remove a member (owner only): its links close at once",
		args:   []cliArg{netArg, {Name: "member", Help: "a key, an address or a trusted peer's hostname"}},
		output: ctl.NetworkMembers{}, errors: []ctl.Code{ctl.CodeNotFound, ctl.CodeConflict},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var m ctl.NetworkMembers
				return m, x.call(http.MethodPost, ctl.NetworkPath(x.args[0], "remove"), ctl.NetworkRemoveRequest{Member: x.args[1]}, &m)
			}
		},
		human: printNetworkMembers,
	})
}

func printNetwork(w io.Writer, v any) {
	n := v.(ctl.Network)
	role := "member"
	if n.Owned {
		role = "owner"
	}
	fmt.Fprintf(w, "%s (%d): we are %s as %s; %d member(s)\n", n.Name, n.ID, role, n.Addr, n.Members)
}

func printNetworkList(w io.Writer, v any) {
	l := v.(ctl.NetworkList)
	if len(l.Networks) == 0 {
		fmt.Fprintln(w, "no networks")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tOUR ADDR\tOWNER\tMEMBERS")
	for _, n := range l.Networks {
		owner := n.OwnerAddr
		if n.Owned {
			owner = "us"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\n", n.ID, n.Name, n.Addr, owner, n.Members)
	}
	tw.Flush()
}

func printNetworkMembers(w io.Writer, v any) {
	m := v.(ctl.NetworkMembers)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ADDR\tHOSTNAME\tROLE\tJOINED\n")
	for _, mb := range m.Members {
		role := "member"
		if mb.Owner {
			role = "owner"
		}
		if mb.Self {
			role += " (us)"
		}
		joined := "-"
		if !mb.Joined.IsZero() {
			joined = mb.Joined.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", mb.Addr, dash(mb.Hostname), role, joined)
	}
	tw.Flush()
}
