package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/trustdb"
)

func (d *Daemon) status() ctl.Status {
	st := ctl.Status{
		Version:  d.cfg.Version,
		PID:      os.Getpid(),
		Addr:     d.node.Addr().String(),
		Key:      d.node.PublicKey().String(),
		Hostname: d.currentHostname(),
		StateDir: d.cfg.StateDir,
		Socket:   d.cfg.Socket,
		Started:  d.started,
		NAT:      natStatus(d.node),
		Services: []ctl.ServiceStatus{
			{Name: ServiceEcho, Port: ctl.PortEcho, Enabled: d.cfg.enabled(ServiceEcho)},
			{Name: ServiceDiscard, Port: ctl.PortDiscard, Enabled: d.cfg.enabled(ServiceDiscard)},
			{Name: ServiceMessages, Port: ctl.PortMessages, Enabled: d.cfg.enabled(ServiceMessages)},
			{Name: ServiceEvents, Port: ctl.PortEvents, Enabled: d.cfg.enabled(ServiceEvents)},
		},
		Peers: len(d.node.Peers()),
	}
	if la := d.node.LocalAddr(); la != nil {
		st.Listen = la.String()
	}
	mode := d.rdvMode
	if d.rdv != nil && d.rdv.hosting() {
		mode = "embedded"
	} else if d.rdv != nil {
		mode = "local"
	}
	st.Rendezvous = ctl.RendezvousStatus{Addr: d.rdvAddr, Mode: mode}
	if !d.cfg.RendezvousKey.IsZero() {
		st.Rendezvous.Key = d.cfg.RendezvousKey.String()
	} else if b, ok := d.store.Meta("rendezvous-pin:" + d.rdvAddr); ok {
		if k, ok := addressing.PublicKeyFromSlice(b); ok {
			st.Rendezvous.Key = k.String()
		}
	}
	ok, err := registration(d.node)
	st.Rendezvous.Registered = ok
	reach := d.node.Reach()
	if err == nil && !ok {
		err = reach.Err // what was tried, and what to check
	}
	if rs, has := d.node.RendezvousState(); err == nil && !ok && has && rs.LastError != nil {
		err = rs.LastError // why the session was lost (issue 9 item 8)
	}
	if err != nil {
		st.Rendezvous.Error = err.Error()
	}
	st.Rendezvous.Transport, st.Rendezvous.TransportReason = reach.Transport, reach.Reason
	st.Rendezvous.TCP = d.rdvTCP
	if reach.TunnelVia != "" || reach.TunnelUp || reach.TunnelError != nil {
		ts := &ctl.TunnelStatus{Up: reach.TunnelUp, Via: reach.TunnelVia}
		if reach.TunnelError != nil {
			ts.Error = reach.TunnelError.Error()
		}
		st.Rendezvous.Tunnel = ts
	}
	for _, r := range d.store.List() {
		switch r.State {
		case trustdb.StateTrusted:
			st.Trusted++
		case trustdb.StatePendingIn:
			st.Pending++
		}
	}
	ns := d.node.Stats()
	st.Stats = ctl.NodeStats{
		DatagramsDropped: ns.DatagramsDropped,
		BadStreams:       ns.BadStreams,
		EventsDropped:    d.bus.Dropped(),
		InboxBytes:       d.inbox.Bytes(),
	}
	return st
}

// natStatus reports the node's last NAT check.
func natStatus(n *quicnode.Node) ctl.NATStatus {
	info := n.NATInfo()
	st := ctl.NATStatus{Kind: string(info.Kind), Checked: info.Checked.UTC()}
	if st.Kind == "" {
		st.Kind = string(quicnode.NATUnknown)
	}
	if info.Mapped.IsValid() {
		st.Mapped = info.Mapped.String()
	}
	return st
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request) error {
	return writeOK(w, d.status())
}

