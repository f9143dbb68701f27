package daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/quicnode"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/service/event"
	"github.com/agentnet/agentnet/service/message"
	"github.com/agentnet/agentnet/trustdb"
	"github.com/quic-go/quic-go"
)

// handlerFunc is an API handler; a returned error becomes the error answer
// (if nothing was written yet).
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// Bounds of the API.
const (
	maxSmallBody   = 64 << 10 // requests without payload
	defaultTimeout = 30 * time.Second
	trustTimeout   = 5 * time.Second
	dialTimeout    = 15 * time.Second
	maxTimeoutMS   = 3_600_000
)

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, f handlerFunc) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			d.log.Debug("api request", "method", r.Method, "path", r.URL.Path)
			if v := r.Header.Get(ctl.TimeoutHeader); v != "" {
				ms, err := strconv.Atoi(v)
				if err != nil || ms < 1 || ms > maxTimeoutMS {
					writeError(w, invalid("header %s: %q: want milliseconds, 1-%d", ctl.TimeoutHeader, v, maxTimeoutMS))
					return
				}
				ctx, cancel := context.WithTimeout(r.Context(), time.Duration(ms)*time.Millisecond)
				defer cancel()
				r = r.WithContext(ctx)
			}
			if err := f(w, r); err != nil {
				writeError(w, d.apiError(err))
			}
		})
	}
	h("GET "+ctl.PathStatus, d.handleStatus)
	h("GET "+ctl.PathPeers, d.handlePeers)
	h("PUT "+ctl.PathHostname, d.handleHostnameSet)
	h("DELETE "+ctl.PathHostname, d.handleHostnameClear)
	h("GET "+ctl.PathTrust, d.handleTrustList)
	h("GET "+ctl.PathTrustPending, d.handleTrustPending)
	h("POST "+ctl.PathTrustRequest, d.handleTrustRequest)
	h("POST "+ctl.PathTrustApprove, d.trustAction("approve"))
	h("POST "+ctl.PathTrustReject, d.trustAction("reject"))
	h("POST "+ctl.PathTrustRevoke, d.trustAction("revoke"))
	h("POST "+ctl.PathTrustForget, d.handleTrustForget)
	h("POST "+ctl.PathPing, d.handlePing)
	h("POST "+ctl.PathSend, d.handleSend)
	h("POST "+ctl.PathRecv, d.handleRecv)
	h("POST "+ctl.PathConnect, d.handleConnect)
	h("POST "+ctl.PathExpose, d.handleExpose)
	h("POST "+ctl.PathForward, d.handleForward)
	h("POST "+ctl.PathBench, d.handleBench)
	h("POST "+ctl.PathMessages, d.handleMessage)
	h("POST "+ctl.PathFiles, d.handleFile)
	h("PUT "+ctl.PathFiles, d.handleFile) // curl -T
	h("GET "+ctl.PathInbox, d.handleInboxList)
	h("GET "+ctl.PathInbox+"/{id}", d.handleInboxGet)
	h("GET "+ctl.PathInbox+"/{id}/data", d.handleInboxData)
	h("DELETE "+ctl.PathInbox+"/{id}", d.handleInboxDelete)
	h("POST "+ctl.PathEventsPublish, d.handlePublish)
	h("POST "+ctl.PathEventsSubscribe, d.handleSubscribe)
	d.networkRoutes(h)
	h("POST "+ctl.PathShutdown, d.handleShutdown)
	d.metricsRoute(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			notFound(w, r, mux)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// notFound answers JSON for paths (404) and methods (405) the mux does not
// serve.
func notFound(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	rec := &statusRecorder{header: http.Header{}}
	mux.ServeHTTP(rec, r)
	if rec.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", rec.header.Get("Allow"))
		e := ctl.Errorf(ctl.CodeInvalidArgument, "allowed: "+rec.header.Get("Allow"), "method %s not allowed on %s", r.Method, r.URL.Path)
		writeJSON(w, http.StatusMethodNotAllowed, ctl.ErrorBody{Error: e})
		return
	}
	writeError(w, ctl.Errorf(ctl.CodeNotFound, "the endpoints are listed in the README (Local API) and by \"agentnet context\"", "no endpoint %s %s", r.Method, r.URL.Path))
}

