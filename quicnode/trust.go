package quicnode

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/trustdb"
)

// rebuildIndex rebuilds the address and hostname indexes of trusted peers.
func (n *Node) rebuildIndex() {
	n.knock.rebuild(n.admissibleKeys())
	byNode := make(map[addressing.NodeID]addressing.PublicKey)
	byHost := make(map[string]addressing.PublicKey)
	for _, r := range n.store.List() {
		if r.State != trustdb.StateTrusted || r.Key.IsZero() {
			continue
		}
		byNode[r.Key.NodeID()] = r.Key
		if r.Hostname != "" {
			byHost[r.Hostname] = r.Key
		}
	}
	n.mu.Lock()
	n.byNode, n.byHostname = byNode, byHost
	n.mu.Unlock()
}

// onTrustEvent runs after every committed trust change. Losing trust closes
// the peer's live connections at once.
func (n *Node) onTrustEvent(ev trustdb.Event) {
	n.rebuildIndex()
	// Some changes queue a message without a local action (an automatic
	// approve for a peer we already trust): every change kicks the outbox.
	n.kickOutbox()
	if ev.Old == trustdb.StateTrusted && ev.Record.State != trustdb.StateTrusted {
		n.closePeer(ev.Key)
	}
	if ev.Network != nil {
		n.onNetworkEvent(ev.Network)
	}
}

// deliver handles a trust message from the rendezvous mailbox. Messages the
// store refuses (forged, replayed, not for us) are logged and acknowledged:
// retrying them could never succeed.
func (n *Node) deliver(ctx context.Context, b []byte) error {
	m, err := trustdb.ParseMessage(b)
	if err != nil {
		n.log.Warn("dropping malformed trust message", "err", err)
		return nil
	}
	rec, err := n.store.HandleMessage(m, n.Hostname())
	if err != nil {
		if n.ctx.Err() != nil {
			return err // closing: leave it in the mailbox
		}
		n.log.Warn("refused trust message", "peer", m.From.NodeID(), "err", err)
		return nil
	}
	n.log.Info("trust message", "peer", rec.Addr(), "kind", m.Kind, "state", rec.State)
	n.rebuildIndex() // the knock table follows at once, not after the subscriber
	return nil
}

// kickOutbox asks the outbox loop to send queued trust messages now.
func (n *Node) kickOutbox() {
	select {
	case n.outboxKick <- struct{}{}:
	default:
	}
}

// outboxLoop delivers queued trust messages to the rendezvous, retrying
// every two seconds while any remain.
func (n *Node) outboxLoop() {
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.outboxKick:
		case <-retry.C:
		}
		if err := n.flushOutbox(n.ctx); err != nil {
			retry.Reset(2 * time.Second)
		}
	}
}

// flushOutbox sends every queued message in order and acknowledges each one
// the rendezvous took. It stops at the first failure. One flush runs at a
// time (a message sent twice would be refused as a replay).
func (n *Node) flushOutbox(ctx context.Context) error {
	if err := n.rdv.WaitReady(ctx); err != nil {
		return err
	}
	select {
	case n.flushing <- struct{}{}:
		defer func() { <-n.flushing }()
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, it := range n.store.Outbox() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := n.rdv.Send(sctx, it.Msg)
		cancel()
		if err != nil && !permanent(err) {
			return err
		}
		if err != nil {
			n.log.Warn("rendezvous refused trust message; dropping it", "err", err)
		}
		if err := n.store.AckOutbox(it.ID); err != nil {
			return err
		}
	}
	return nil
}

// permanent reports whether the rendezvous refused a message for good.
func permanent(err error) bool {
	return errors.Is(err, rendezvous.ErrBadMessage) || errors.Is(err, rendezvous.ErrReplay) || errors.Is(err, rendezvous.ErrNoRequest)
}

// sendNow flushes the outbox within ctx. If the rendezvous cannot be
// reached, the message stays queued and is sent later; the error says so.
func (n *Node) sendNow(ctx context.Context) error {
	if n.rdv == nil {
		return errors.New("quicnode: no rendezvous configured; trust message queued")
	}
	if err := n.flushOutbox(ctx); err != nil {
		n.kickOutbox()
		return fmt.Errorf("quicnode: trust message queued, not yet delivered: %w", err)
	}
	return nil
}