func (d *Daemon) handlePeers(w http.ResponseWriter, r *http.Request) error {
	out := ctl.PeerList{Peers: []ctl.Peer{}}
	for _, p := range d.node.Peers() {
		cp := ctl.Peer{
			Addr: p.Addr.String(), Key: p.Key.String(), Path: p.Path, Standby: p.Standby, Transport: p.Transport, Outgoing: p.Outgoing,
			Found: p.Found, SetupMillis: ms(p.Setup),
			Since: p.Since.UTC(), RTTMillis: ms(p.RTT), BytesSent: p.BytesSent, BytesReceived: p.BytesReceived,
		}
		if p.Remote != nil {
			cp.Remote = p.Remote.String()
		}
		if rec, ok := d.store.Get(p.Key); ok {
			cp.Hostname = rec.Hostname
		}
		out.Peers = append(out.Peers, cp)
	}
	return writeOK(w, out)
}

// hostnameSetter is what quicnode.Node offers once hostnames can change at
// run time.
type hostnameSetter interface {
	SetHostname(ctx context.Context, name string) error
}

func (d *Daemon) handleHostnameSet(w http.ResponseWriter, r *http.Request) error {
	var req ctl.HostnameRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	if err := addressing.ValidateHostname(req.Hostname); err != nil {
		return ctl.Errorf(ctl.CodeInvalidArgument, "1-63 of a-z, 0-9 and '-'", "hostname %q: %v", req.Hostname, err)
	}
	return d.setHostname(w, r, req.Hostname)
}

func (d *Daemon) handleHostnameClear(w http.ResponseWriter, r *http.Request) error {
	return d.setHostname(w, r, "")
}

func (d *Daemon) setHostname(w http.ResponseWriter, r *http.Request, name string) error {
	res := ctl.HostnameResult{Hostname: name}
	if hs, ok := any(d.node).(hostnameSetter); ok {
		ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
		defer cancel()
		if err := hs.SetHostname(ctx, name); err != nil {
			return err
		}
		res.Applied = true
		d.mu.Lock()
		d.hostname = name
		d.mu.Unlock()
	} else {
		res.RestartRequired = true
		res.Note = "this build's node cannot change its hostname while running; it takes effect when the daemon restarts"
	}
	if err := setFileKey(d.cfg.StateDir, "hostname", name); err != nil {
		return fmt.Errorf("daemon: save hostname: %w", err)
	}
	res.Saved = true
	if d.cfg.Hostname != name && res.Note == "" {
		res.Note = "saved to the config file; a --hostname flag or AGENTNET_HOSTNAME overrides it on restart"
	}
	return writeOK(w, res)
}

func trustRecord(r trustdb.Record) ctl.TrustRecord {
	tr := ctl.TrustRecord{
		Target: r.Target, Hostname: r.Hostname, State: r.State.String(), Note: r.Note,
		Created: r.Created.UTC(), Updated: r.Updated.UTC(),
	}
	if !r.Key.IsZero() {
		tr.Addr = r.Addr().String()
		tr.Key = r.Key.String()
	}
	return tr
}

func (d *Daemon) handleTrustList(w http.ResponseWriter, r *http.Request) error {
	out := ctl.TrustList{Records: []ctl.TrustRecord{}}
	for _, rec := range d.store.List() {
		d.settle(r.Context(), rec)
		out.Records = append(out.Records, trustRecord(rec))
	}
	return writeOK(w, out)
}

func (d *Daemon) handleTrustPending(w http.ResponseWriter, r *http.Request) error {
	out := ctl.TrustList{Records: []ctl.TrustRecord{}}
	for _, rec := range d.node.PendingTrust() {
		out.Records = append(out.Records, trustRecord(rec))
	}
	return writeOK(w, out)
}

func (d *Daemon) handleTrustRequest(w http.ResponseWriter, r *http.Request) error {
	var req ctl.TrustRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	t, err := d.checkPeer(req.Peer)
	if err != nil {
		return err
	}
	if len(req.Note) > 256 {
		return invalid("note of %d bytes: at most 256", len(req.Note))
	}
	if rec, ok := d.record(t); ok && rec.State == trustdb.StateTrusted {
		return ctl.Errorf(ctl.CodeConflict, "\"agentnet trust list\" shows it", "%s is already trusted", req.Peer)
	}
	ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
	defer cancel()
	res := ctl.TrustResult{Peer: req.Peer, Addr: d.peerAddrString(t), State: trustdb.StatePendingOut.String(), Delivered: true}
	if err := d.node.RequestTrust(ctx, req.Peer, req.Note); err != nil {
		if isStoreError(err) {
			return err
		}
		// The request is committed and queued; the node retries delivery.
		res.Delivered = false
		res.Warning = err.Error()
	}
	return writeOK(w, res)
}