type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header         { return s.header }
func (s *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusRecorder) WriteHeader(code int)        { s.status = code }

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(ctl.ErrorBody{Error: ctl.Errorf(ctl.CodeInternal, "", "encode answer: %v", err)})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeOK(w http.ResponseWriter, v any) error {
	writeJSON(w, http.StatusOK, v)
	return nil
}

func writeError(w http.ResponseWriter, e *ctl.Error) {
	writeJSON(w, e.Code.HTTPStatus(), ctl.ErrorBody{Error: e})
}

// decode reads a strict JSON body into v: at most limit bytes, no unknown
// fields, exactly one value.
func decode(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body := http.MaxBytesReader(w, r.Body, limit)
	b, err := io.ReadAll(body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return &bodyLimitError{limit}
		}
		return ctl.Errorf(ctl.CodeInvalidArgument, "", "read request body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return ctl.Errorf(ctl.CodeInvalidArgument, "send a JSON object", "empty request body")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return ctl.Errorf(ctl.CodeInvalidArgument, "the request fields are documented in the README (Local API)", "malformed request: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return ctl.Errorf(ctl.CodeInvalidArgument, "send exactly one JSON object", "malformed request: data after the JSON object")
	}
	return nil
}

// bodyLimitError is decode's error for a request body over its limit
// (invalid_argument, unless the handler says better).
type bodyLimitError struct{ limit int64 }

func (e *bodyLimitError) Error() string { return fmt.Sprintf("request body over %d bytes", e.limit) }

func invalid(format string, args ...any) *ctl.Error {
	return ctl.Errorf(ctl.CodeInvalidArgument, "", format, args...)
}

// checkPort validates a virtual port.
func checkPort(name string, p int) (uint16, error) {
	if p < 1 || p > 65535 {
		return 0, invalid("%s %d out of range: want 1-65535", name, p)
	}
	return uint16(p), nil
}

// checkPeer validates a peer name (address or hostname) and refuses our own.
func (d *Daemon) checkPeer(s string) (addressing.Target, error) {
	if s == "" {
		return addressing.Target{}, ctl.Errorf(ctl.CodeInvalidArgument, "name the peer by address (0:3f2a.91c0.0b17) or hostname", "peer missing")
	}
	t, err := addressing.ParseTarget(s)
	if err != nil {
		return addressing.Target{}, ctl.Errorf(ctl.CodeInvalidArgument, "name the peer by address (0:3f2a.91c0.0b17) or hostname", "peer %q: %v", s, err)
	}
	if a, ok := t.Addr(); ok && a.Node() == d.node.Addr().Node() {
		return addressing.Target{}, invalid("peer %s is this node", s)
	}
	if h, ok := t.Hostname(); ok && h == d.currentHostname() {
		return addressing.Target{}, invalid("peer %s is this node's hostname", s)
	}
	return t, nil
}

