package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/network"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/rendezvous"
)

// The network endpoints (README, Local API, "Networks"). A network is named
// by its name or decimal ID. Errors: asking about a network we are not in
// is not_found; dialling a member of a network we are not in is not_trusted
// (like any peer without consent).

const maxInviteTTL = 365 * 24 * 3600 // seconds, network.MaxInviteTTL

// networkRoutes registers the network endpoints on h.
func (d *Daemon) networkRoutes(h func(pattern string, f handlerFunc)) {
	h("GET "+ctl.PathNetworks, d.handleNetworkList)
	h("POST "+ctl.PathNetworks, d.handleNetworkCreate)
	h("POST "+ctl.PathNetworksJoin, d.handleNetworkJoin)
	h("GET "+ctl.PathNetworks+"/{network}", d.handleNetworkMembers)
	h("POST "+ctl.PathNetworks+"/{network}/invite", d.handleNetworkInvite)
	h("POST "+ctl.PathNetworks+"/{network}/leave", d.handleNetworkLeave)
	h("POST "+ctl.PathNetworks+"/{network}/remove", d.handleNetworkRemove)
}

func (d *Daemon) ctlNetwork(n quicnode.NetworkInfo) ctl.Network {
	return ctl.Network{
		ID: int(n.ID), Name: n.Name, Owner: n.Owner.String(),
		OwnerAddr: addressing.AddrFrom(n.ID, n.Owner.NodeID()).String(),
		Addr:      d.node.Addr().WithNetwork(n.ID).String(),
		Owned:     n.Owned, Members: n.Members,
	}
}

// network finds the network s names (name or decimal ID) among ours.
func (d *Daemon) network(s string) (quicnode.NetworkInfo, error) {
	for _, n := range d.node.Networks() {
		if n.Name == s || strconv.Itoa(int(n.ID)) == s {
			return n, nil
		}
	}
	return quicnode.NetworkInfo{}, d.networkError(fmt.Errorf("network %q: %w", s, quicnode.ErrNoNetwork))
}

func (d *Daemon) handleNetworkList(w http.ResponseWriter, r *http.Request) error {
	out := ctl.NetworkList{Networks: []ctl.Network{}}
	for _, n := range d.node.Networks() {
		out.Networks = append(out.Networks, d.ctlNetwork(n))
	}
	return writeOK(w, out)
}

