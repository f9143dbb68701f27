package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

func init() {
	registerCLI(&cliCommand{
		noun: "demo", summary: "run a rendezvous and two agents in one process and show trust, streams, datagrams, revocation",
		output: demoResult{}, daemonless: true,
		example: "agentnet demo --json",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			pings := fs.Int("pings", 20, "echo round trips to time")
			return func(x *cliCtx) (any, error) {
				if *pings < 1 || *pings > 100000 {
					return nil, badUsage("--pings %d: want 1-100000", *pings)
				}
				ctx := x.ctx
				if x.timeoutSet {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, x.timeout)
					defer cancel()
				}
				var res demoResult
				out := x.stdout
				if x.json {
					out = &res // collected, printed as one object
				}
				if err := demo(ctx, out, *pings); err != nil {
					return nil, &ctl.Error{Code: ctl.CodeInternal, Message: "demo failed: " + err.Error(), Hint: "every step above it worked; the message says which one did not"}
				}
				if x.json {
					res.Complete = true
					return res, nil
				}
				return nil, nil
			}
		},
	})
}

// demoResult is the demo's --json output: each step with its notes.
type demoResult struct {
	Steps    []demoStep `json:"steps"`
	Complete bool       `json:"complete"` // every step worked
}

type demoStep struct {
	Step  int      `json:"step"`
	Text  string   `json:"text"`
	Notes []string `json:"notes"`
}

// Write collects the demo's text output: "NN. step" lines and indented
// notes.
func (r *demoResult) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "    ") && len(r.Steps) > 0:
			st := &r.Steps[len(r.Steps)-1]
			st.Notes = append(st.Notes, strings.TrimSpace(line))
		case line == "demo complete":
		default:
			num, text, _ := strings.Cut(strings.TrimSpace(line), ". ")
			n, _ := strconv.Atoi(num)
			r.Steps = append(r.Steps, demoStep{Step: n, Text: text, Notes: []string{}})
		}
	}
	return len(b), nil
}

// demoAgent is one agent of the demo with its own state directory.
type demoAgent struct {
	name  string
	store *trustdb.Store
	node  *quicnode.Node
}

