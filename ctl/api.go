package ctl

import "time"

// Endpoint paths. Every path is under /v1; see the README's "Local API"
// section for the method, request and answer of each.
const (
	PathStatus          = "/v1/status"
	PathPeers           = "/v1/peers"
	PathHostname        = "/v1/hostname"
	PathTrust           = "/v1/trust"
	PathTrustPending    = "/v1/trust/pending"
	PathTrustRequest    = "/v1/trust/request"
	PathTrustApprove    = "/v1/trust/approve"
	PathTrustReject     = "/v1/trust/reject"
	PathTrustRevoke     = "/v1/trust/revoke"
	PathTrustForget     = "/v1/trust/forget"
	PathPing            = "/v1/ping"
	PathSend            = "/v1/send"
	PathRecv            = "/v1/recv"
	PathConnect         = "/v1/connect"
	PathExpose          = "/v1/expose"
	PathForward         = "/v1/forward"
	PathBench           = "/v1/bench"
	PathMessages        = "/v1/messages"
	PathFiles           = "/v1/files"
	PathInbox           = "/v1/inbox"
	PathEventsPublish   = "/v1/events/publish"
	PathEventsSubscribe = "/v1/events/subscribe"
	PathNetworks        = "/v1/networks"      // GET: list; POST: create; /{network}: members
	PathNetworksJoin    = "/v1/networks/join" // POST: join with an invite token
)

// UpgradeProtocol is the Upgrade token of /v1/connect.
const UpgradeProtocol = "agentnet-stream"

// TimeoutHeader is a request header: the caller gives up after this many
// milliseconds (1-3600000), so the daemon stops the request's work by then
// and answers CodeTimeout itself. The Client sends it for every context
// with a deadline, a little short of the deadline so the answer arrives
// in time.
const TimeoutHeader = "Agentnet-Timeout"

// Well-known virtual ports of the built-in services.
const (
	PortEcho     = 7    // echo: streams and datagrams are sent back
	PortDiscard  = 9    // discard: reads a stream to its end, answers the byte count
	PortMessages = 1001 // messages and files into the inbox
	PortEvents   = 1002 // publish/subscribe events
)

// Status is the answer of GET /v1/status.
type Status struct {
	Version    string           `json:"version"`
	PID        int              `json:"pid"`      // the daemon's process ID
	Addr       string           `json:"addr"`     // our virtual address, N:XXXX.XXXX.XXXX
	Key        string           `json:"key"`      // our Ed25519 public key
	Hostname   string           `json:"hostname"` // as configured ("" for none)
	StateDir   string           `json:"state_dir"`
	Socket     string           `json:"socket"`
	Listen     string           `json:"listen"` // the node's UDP socket
	Started    time.Time        `json:"started"`
	Rendezvous RendezvousStatus `json:"rendezvous"`
	NAT        NATStatus        `json:"nat"`
	Services   []ServiceStatus  `json:"services"`
	Peers      int              `json:"peers"` // live peer connections
	Trusted    int              `json:"trusted"`
	Pending    int              `json:"pending"` // trust requests waiting for our decision
	Stats      NodeStats        `json:"stats"`
}

// RendezvousStatus describes the node's rendezvous.
type RendezvousStatus struct {
	Addr       string `json:"addr"`
	Key        string `json:"key"`        // the pinned server key ("" before first contact)
	Mode       string `json:"mode"`       // "configured", "local" (zero-config, another daemon hosts it) or "embedded" (this daemon hosts it)
	Registered bool   `json:"registered"` // the node is registered right now
	Error      string `json:"error"`      // why not, if known
	// Transport is how the node reaches the rendezvous: "udp", "tcp" (the
	// TLS/WebSocket tunnel, when UDP does not get out) or "" (not yet).
	Transport       string `json:"transport"`
	TransportReason string `json:"transport_reason"` // what was tried and what answered
	// TCP is the rendezvous's TCP address the node falls back to ("" for
	// no fallback); Tunnel its state while a tunnel is open.
	TCP    string        `json:"tcp"`
	Tunnel *TunnelStatus `json:"tunnel,omitempty"`
}

// TunnelStatus is the state of the TCP tunnel to the rendezvous.
type TunnelStatus struct {
	Up    bool   `json:"up"`
	Via   string `json:"via"`   // "direct" or "proxy http://user:xxxxx@host:port"
	Error string `json:"error"` // why the last attempt failed or the tunnel ended
}