func (d *Daemon) handleNetworkCreate(w http.ResponseWriter, r *http.Request) error {
	var req ctl.NetworkCreateRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	if err := addressing.ValidateHostname(req.Name); err != nil {
		return ctl.Errorf(ctl.CodeInvalidArgument, "1-63 of a-z, 0-9 and '-'", "network name %q: %v", req.Name, err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
	defer cancel()
	id, err := d.node.CreateNetwork(ctx, req.Name)
	if err != nil {
		return d.networkError(err)
	}
	n, err := d.network(strconv.Itoa(int(id)))
	if err != nil {
		return err
	}
	return writeOK(w, d.ctlNetwork(n))
}

func (d *Daemon) handleNetworkJoin(w http.ResponseWriter, r *http.Request) error {
	var req ctl.NetworkJoinRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	if req.Token == "" {
		return invalid("token missing: the owner makes one with \"agentnet network invite\"")
	}
	ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
	defer cancel()
	id, err := d.node.JoinNetwork(ctx, req.Token)
	if err != nil {
		return d.networkError(err)
	}
	n, err := d.network(strconv.Itoa(int(id)))
	if err != nil {
		return err
	}
	return writeOK(w, d.ctlNetwork(n))
}

func (d *Daemon) handleNetworkMembers(w http.ResponseWriter, r *http.Request) error {
	n, err := d.network(r.PathValue("network"))
	if err != nil {
		return err
	}
	return writeOK(w, d.members(n))
}

func (d *Daemon) members(n quicnode.NetworkInfo) ctl.NetworkMembers {
	out := ctl.NetworkMembers{Network: d.ctlNetwork(n), Members: []ctl.NetworkMember{}}
	ms := d.node.Members(n.ID)
	out.Network.Members = len(ms)
	for _, m := range ms {
		cm := ctl.NetworkMember{Addr: m.Addr.String(), Key: m.Key.String(), Owner: m.Owner, Self: m.Self}
		if !m.Joined.IsZero() {
			cm.Joined = m.Joined.UTC()
		}
		if m.Self {
			cm.Hostname = d.currentHostname()
		} else if rec, ok := d.store.Get(m.Key); ok {
			cm.Hostname = rec.Hostname
		}
		out.Members = append(out.Members, cm)
	}
	return out
}

func (d *Daemon) handleNetworkInvite(w http.ResponseWriter, r *http.Request) error {
	var req ctl.NetworkInviteRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	n, err := d.network(r.PathValue("network"))
	if err != nil {
		return err
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > maxInviteTTL {
		return invalid("ttl_s %d out of range: want 1-%d", req.TTLSeconds, maxInviteTTL)
	}
	var invitee addressing.PublicKey
	if req.Invitee != "" {
		if invitee, err = d.inviteeKey(req.Invitee); err != nil {
			return err
		}
	}
	tok, err := d.node.Invite(n.ID, invitee, time.Duration(req.TTLSeconds)*time.Second)
	if err != nil {
		return d.networkError(err)
	}
	parsed, err := network.ParseToken(tok)
	if err != nil {
		return fmt.Errorf("daemon: our own invite: %w", err)
	}
	res := ctl.NetworkInvite{Network: d.ctlNetwork(n), Token: tok, Bearer: parsed.Invite.Bearer, Expires: parsed.Invite.Expires.UTC()}
	if !parsed.Invite.Bearer {
		res.Invitee = invitee.String()
	}
	return writeOK(w, res)
}

// inviteeKey finds the key s names: a key, or the address or hostname of a
// peer we know the key of (a trust record, or a fellow member).
func (d *Daemon) inviteeKey(s string) (addressing.PublicKey, error) {
	if k, err := addressing.ParsePublicKey(s); err == nil {
		return k, nil
	}
	t, err := addressing.ParseTarget(s)
	if err != nil {
		return addressing.PublicKey{}, ctl.Errorf(ctl.CodeInvalidArgument, "a key, an address or a hostname", "invitee %q: %v", s, err)
	}
	if rec, ok := d.record(t); ok {
		return rec.Key, nil
	}
	if a, ok := t.Addr(); ok {
		if k, ok := d.store.MemberByNode(0, a.Node()); ok {
			return k, nil
		}
	}
	return addressing.PublicKey{}, ctl.Errorf(ctl.CodeNotFound,
		"an address names only part of a key: give the invitee's key (\"agentnet status\" shows it), or leave the invitee out for a bearer invite",
		"no key known for %s", s)
}

func (d *Daemon) handleNetworkLeave(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength != 0 {
		var req struct{}
		if err := decode(w, r, maxSmallBody, &req); err != nil {
			return err
		}
	}
	n, err := d.network(r.PathValue("network"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
	defer cancel()
	if err := d.node.LeaveNetwork(ctx, n.ID); err != nil {
		return d.networkError(err)
	}
	return writeOK(w, d.ctlNetwork(n))
}

func (d *Daemon) handleNetworkRemove(w http.ResponseWriter, r *http.Request) error {
	var req ctl.NetworkRemoveRequest
	if err := decode(w, r, maxSmallBody, &req); err != nil {
		return err
	}
	if req.Member == "" {
		return invalid("member missing: a key, an address or a hostname")
	}
	n, err := d.network(r.PathValue("network"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), trustTimeout)
	defer cancel()
	if err := d.node.RemoveMember(ctx, n.ID, req.Member); err != nil {
		return d.networkError(err)
	}
	return writeOK(w, d.members(n))
}

// networkError maps the errors of network actions to API errors.
func (d *Daemon) networkError(err error) *ctl.Error {
	var ce *ctl.Error
	if errors.As(err, &ce) {
		return ce
	}
	msg := err.Error()
	switch {
	case errors.Is(err, quicnode.ErrNoNetwork):
		return &ctl.Error{Code: ctl.CodeNotFound, Message: msg, Hint: "\"agentnet network list\" shows the networks this node is in, and \"agentnet network members <network>\" their members"}
	case errors.Is(err, quicnode.ErrNotOwner):
		return &ctl.Error{Code: ctl.CodeConflict, Message: msg, Hint: "only the owner invites and removes; the owner cannot leave"}
	case errors.Is(err, rendezvous.ErrNetworkTaken):
		return &ctl.Error{Code: ctl.CodeConflict, Message: msg, Hint: "network names are unique at the rendezvous; choose another"}
	case errors.Is(err, network.ErrWrongInvitee):
		return &ctl.Error{Code: ctl.CodeNotTrusted, Message: msg, Hint: "this invite was made for another agent's key; ask the owner for one for ours (agentnet status shows our key)"}
	case errors.Is(err, network.ErrExpired):
		return &ctl.Error{Code: ctl.CodeInvalidArgument, Message: msg, Hint: "the invite expired; ask the owner for a new one"}
	case errors.Is(err, network.ErrMalformed), errors.Is(err, network.ErrBadSignature):
		return &ctl.Error{Code: ctl.CodeInvalidArgument, Message: msg, Hint: "the token is damaged or forged: copy the whole anet-invite:… text"}
	case errors.Is(err, rendezvous.ErrBadMessage):
		return &ctl.Error{Code: ctl.CodeNotTrusted, Message: msg, Hint: "the rendezvous refused the join: removed members need an invite issued after their removal"}
	case errors.Is(err, rendezvous.ErrReplay):
		return &ctl.Error{Code: ctl.CodeConflict, Message: msg, Hint: "the rendezvous holds a newer membership document; retry"}
	case errors.Is(err, rendezvous.ErrNotFound):
		return &ctl.Error{Code: ctl.CodeNotFound, Message: msg, Hint: "the rendezvous knows no such network (another rendezvous?)"}
	}
	return d.apiError(err)
}
