package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/agentnet/agentnet/ctl"
)

func init() {
	registerCLI(&cliCommand{
		noun: "status", summary: "show this node: address, hostname, rendezvous, services, counters",
		output: ctl.Status{}, errors: []ctl.Code{ctl.CodeNotRunning},
		example: "agentnet status --json",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var st ctl.Status
				return st, x.call(http.MethodGet, ctl.PathStatus, nil, &st)
			}
		},
		human: func(w io.Writer, v any) { printStatus(w, v.(ctl.Status)) },
	})
	registerCLI(&cliCommand{
		noun: "peers", summary: "list live peer connections (path, RTT, bytes)",
		output: ctl.PeerList{},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var pl ctl.PeerList
				return pl, x.call(http.MethodGet, ctl.PathPeers, nil, &pl)
			}
		},
		human: func(w io.Writer, v any) {
			pl := v.(ctl.PeerList)
			if len(pl.Peers) == 0 {
				fmt.Fprintln(w, "no live peer connections")
				return
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ADDR\tHOSTNAME\tPATH\tFOUND\tSETUP\tREMOTE\tRTT\tSENT\tRECEIVED")
			for _, p := range pl.Peers {
				path := p.Path
				if p.Transport == "tcp" {
					path += " over tcp"
				}
				if p.Standby {
					path += " (standby)"
				}
				setup := "-"
				if p.SetupMillis > 0 {
					setup = fmt.Sprintf("%.1f ms", p.SetupMillis)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.2f ms\t%s\t%s\n", p.Addr, dash(p.Hostname), path, p.Found, setup, p.Remote, p.RTTMillis, bytesHuman(int64(p.BytesSent)), bytesHuman(int64(p.BytesReceived)))
			}
			tw.Flush()
		},
	})
	registerCLI(&cliCommand{
		noun: "hostname", verb: "set", summary: "claim a hostname at the rendezvous (saved in the config file)",
		args:   []cliArg{{Name: "name", Help: "1-63 of a-z, 0-9, '-'"}},
		output: ctl.HostnameResult{}, errors: []ctl.Code{ctl.CodeConflict},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var res ctl.HostnameResult
				return res, x.call(http.MethodPut, ctl.PathHostname, ctl.HostnameRequest{Hostname: x.args[0]}, &res)
			}
		},
		human: printHostname,
	})
	registerCLI(&cliCommand{
		noun: "hostname", verb: "clear", summary: "release this node's hostname",
		output: ctl.HostnameResult{},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var res ctl.HostnameResult
				return res, x.call(http.MethodDelete, ctl.PathHostname, nil, &res)
			}
		},
		human: printHostname,
	})
}

func printHostname(w io.Writer, v any) {
	r := v.(ctl.HostnameResult)
	name := r.Hostname
	if name == "" {
		name = "(none)"
	}
	switch {
	case r.Applied:
		fmt.Fprintf(w, "hostname %s, in effect now\n", name)
	default:
		fmt.Fprintf(w, "hostname %s saved; %s\n", name, r.Note)
	}
}

func printStatus(w io.Writer, st ctl.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	reg := "not registered"
	if st.Rendezvous.Registered {
		reg = "registered"
		if t := st.Rendezvous.Transport; t != "" {
			reg += " over " + t
		}
	}
	if st.Rendezvous.Error != "" {
		reg += ": " + st.Rendezvous.Error
	}
	fmt.Fprintf(tw, "address\t%s\n", st.Addr)
	fmt.Fprintf(tw, "hostname\t%s\n", dash(st.Hostname))
	fmt.Fprintf(tw, "key\t%s\n", st.Key)
	fmt.Fprintf(tw, "rendezvous\t%s (%s, %s)\n", st.Rendezvous.Addr, st.Rendezvous.Mode, reg)
	if r := st.Rendezvous; r.Transport == "tcp" || r.Tunnel != nil {
		line := r.TransportReason
		if r.Tunnel != nil {
			line += fmt.Sprintf("; tunnel to %s via %s", r.TCP, r.Tunnel.Via)
			if !r.Tunnel.Up && r.Tunnel.Error != "" {
				line += " (down: " + r.Tunnel.Error + ")"
			}
		}
		fmt.Fprintf(tw, "transport\t%s\n", line)
	}
	nat := st.NAT.Kind
	if st.NAT.Mapped != "" {
		nat += " (mapped " + st.NAT.Mapped + ")"
	}
	fmt.Fprintf(tw, "nat\t%s\n", nat)
	fmt.Fprintf(tw, "udp\t%s\n", st.Listen)
	fmt.Fprintf(tw, "trust\t%d trusted, %d pending\n", st.Trusted, st.Pending)
	fmt.Fprintf(tw, "peers\t%d connected\n", st.Peers)
	svc := ""
	for _, s := range st.Services {
		state := "off"
		if s.Enabled {
			state = "on"
		}
		svc += fmt.Sprintf("%s/%d %s  ", s.Name, s.Port, state)
	}
	fmt.Fprintf(tw, "services\t%s\n", svc)
	fmt.Fprintf(tw, "inbox\t%s\n", bytesHuman(st.Stats.InboxBytes))
	fmt.Fprintf(tw, "state\t%s\n", st.StateDir)
	fmt.Fprintf(tw, "socket\t%s\n", st.Socket)
	if !st.Started.IsZero() {
		fmt.Fprintf(tw, "up since\t%s\n", st.Started.Local().Format(time.DateTime))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesHuman(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// versionInfo is what "agentnet version --json" prints.
type versionInfo struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
}

func currentVersion() versionInfo {
	return versionInfo{Version: version, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
}