// NATStatus is what the node's STUN check found about the NAT in front of it.
type NATStatus struct {
	Kind    string    `json:"kind"`    // "none", "easy" (hole punching works), "hard" (symmetric) or "unknown"
	Mapped  string    `json:"mapped"`  // our reflexive address as the rendezvous sees it ("" before the check)
	Checked time.Time `json:"checked"` // when (zero before the first check)
}

// ServiceStatus describes one built-in service.
type ServiceStatus struct {
	Name    string `json:"name"`
	Port    int    `json:"port"`
	Enabled bool   `json:"enabled"`
}

// NodeStats are the node's counters.
type NodeStats struct {
	DatagramsDropped uint64 `json:"datagrams_dropped"`
	BadStreams       uint64 `json:"bad_streams"`
	EventsDropped    uint64 `json:"events_dropped"`
	InboxBytes       int64  `json:"inbox_bytes"`
}

// PeerList is the answer of GET /v1/peers.
type PeerList struct {
	Peers []Peer `json:"peers"`
}

// Peer is a live connection to a peer.
type Peer struct {
	Addr      string `json:"addr"`
	Key       string `json:"key"`
	Hostname  string `json:"hostname"`
	Path      string `json:"path"`      // "direct" or "relay"; a peer may have both for a while
	Standby   bool   `json:"standby"`   // kept as a fallback; new streams use the peer's other connection
	Transport string `json:"transport"` // "udp", or "tcp" for a relayed connection through the TCP tunnel
	Remote    string `json:"remote"`    // UDP address in use
	Outgoing  bool   `json:"outgoing"`
	// Found is how the connection was found: "incoming" (the peer dialled
	// us) or the dial phase that made it: "last-address", "direct" (a
	// locator from the rendezvous), "punch", "birthday", "relay".
	Found         string    `json:"found"`
	SetupMillis   float64   `json:"setup_ms"` // how long our dial took (0 for incoming)
	Since         time.Time `json:"since"`
	RTTMillis     float64   `json:"rtt_ms"`
	BytesSent     uint64    `json:"bytes_sent"`
	BytesReceived uint64    `json:"bytes_received"`
}

// HostnameRequest is the body of PUT /v1/hostname.
type HostnameRequest struct {
	Hostname string `json:"hostname"`
}

// HostnameResult is the answer of PUT and DELETE /v1/hostname.
type HostnameResult struct {
	Hostname        string `json:"hostname"`         // the new hostname ("" cleared)
	Saved           bool   `json:"saved"`            // written to the config file
	Applied         bool   `json:"applied"`          // in effect at the rendezvous now
	RestartRequired bool   `json:"restart_required"` // takes effect on the next start
	Note            string `json:"note"`
}

// PeerRequest names a peer: an address or a hostname. It is the body of the
// trust approve, reject, revoke and forget endpoints.
type PeerRequest struct {
	Peer string `json:"peer"`
}

// TrustRequest is the body of POST /v1/trust/request.
type TrustRequest struct {
	Peer string `json:"peer"`
	Note string `json:"note,omitempty"`
}

// TrustResult is the answer of the trust actions.
type TrustResult struct {
	Peer      string `json:"peer"`
	Addr      string `json:"addr"`      // the peer's address if known
	State     string `json:"state"`     // pending-out, pending-in, trusted, revoked, rejected
	Delivered bool   `json:"delivered"` // the rendezvous took the message; false: queued, retried in the background
	Warning   string `json:"warning"`
}

// ForgetResult is the answer of POST /v1/trust/forget (body: PeerRequest).
type ForgetResult struct {
	Peer      string        `json:"peer"`
	Forgotten []TrustRecord `json:"forgotten"` // the records deleted: the peer's, and our unanswered requests to that name
}

// TrustList is the answer of GET /v1/trust and GET /v1/trust/pending.
type TrustList struct {
	Records []TrustRecord `json:"records"`
}