// isStoreError reports whether a trust action failed in the store (nothing
// changed), as opposed to a committed action whose delivery is pending.
func isStoreError(err error) bool {
	return errors.Is(err, trustdb.ErrUnexpected) || errors.Is(err, trustdb.ErrOutboxFull) ||
		errors.Is(err, trustdb.ErrMalformed) || errors.Is(err, trustdb.ErrNotForUs)
}

// trustAction serves approve, reject and revoke.
func (d *Daemon) trustAction(action string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req ctl.PeerRequest
		if err := decode(w, r, maxSmallBody, &req); err != nil {
			return err
		}
		t, err := d.checkPeer(req.Peer)
		if err != nil {
			return err
		}
		rec, ok := d.record(t)
		if !ok {
			return ctl.Errorf(ctl.CodeNotFound, "\"agentnet trust list\" shows every record; \"agentnet trust pending\" the requests waiting", "no trust record for %s", req.Peer)
		}
		if action != "revoke" && rec.State != trustdb.StatePendingIn {
			return ctl.Errorf(ctl.CodeConflict, "only pending requests (\"agentnet trust pending\") can be approved or rejected", "%s is %s, not pending-in", req.Peer, rec.State)
		}
		if action == "revoke" && rec.State != trustdb.StateTrusted && rec.State != trustdb.StatePendingIn {
			return ctl.Errorf(ctl.CodeConflict, "only trusted peers and pending requests can be revoked", "%s is %s", req.Peer, rec.State)
		}
		ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
		defer cancel()
		// Act on the record's address: a hostname may be ambiguous.
		peer := rec.Addr().String()
		switch action {
		case "approve":
			err = d.node.ApproveTrust(ctx, peer)
		case "reject":
			err = d.node.RejectTrust(ctx, peer)
		default:
			err = d.node.RevokeTrust(ctx, peer)
		}
		res := ctl.TrustResult{Peer: req.Peer, Addr: peer, Delivered: true}
		if err != nil {
			if isStoreError(err) {
				return err
			}
			res.Delivered = false
			res.Warning = err.Error()
		}
		if now, ok := d.store.Get(rec.Key); ok {
			res.State = now.State.String()
		}
		return writeOK(w, res)
	}
}

// handleTrustForget deletes the record of a peer that is not trusted, and
// our unanswered requests to the name given.
func (d *Daemon) handleTrustForget(w http.ResponseWriter, r *http.Request) error {
	var req ctl.PeerRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	t, err := d.checkPeer(req.Peer)
	if err != nil {
		return err
	}
	res := ctl.ForgetResult{Peer: req.Peer, Forgotten: []ctl.TrustRecord{}}
	rec, ok := d.record(t)
	if ok && rec.State == trustdb.StateTrusted {
		return ctl.Errorf(ctl.CodeConflict, "revoke it first (\"agentnet trust revoke "+req.Peer+"\"), then forget it", "%s is trusted", req.Peer)
	}
	if ok {
		gone, err := d.store.Forget(rec.Key)
		if err != nil {
			return err
		}
		res.Forgotten = append(res.Forgotten, trustRecord(gone))
	}
	reqs, err := d.store.ForgetRequests(t)
	if err != nil {
		return err
	}
	for _, g := range reqs {
		res.Forgotten = append(res.Forgotten, trustRecord(g))
	}
	if len(res.Forgotten) == 0 {
		return ctl.Errorf(ctl.CodeNotFound, "\"agentnet trust list\" shows every record", "no trust record for %s", req.Peer)
	}
	return writeOK(w, res)
}