func demo(ctx context.Context, out io.Writer, pings int) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "agentnet-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step := 0
	say := func(format string, a ...any) {
		step++
		fmt.Fprintf(out, "%2d. %s\n", step, fmt.Sprintf(format, a...))
	}
	note := func(format string, a ...any) { fmt.Fprintf(out, "    %s\n", fmt.Sprintf(format, a...)) }

	srv, err := rendezvous.NewServer(rendezvous.ServerConfig{Addr: "127.0.0.1:0", DataDir: dir + "/rendezvous"})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Close()
	say("embedded rendezvous on udp %s, server key %s", srv.Addr(), srv.PublicKey())

	start := func(name string) (*demoAgent, error) {
		st, err := trustdb.Open(dir + "/" + name)
		if err != nil {
			return nil, err
		}
		n, err := quicnode.New(quicnode.Config{
			Store: st, RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey(),
			ListenAddr: "127.0.0.1:0", Hostname: name,
		})
		if err == nil {
			err = n.Start(ctx)
		}
		if err == nil {
			err = n.WaitRendezvous(ctx)
		}
		if err != nil {
			st.Close()
			return nil, err
		}
		return &demoAgent{name: name, store: st, node: n}, nil
	}
	alice, err := start("alice")
	if err != nil {
		return err
	}
	defer func() { alice.node.Close(); alice.store.Close() }()
	bob, err := start("bob")
	if err != nil {
		return err
	}
	defer func() { bob.node.Close(); bob.store.Close() }()
	say("agents up: alice = %s, bob = %s (addresses derived from their Ed25519 keys)", alice.node.Addr(), bob.node.Addr())
	for _, a := range []*demoAgent{alice, bob} {
		for a.node.NATInfo().Checked.IsZero() && ctx.Err() == nil {
			sleepCtx(ctx, 5*time.Millisecond)
		}
		nat := a.node.NATInfo()
		note("%s: NAT %s (STUN: %s towards the rendezvous, %s towards its second address)", a.name, nat.Kind, nat.Mapped, nat.Mapped2)
	}

	// 1. Before trust: refused, and bob's listener sees nothing.
	ln80, err := bob.node.Listen(80)
	if err != nil {
		return err
	}
	defer ln80.Close()
	_, err = alice.node.Dial(ctx, bob.node.Addr().String(), 80)
	if !errors.Is(err, quicnode.ErrNotTrusted) {
		return fmt.Errorf("dial before trust: want ErrNotTrusted, got %v", err)
	}
	say("alice dials bob:80 before any trust -> refused (%v)", err)

	// 2. Trust request by hostname, approval.
	t0 := time.Now()
	if err := alice.node.RequestTrust(ctx, "bob", "alice would like to talk"); err != nil {
		return err
	}
	say("alice asks the rendezvous to deliver a trust request to \"bob\" (she does not learn where bob is)")
	var pending []trustdb.Record
	for len(pending) == 0 {
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("waiting for the request at bob: %w", err)
		}
		pending = bob.node.PendingTrust()
	}
	note("bob's inbox: request from %s (%q), signed by her key", pending[0].Addr(), pending[0].Note)
	if err := bob.node.ApproveTrust(ctx, pending[0].Addr().String()); err != nil {
		return err
	}
	for !alice.store.IsTrusted(bob.node.PublicKey()) {
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("waiting for the approval at alice: %w", err)
		}
	}
	say("bob approves; trust is mutual after %v", time.Since(t0).Round(time.Millisecond))

	// 3. A stream message on port 80 and a datagram on port 5353.
	got := make(chan string, 1)
	go func() {
		c, err := ln80.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- fmt.Sprintf("%q from %s", b, c.RemoteAddr())
	}()
	c, err := alice.node.Dial(ctx, "bob", 80)
	if err != nil {
		return err
	}
	io.WriteString(c, "hello over a stream")
	c.(interface{ CloseWrite() error }).CloseWrite()
	say("stream to bob:80 -> bob received %s", <-got)
	c.Close()

	pcB, err := bob.node.ListenPacket(5353)
	if err != nil {
		return err
	}
	defer pcB.Close()
	pcA, err := alice.node.ListenPacket(0)
	if err != nil {
		return err
	}
	defer pcA.Close()
	buf := make([]byte, 2048)
	var dgram string
	for i := 0; i < 20 && dgram == ""; i++ { // datagrams are unreliable: retry
		if _, err := pcA.WriteTo([]byte("hello over a datagram"), addressing.SockAddrFrom(bob.node.Addr(), 5353)); err != nil {
			return err
		}
		pcB.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		if n, from, err := pcB.ReadFrom(buf); err == nil {
			dgram = fmt.Sprintf("%q from %s", buf[:n], from)
		}
	}
	if dgram == "" {
		return errors.New("no datagram arrived")
	}
	say("datagram to bob:5353 -> bob received %s", dgram)

	// 4. Echo RTT on port 7.
	ec, err := alice.node.Dial(ctx, "bob", quicnode.PortEcho)
	if err != nil {
		return err
	}
	var best, total time.Duration
	one := []byte{'x'}
	for i := 0; i < pings; i++ {
		t := time.Now()
		if _, err := ec.Write(one); err != nil {
			return err
		}
		if _, err := io.ReadFull(ec, one); err != nil {
			return err
		}
		d := time.Since(t)
		total += d
		if best == 0 || d < best {
			best = d
		}
	}
	ec.Close()
	say("echo on bob:7, %d round trips: min %v, mean %v", pings, best, total/time.Duration(max(pings, 1)))
	for _, p := range alice.node.Peers() {
		note("alice -> %s: path %s via %s, rtt %v, %d bytes sent, %d received", p.Addr, p.Path, p.Remote, p.RTT.Round(time.Microsecond), p.BytesSent, p.BytesReceived)
	}

	// 5. Revocation cuts an open stream.
	ln81, err := bob.node.Listen(81)
	if err != nil {
		return err
	}
	defer ln81.Close()
	open, err := alice.node.Dial(ctx, "bob", 81)
	if err != nil {
		return err
	}
	defer open.Close()
	held, err := ln81.Accept()
	if err != nil {
		return err
	}
	defer held.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := open.Read(make([]byte, 1))
		readErr <- err
	}()
	say("alice holds an open stream to bob:81 and is blocked reading it")
	t0 = time.Now()
	if err := bob.node.RevokeTrust(ctx, alice.node.Addr().String()); err != nil {
		return err
	}
	select {
	case err := <-readErr:
		say("bob revokes alice -> alice's read fails after %v: %v", time.Since(t0).Round(time.Microsecond), err)
	case <-ctx.Done():
		return errors.New("revocation did not cut the stream")
	}
	for alice.store.IsTrusted(bob.node.PublicKey()) {
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("waiting for the revocation at alice: %w", err)
		}
	}
	_, err = alice.node.Dial(ctx, "bob", 81)
	if !errors.Is(err, quicnode.ErrNotTrusted) {
		return fmt.Errorf("dial after revocation: want ErrNotTrusted, got %v", err)
	}
	say("alice dials bob again -> refused (%v)", err)
	fmt.Fprintln(out, "demo complete")
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