// TrustRecord is one trust record.
type TrustRecord struct {
	Addr     string    `json:"addr"` // "" for a pending-out request whose peer key is not known yet
	Key      string    `json:"key"`
	Target   string    `json:"target"` // pending-out: what we asked for
	Hostname string    `json:"hostname"`
	State    string    `json:"state"`
	Note     string    `json:"note"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// PingRequest is the body of POST /v1/ping.
type PingRequest struct {
	Peer       string `json:"peer"`
	Count      int    `json:"count,omitempty"`       // 1-1000, default 4
	IntervalMS int    `json:"interval_ms,omitempty"` // 0-60000, default 200
	TimeoutMS  int    `json:"timeout_ms,omitempty"`  // per round trip and for the dial, default 10000
}

// PingResult is the answer of POST /v1/ping.
type PingResult struct {
	Peer      string    `json:"peer"`
	Addr      string    `json:"addr"`
	ConnectMS float64   `json:"connect_ms"` // opening the stream (including a handshake if there was no connection)
	RTTs      []float64 `json:"rtts_ms"`
	MinMS     float64   `json:"min_ms"`
	AvgMS     float64   `json:"avg_ms"`
	MaxMS     float64   `json:"max_ms"`
}

// SendRequest is the body of POST /v1/send: one stream to peer:port that
// carries Data (or DataBase64), then half-closes and collects what the peer
// sends back until it closes.
type SendRequest struct {
	Peer       string `json:"peer"`
	Port       int    `json:"port"`
	Data       string `json:"data,omitempty"`
	DataBase64 string `json:"data_base64,omitempty"`
	TimeoutMS  int    `json:"timeout_ms,omitempty"` // default 30000
}

// SendResult is the answer of POST /v1/send.
type SendResult struct {
	Peer        string `json:"peer"`
	Addr        string `json:"addr"`
	Port        int    `json:"port"`
	Bytes       int    `json:"bytes"`
	Reply       string `json:"reply"`        // the peer's answer if valid UTF-8
	ReplyBase64 string `json:"reply_base64"` // otherwise
	ReplyBytes  int    `json:"reply_bytes"`
}

// RecvRequest is the body of POST /v1/recv (streaming): listen on a virtual
// port and answer one line per stream received.
type RecvRequest struct {
	Port      int `json:"port"`
	Count     int `json:"count,omitempty"`     // streams to receive, then end; 0 means until the client goes away
	MaxBytes  int `json:"max_bytes,omitempty"` // per stream, default and maximum the daemon's message limit
	TimeoutMS int `json:"timeout_ms,omitempty"`
}

// Received is one stream received by /v1/recv.
type Received struct {
	From       string    `json:"from"` // the sender's socket address, N:XXXX.XXXX.XXXX:port
	Hostname   string    `json:"hostname"`
	Port       int       `json:"port"`
	Bytes      int       `json:"bytes"`
	Data       string    `json:"data"`        // if valid UTF-8
	DataBase64 string    `json:"data_base64"` // otherwise
	Truncated  bool      `json:"truncated"`   // the sender sent more than max_bytes; the stream was reset
	Time       time.Time `json:"time"`
}

// ConnectRequest is the body of POST /v1/connect (protocol switch).
type ConnectRequest struct {
	Peer      string `json:"peer"`
	Port      int    `json:"port"`
	TimeoutMS int    `json:"timeout_ms,omitempty"` // for the dial, default 15000
}

// ExposeRequest is the body of POST /v1/expose (streaming): serve the local
// TCP service To on virtual port Port to trusted peers while the request lasts.
type ExposeRequest struct {
	Port int    `json:"port"`
	To   string `json:"to"` // host:port of a TCP service
}

// Exposed is the first (and only) line /v1/expose answers once it serves.
type Exposed struct {
	Addr string `json:"addr"` // our socket address peers dial
	Port int    `json:"port"`
	To   string `json:"to"`
}

// ForwardRequest is the body of POST /v1/forward (streaming): listen on the
// local TCP address Listen and carry every connection to peer:port while the
// request lasts.
type ForwardRequest struct {
	Listen string `json:"listen"` // "127.0.0.1:8080", "8080" (loopback) or "127.0.0.1:0"
	Peer   string `json:"peer"`
	Port   int    `json:"port"`
}

// Forwarded is the first (and only) line /v1/forward answers once it listens.
type Forwarded struct {
	Listen string `json:"listen"` // the actual local address
	Peer   string `json:"peer"`
	Addr   string `json:"addr"`
	Port   int    `json:"port"`
}

// BenchRequest is the body of POST /v1/bench.
type BenchRequest struct {
	Peer      string `json:"peer"`
	Bytes     int64  `json:"bytes,omitempty"` // bulk transfer size, 1 B - 4 GiB, default 16 MiB
	Pings     int    `json:"pings,omitempty"` // RTT samples, 1-1000, default 20
	TimeoutMS int    `json:"timeout_ms,omitempty"`
}

// BenchResult is the answer of POST /v1/bench.
type BenchResult struct {
	Peer      string  `json:"peer"`
	Addr      string  `json:"addr"`
	Service   string  `json:"service"` // "discard" (one way) or "echo" (there and back)
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MbitPerS  float64 `json:"mbit_per_s"`
	RTTMinMS  float64 `json:"rtt_min_ms"`
	RTTAvgMS  float64 `json:"rtt_avg_ms"`
	RTTMaxMS  float64 `json:"rtt_max_ms"`
	RTTCount  int     `json:"rtt_count"`
	ConnectMS float64 `json:"connect_ms"`
}

// MessageRequest is the body of POST /v1/messages: a typed message to a
// peer's inbox. Exactly one of Text, JSON, DataBase64 is set.
type MessageRequest struct {
	Peer       string `json:"peer"`
	Text       string `json:"text,omitempty"`
	JSON       any    `json:"json,omitempty"`
	DataBase64 string `json:"data_base64,omitempty"`
	TimeoutMS  int    `json:"timeout_ms,omitempty"`
}

// DeliveryResult is the answer of POST /v1/messages and POST /v1/files: the
// peer stored the item and verified its SHA-256.
type DeliveryResult struct {
	Peer   string `json:"peer"`
	Addr   string `json:"addr"`
	Kind   string `json:"kind"` // text, json, binary, file
	ID     string `json:"id"`   // the item's ID in the peer's inbox
	Name   string `json:"name"` // files: the name the peer stored it under
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"` // hex, as verified by the peer
}