// timeout returns ms as a duration, or def when ms is 0.
func timeout(ms int, def time.Duration) (time.Duration, error) {
	switch {
	case ms == 0:
		return def, nil
	case ms < 0 || ms > maxTimeoutMS:
		return 0, invalid("timeout_ms %d out of range: want 1-%d", ms, maxTimeoutMS)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// record finds the trust record t names.
func (d *Daemon) record(t addressing.Target) (trustdb.Record, bool) {
	a, byAddr := t.Addr()
	h, _ := t.Hostname()
	var found trustdb.Record
	ok := false
	for _, r := range d.store.List() {
		if r.Key.IsZero() {
			continue
		}
		if byAddr && r.Key.NodeID() == a.Node() || !byAddr && r.Hostname == h {
			// Prefer a trusted record when a hostname matches several.
			if !ok || r.State == trustdb.StateTrusted {
				found, ok = r, true
			}
		}
	}
	return found, ok
}

// peerAddrString returns the address of the peer t names, if known.
func (d *Daemon) peerAddrString(t addressing.Target) string {
	if a, ok := t.Addr(); ok {
		return a.String()
	}
	if r, ok := d.record(t); ok {
		return r.Addr().String()
	}
	return ""
}

// peerHostname names the sender of a stream for inbox metadata.
func (d *Daemon) peerHostname(a net.Addr) string {
	sa, ok := a.(addressing.SockAddr)
	if !ok {
		return ""
	}
	if r, ok := d.record(addressing.TargetAddr(sa.Addr())); ok {
		return r.Hostname
	}
	return ""
}

// requireTrusted fails with not_trusted unless we trust the peer t names or
// it is a fellow network member (for N:x, of network N). A hostname no
// record knows passes: the rendezvous may resolve it to a trusted peer (one
// that changed its hostname) or a fellow member, and every dial checks again.
func (d *Daemon) requireTrusted(t addressing.Target) error {
	if a, ok := t.Addr(); ok {
		if _, member := d.store.MemberByNode(a.Network(), a.Node()); member {
			return nil
		}
	}
	r, ok := d.record(t)
	if ok && r.State == trustdb.StateTrusted {
		return nil
	}
	if _, byName := t.Hostname(); byName && !ok {
		return nil
	}
	return d.apiError(fmt.Errorf("%s: %w", t, quicnode.ErrNotTrusted))
}

// dial opens a stream to t's port within ctx. It waits for the port's
// answer (DialStrict): the API's connect and forward report a closed port
// as port_closed before the stream is upgraded.
func (d *Daemon) dial(ctx context.Context, t addressing.Target, port uint16) (net.Conn, error) {
	c, err := d.node.DialStrict(ctx, t, port)
	if errors.Is(err, quicnode.ErrNotTrusted) {
		// A trust change that List already shows may not have reached the
		// store's in-memory trust set yet (see settle): retry once after it.
		if rec, ok := d.record(t); ok && rec.State == trustdb.StateTrusted && !d.store.IsTrusted(rec.Key) {
			d.settle(ctx, rec)
			c, err = d.node.DialStrict(ctx, t, port)
		}
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// settle waits, briefly, until the store's in-memory trust set (IsTrusted,
// which gates every dial and handshake) agrees with rec as read by List.
// trustdb makes a commit visible to readers a moment before it updates the
// in-memory set, so without this "trust list" could show a peer trusted
// that a dial right after still refuses.
func (d *Daemon) settle(ctx context.Context, rec trustdb.Record) {
	if rec.Key.IsZero() {
		return
	}
	want := rec.State == trustdb.StateTrusted
	deadline := time.Now().Add(3 * time.Second)
	for d.store.IsTrusted(rec.Key) != want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// apiError maps an error to its API error: the code by the kind of error
// (the sentinels of quicnode, rendezvous, trustdb and the services, and
// quic-go's connection errors), and a hint that blames what failed: our
// own rendezvous session when we are not registered, the path or the peer
// otherwise, the daemon only when it is shutting down.
func (d *Daemon) apiError(err error) *ctl.Error {
	var ce *ctl.Error
	if errors.As(err, &ce) {
		return ce
	}
	e := d.apiErrorOf(err)
	if e.PeerText == "" {
		e.Message, e.PeerText = splitPeerText(err, e.Message)
	}
	return e
}

// splitPeerText takes what peers chose to say out of msg (err's message):
// a service's refusal (an error with a PeerText method: message.RefusedError,
// event.RefusedError) and the reason a peer closed the QUIC connection with
// (a remote ApplicationError or TransportError). It returns msg without them
// and them, joined by "; " and bounded by ctl.MaxPeerText, for the API
// error's peer_text: the message is the daemon's own words only.
func splitPeerText(err error, msg string) (string, string) {
	var texts []string
	add := func(t string) {
		if t != "" && !slices.Contains(texts, t) {
			texts = append(texts, t)
		}
	}
	walkErrors(err, func(e error) {
		switch e := e.(type) {
		case interface{ PeerText() string }:
			add(e.PeerText())
		case *quic.ApplicationError:
			if e.Remote && e.ErrorMessage != "" {
				bare := *e
				bare.ErrorMessage = ""
				msg = strings.ReplaceAll(msg, e.Error(), bare.Error())
				add(e.ErrorMessage)
			}
		case *quic.TransportError:
			if e.Remote && e.ErrorMessage != "" {
				bare := *e
				bare.ErrorMessage = ""
				msg = strings.ReplaceAll(msg, e.Error(), bare.Error())
				add(e.ErrorMessage)
			}
		}
	})
	// A wrapper that formatted one of them with %v instead of %w, or an
	// Error that quotes the text after all: the text must still not be in
	// the message.
	for _, t := range texts {
		msg = strings.ReplaceAll(msg, t, "(the peer's text, in peer_text)")
	}
	pt := strings.Join(texts, "; ")
	if len(pt) > ctl.MaxPeerText {
		pt = strings.ToValidUTF8(pt[:ctl.MaxPeerText], "")
	}
	return msg, pt
}

// walkErrors calls f for err and every error it wraps (Unwrap() error and
// Unwrap() []error), depth first.
func walkErrors(err error, f func(error)) {
	for depth := 0; err != nil && depth < 64; depth++ {
		f(err)
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walkErrors(e, f)
			}
			return
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		default:
			return
		}
	}
}

// apiErrorOf is apiError for an error that is not already a *ctl.Error.
func (d *Daemon) apiErrorOf(err error) *ctl.Error {
	msg := errorText(err)
	var bl *bodyLimitError
	if errors.As(err, &bl) {
		return &ctl.Error{Code: ctl.CodeInvalidArgument, Message: msg, Hint: "send less; bulk data goes through connect, file send or /v1/files"}
	}
	var (
		ae *quic.ApplicationError
		se *quic.StreamError
		it *quic.IdleTimeoutError
		sr *quic.StatelessResetError

		damagedHint interface{ Hint() string }
	)
	switch {
	case errors.Is(err, quicnode.ErrNotTrusted):
		return &ctl.Error{Code: ctl.CodeNotTrusted, Message: msg,
			Hint: "trust must be mutual: \"agentnet trust request <peer>\" and the peer approves; \"agentnet trust list\" shows the state (revoked peers need a new request)"}
	case errors.Is(err, quicnode.ErrPortClosed):
		return &ctl.Error{Code: ctl.CodePortClosed, Message: msg, Hint: "nothing listens on that virtual port at the peer (a service switched off, or no expose/recv running)"}
	case errors.Is(err, quicnode.ErrPortInUse), errors.Is(err, syscall.EADDRINUSE):
		return &ctl.Error{Code: ctl.CodePortInUse, Message: msg, Hint: "choose another port, or stop what uses it"}
	case errors.Is(err, rendezvous.ErrServerKey):
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: msg, Hint: "the rendezvous presented a key other than the one pinned (--rendezvous-key, or trusted on first use): an imposter, or a server whose identity was replaced; only its operator can say which"}
	case errors.Is(err, quicnode.ErrUnreachable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		code, hint := ctl.CodeUnreachable, "is the peer's daemon running and registered at the same rendezvous? (\"agentnet status\" on both sides)"
		if !errors.Is(err, quicnode.ErrUnreachable) {
			code, hint = ctl.CodeTimeout, "the peer did not answer in time: retry, or raise --timeout (timeout_ms)"
		}
		if ok, why := registration(d.node); !ok {
			hint = "this node is not registered at its rendezvous " + d.rdvAddr + " right now"
			if why != nil {
				hint += " (" + errorText(why) + ")"
			}
			hint += ", so it cannot find peers: is the rendezvous running and reachable? (\"agentnet status\" shows the session)"
		}
		return &ctl.Error{Code: code, Message: msg, Hint: hint}
	case errors.Is(err, quicnode.ErrBusy):
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: msg, Hint: "the peer's listener is overloaded; retry"}
	case errors.Is(err, ErrDamaged) && errors.As(err, &damagedHint):
		return &ctl.Error{Code: ctl.CodeDamagedState, Message: msg, Hint: damagedHint.Hint()}
	case errors.Is(err, trustdb.ErrUnexpected):
		return &ctl.Error{Code: ctl.CodeConflict, Message: msg, Hint: "\"agentnet trust list\" shows each peer's state"}
	case errors.Is(err, trustdb.ErrOutboxFull), errors.Is(err, rendezvous.ErrRateLimited), errors.Is(err, rendezvous.ErrLimit):
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: msg, Hint: "retry later"}
	case errors.Is(err, rendezvous.ErrHostnameTaken):
		return &ctl.Error{Code: ctl.CodeConflict, Message: msg, Hint: "another agent holds that hostname; choose another"}
	case errors.Is(err, message.ErrTooLarge):
		return &ctl.Error{Code: ctl.CodeTooLarge, Message: msg, Hint: "the peer's limit (its --max-message / --max-file) is lower; send less, or a file instead of a message"}
	case errors.Is(err, message.ErrInboxFull):
		return &ctl.Error{Code: ctl.CodeInboxFull, Message: msg, Hint: "the peer must empty its inbox (agentnet inbox rm) or raise --max-inbox"}
	case errors.Is(err, message.ErrBadRequest), errors.Is(err, event.ErrInvalid):
		return &ctl.Error{Code: ctl.CodeInvalidArgument, Message: msg}
	case errors.Is(err, message.ErrNotFound):
		return &ctl.Error{Code: ctl.CodeNotFound, Message: msg, Hint: "\"agentnet inbox\" lists the items"}
	case d.ctx.Err() != nil && errors.Is(err, net.ErrClosed):
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: msg, Hint: "the daemon is shutting down"}
	case errors.As(err, &se):
		return d.streamError(err)
	case errors.As(err, &ae) && ae.ErrorCode == quicnode.CodePathDead:
		return &ctl.Error{Code: ctl.CodeUnreachable, Message: msg, Hint: "the path to the peer died: nothing came back while we sent (its machine or network went away, or a NAT forgot the mapping); retry: the node dials afresh"}
	case errors.As(err, &ae) && ae.ErrorCode == quicnode.CodeClosing && ae.Remote:
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: msg, Hint: "the peer's node is shutting down; retry when it is back"}
	case errors.As(err, &it):
		return &ctl.Error{Code: ctl.CodeUnreachable, Message: msg, Hint: "the peer stopped answering (idle timeout): its machine or network went away; retry"}
	case errors.As(err, &sr):
		return &ctl.Error{Code: ctl.CodeUnreachable, Message: msg, Hint: "the peer's node restarted; retry"}
	case errors.As(err, &ae):
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: msg, Hint: "the connection to the peer closed; retry"}
	case errors.Is(err, net.ErrClosed):
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: msg, Hint: "the connection closed under the request; retry"}
	}
	return &ctl.Error{Code: ctl.CodeInternal, Message: msg}
}

