package ctl

// PathShutdown is POST /v1/shutdown: the daemon answers ShutdownResult, then
// shuts down as on SIGTERM (open streams and tunnels end, the node closes
// its connections, the socket is removed). "agentnet down" uses it.
const PathShutdown = "/v1/shutdown"

// ShutdownResult is the answer of POST /v1/shutdown.
type ShutdownResult struct {
	PID      int    `json:"pid"`       // the daemon's process ID
	StateDir string `json:"state_dir"` // the state directory it serves
	Stopping bool   `json:"stopping"`  // always true: shutdown has begun
}

// Topics the daemon publishes on its own event bus (their From is the
// daemon's own address; a peer may publish the same topic names on our bus
// with "events publish --to", but then From is the peer's address).
const (
	// TopicInboxReceived: an item arrived in the inbox. Data is the JSON
	// object {id, kind, from, name, bytes}.
	TopicInboxReceived = "inbox.received"
	// TopicTrustRequest: a trust request waiting for our decision arrived
	// (a record became pending-in). Data is a TrustEvent.
	TopicTrustRequest = "trust.request"
	// TopicTrustChanged: any other change of a trust record with a known
	// key (trusted, rejected, revoked, pending-out answered). Data is a
	// TrustEvent.
	TopicTrustChanged = "trust.changed"
)

// TrustEvent is the data of the trust.request and trust.changed events.
type TrustEvent struct {
	Addr     string `json:"addr"`
	Key      string `json:"key"`
	Hostname string `json:"hostname"` // as the peer claimed it
	State    string `json:"state"`    // the record's state now
	Old      string `json:"old"`      // its state before ("" if new)
	Note     string `json:"note"`     // the peer's note (trust.request)
}