// InboxList is the answer of GET /v1/inbox.
type InboxList struct {
	Items []InboxItem `json:"items"`
	Bytes int64       `json:"bytes"` // total size of the inbox
}

// InboxItem describes a message or file received.
type InboxItem struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"` // text, json, binary, file
	From     string    `json:"from"` // the sender's address
	Hostname string    `json:"hostname"`
	Name     string    `json:"name"` // files: the (sanitised) file name
	Path     string    `json:"path"` // where the content is on disk
	Bytes    int64     `json:"bytes"`
	SHA256   string    `json:"sha256"`
	Received time.Time `json:"received"`
}

// InboxEntry is the answer of GET and DELETE /v1/inbox/{id}: the item and,
// for messages, its content (Text for text, JSON for json, DataBase64 for
// binary). File contents are at Item.Path or GET /v1/inbox/{id}/data.
type InboxEntry struct {
	Item       InboxItem `json:"item"`
	Text       string    `json:"text,omitempty"`
	JSON       any       `json:"json,omitempty"`
	DataBase64 string    `json:"data_base64,omitempty"`
	Deleted    bool      `json:"deleted"`
}

// PublishRequest is the body of POST /v1/events/publish. Without To the
// event goes to our own bus (local subscribers and peers subscribed to us);
// with To it goes to that peer's bus, for its local subscribers.
type PublishRequest struct {
	Topic      string `json:"topic"`
	Data       string `json:"data,omitempty"`
	DataBase64 string `json:"data_base64,omitempty"`
	To         string `json:"to,omitempty"`
}

// PublishResult is the answer of POST /v1/events/publish.
type PublishResult struct {
	Topic     string `json:"topic"`
	To        string `json:"to"`
	Delivered int    `json:"delivered"` // subscribers it was queued for
}

// SubscribeRequest is the body of POST /v1/events/subscribe (streaming).
// Without From it subscribes to our own bus; with From to that peer's
// events.
type SubscribeRequest struct {
	Patterns []string `json:"patterns"` // topic patterns: "a.b", "a.*", "a.>", ">"
	From     string   `json:"from,omitempty"`
	Count    int      `json:"count,omitempty"` // events to receive, then end; 0: until the client goes away
}

// Event is one line of /v1/events/subscribe.
type Event struct {
	Topic      string    `json:"topic"`
	Data       string    `json:"data"`        // if valid UTF-8
	DataBase64 string    `json:"data_base64"` // otherwise
	From       string    `json:"from"`        // the publisher's address
	Seq        uint64    `json:"seq"`         // per bus, increasing
	Time       time.Time `json:"time"`
	Dropped    uint64    `json:"dropped"` // events this subscription lost so far (queue full)
}