// RequestTrust asks target (an address or a hostname) to trust us, through
// the rendezvous. We do not learn whether the target exists until it
// approves. It returns once the rendezvous has taken the request.
func (n *Node) RequestTrust(ctx context.Context, target, note string) error {
	t, err := addressing.ParseTarget(target)
	if err != nil {
		return fmt.Errorf("quicnode: request trust: %w", err)
	}
	if a, ok := t.Addr(); ok && a.Node() == n.addr.Node() {
		return errors.New("quicnode: request trust: that is our own address")
	}
	if h, ok := t.Hostname(); ok && h == n.Hostname() {
		return errors.New("quicnode: request trust: that is our own hostname")
	}
	if _, err := n.store.Request(t, n.Hostname(), note); err != nil {
		return fmt.Errorf("quicnode: request trust: %w", err)
	}
	return n.sendNow(ctx)
}

// PendingTrust lists trust requests waiting for our decision.
func (n *Node) PendingTrust() []trustdb.Record {
	var out []trustdb.Record
	for _, r := range n.store.List() {
		if r.State == trustdb.StatePendingIn {
			out = append(out, r)
		}
	}
	return out
}

// TrustRecords lists every trust record.
func (n *Node) TrustRecords() []trustdb.Record { return n.store.List() }

// ApproveTrust approves a pending request from peer (address or hostname).
func (n *Node) ApproveTrust(ctx context.Context, peer string) error {
	k, err := n.recordKey(peer)
	if err != nil {
		return fmt.Errorf("quicnode: approve: %w", err)
	}
	if _, err := n.store.Approve(k, n.Hostname()); err != nil {
		return fmt.Errorf("quicnode: approve: %w", err)
	}
	return n.sendNow(ctx)
}

// RejectTrust rejects a pending request from peer.
func (n *Node) RejectTrust(ctx context.Context, peer string) error {
	k, err := n.recordKey(peer)
	if err != nil {
		return fmt.Errorf("quicnode: reject: %w", err)
	}
	if _, err := n.store.Reject(k, n.Hostname()); err != nil {
		return fmt.Errorf("quicnode: reject: %w", err)
	}
	return n.sendNow(ctx)
}

// RevokeTrust revokes trust in peer: live connections to it close at once,
// new handshakes are refused, and the rendezvous and the peer are told.
func (n *Node) RevokeTrust(ctx context.Context, peer string) error {
	k, err := n.recordKey(peer)
	if err != nil {
		return fmt.Errorf("quicnode: revoke: %w", err)
	}
	if _, err := n.store.Revoke(k, n.Hostname()); err != nil {
		return fmt.Errorf("quicnode: revoke: %w", err)
	}
	// Subscribers run asynchronously: close the connections here so that
	// they are gone when RevokeTrust returns.
	n.closePeer(k)
	return n.sendNow(ctx)
}

// recordKey finds the key of the trust record that peer (an address or a
// hostname) names.
func (n *Node) recordKey(peer string) (addressing.PublicKey, error) {
	t, err := addressing.ParseTarget(peer)
	if err != nil {
		return addressing.PublicKey{}, err
	}
	a, byAddr := t.Addr()
	h, _ := t.Hostname()
	for _, r := range n.store.List() {
		if r.Key.IsZero() {
			continue
		}
		if byAddr && r.Key.NodeID() == a.Node() || !byAddr && r.Hostname == h {
			return r.Key, nil
		}
	}
	return addressing.PublicKey{}, fmt.Errorf("no trust record for %s", peer)
}

// Hostname returns the hostname the node claims at the rendezvous ("" for
// none).
func (n *Node) Hostname() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hostname
}

// SetHostname claims name at the rendezvous (first come, first served;
// rendezvous.ErrHostnameTaken if another key holds it), or gives the
// current one up when name is "". Later trust messages carry it.
func (n *Node) SetHostname(ctx context.Context, name string) error {
	if name != "" {
		if err := addressing.ValidateHostname(name); err != nil {
			return fmt.Errorf("quicnode: set hostname: %w", err)
		}
	}
	if n.rdv == nil {
		return errors.New("quicnode: set hostname: no rendezvous configured")
	}
	if err := n.rdv.SetHostname(ctx, name); err != nil {
		return fmt.Errorf("quicnode: %w", err)
	}
	n.mu.Lock()
	n.hostname = name
	n.mu.Unlock()
	return nil
}

// closePeer closes every live connection to key after a revocation.
func (n *Node) closePeer(key addressing.PublicKey) {
	n.ports.forget(key)
	if n.paths != nil {
		n.paths.ClosePeer(key, CodeRevoked, "trust revoked")
	}
}
