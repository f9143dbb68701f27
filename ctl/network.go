package ctl

import (
	"net/url"
	"time"
)

// NetworkPath returns the path of an action on one network (name or ID):
// "" for its members (GET), "invite", "leave" or "remove" (POST).
func NetworkPath(network, action string) string {
	p := PathNetworks + "/" + url.PathEscape(network)
	if action != "" {
		p += "/" + action
	}
	return p
}

// Network describes a network the node is in.
type Network struct {
	ID        int    `json:"id"`
	Name      string `json:"name"`
	Owner     string `json:"owner"`      // the owner's key
	OwnerAddr string `json:"owner_addr"` // the owner's address in the network, N:XXXX.XXXX.XXXX
	Addr      string `json:"addr"`       // our address in the network
	Owned     bool   `json:"owned"`      // we own it
	Members   int    `json:"members"`    // the owner included
}

// NetworkList is the answer of GET /v1/networks.
type NetworkList struct {
	Networks []Network `json:"networks"`
}

// NetworkCreateRequest is the body of POST /v1/networks.
type NetworkCreateRequest struct {
	Name string `json:"name"` // hostname rules, unique at the rendezvous
}

// NetworkJoinRequest is the body of POST /v1/networks/join.
type NetworkJoinRequest struct {
	Token string `json:"token"` // "anet-invite:…"
}

// NetworkInviteRequest is the body of POST /v1/networks/{network}/invite.
type NetworkInviteRequest struct {
	// Invitee is who may join: a key, or the address or hostname of a
	// peer whose key we know (trusted, or a fellow member). "" makes a
	// bearer invite: anyone holding the token may join until it expires.
	Invitee    string `json:"invitee,omitempty"`
	TTLSeconds int    `json:"ttl_s,omitempty"` // default 86400, at most a year
}

// NetworkInvite is the answer of POST /v1/networks/{network}/invite.
type NetworkInvite struct {
	Network Network   `json:"network"`
	Token   string    `json:"token"`   // give it to the invitee; a bearer token is a secret
	Invitee string    `json:"invitee"` // the invitee's key; "" for a bearer invite
	Bearer  bool      `json:"bearer"`
	Expires time.Time `json:"expires"`
}

// NetworkRemoveRequest is the body of POST /v1/networks/{network}/remove.
type NetworkRemoveRequest struct {
	Member string `json:"member"` // a key, an address (any network) or a trusted peer's hostname
}

// NetworkMembers is the answer of GET /v1/networks/{network} and of
// remove.
type NetworkMembers struct {
	Network Network         `json:"network"`
	Members []NetworkMember `json:"members"`
}

// NetworkMember is one member of a network, as our node verified it.
type NetworkMember struct {
	Addr     string    `json:"addr"` // in the network, N:XXXX.XXXX.XXXX
	Key      string    `json:"key"`
	Hostname string    `json:"hostname"` // if we know it
	Owner    bool      `json:"owner"`
	Self     bool      `json:"self"`
	Joined   time.Time `json:"joined"` // the time of its Join; zero for the owner
}