// errorText is err's message without noise: the same failure joined from
// several dial candidates (errors.Join: "...: context deadline exceeded\n
// context deadline exceeded\ncontext deadline exceeded") is said once, the
// lines joined by "; ", and the socket addresses of a *net.OpError ("read
// unix /path/agentnet.sock->@: ...") are dropped.
func errorText(err error) string {
	msg := err.Error()
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		if full := oe.Error(); strings.Contains(msg, full) {
			msg = strings.Replace(msg, full, oe.Op+": "+oe.Err.Error(), 1)
		}
	}
	lines := strings.Split(msg, "\n")
	out := lines[:0]
	for _, l := range lines {
		said := slices.ContainsFunc(out, func(o string) bool { return o == l || strings.HasSuffix(o, ": "+l) })
		if l != "" && !said {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// streamWriter writes JSON Lines and flushes each.
type streamWriter struct {
	w       http.ResponseWriter
	started bool
}

// start sends the status line and headers, so the client knows the stream
// is set up.
func (s *streamWriter) start() {
	if s.started {
		return
	}
	s.started = true
	s.w.Header().Set("Content-Type", "application/x-ndjson")
	s.w.WriteHeader(http.StatusOK)
	http.NewResponseController(s.w).Flush()
}

// line writes one object; false if the client went away.
func (s *streamWriter) line(v any) bool {
	s.start()
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(ctl.ErrorBody{Error: ctl.Errorf(ctl.CodeInternal, "", "encode: %v", err)})
	}
	if _, err := s.w.Write(append(b, '\n')); err != nil {
		return false
	}
	return http.NewResponseController(s.w).Flush() == nil
}

// fail ends a stream with an error: an error answer if nothing was sent yet,
// else an error line.
func (s *streamWriter) fail(e *ctl.Error) {
	if !s.started {
		writeError(s.w, e)
		return
	}
	s.line(ctl.ErrorBody{Error: e})
}

// dataFields returns b as the data (UTF-8) or data_base64 field pair.
func dataFields(b []byte) (text, b64 string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return "", base64.StdEncoding.EncodeToString(b)
}

// payload decodes the data/data_base64 pair of a request.
func payload(data, b64 string) ([]byte, error) {
	if data != "" && b64 != "" {
		return nil, invalid("set data or data_base64, not both")
	}
	if b64 != "" {
		b, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, invalid("data_base64: %v", err)
		}
		return b, nil
	}
	return []byte(data), nil
}

func (d *Daemon) currentHostname() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hostname
}
