package ctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
)

// baseURL is the URL the client addresses; the host part is ignored (the
// connection always goes to the socket), but it appears in logs and curl
// examples.
const baseURL = "http://agentnet"

// Client talks to a daemon's control API on a Unix socket. The zero value is
// not usable; create it with NewClient. It is safe for concurrent use.
type Client struct {
	socket string

	once sync.Once
	hc   *http.Client
}

// NewClient returns a client for the daemon listening on the Unix socket at
// path. It does no I/O.
func NewClient(path string) *Client { return &Client{socket: path} }

// Socket returns the socket path.
func (c *Client) Socket() string { return c.socket }

func (c *Client) http() *http.Client {
	c.once.Do(func() {
		c.hc = &http.Client{Transport: &http.Transport{
			DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dial(ctx) },
			DisableCompression: true,
			MaxIdleConns:       4,
		}}
	})
	return c.hc
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, &dialError{err}
	}
	return conn, nil
}

// dialError marks a failure to reach the socket at all.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// transportError turns a failed round trip into an *Error.
func (c *Client) transportError(ctx context.Context, err error) *Error {
	var de *dialError
	switch {
	case errors.As(err, &de):
		return Errorf(CodeNotRunning, "start the daemon with \"agentnet up\" (add --detach to run it in the background), or point --socket / AGENTNET_SOCKET at its socket",
			"no agentnet daemon answers on %s: %v", c.socket, cleanNetError(de.err))
	case ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
		return Errorf(CodeTimeout, "the daemon was told the deadline and did not answer by then: is it overloaded or stuck? (agentnet status); or raise --timeout", "the local daemon did not answer in time")
	case ctx.Err() != nil:
		return Errorf(CodeUnavailable, "", "request cancelled: %v", ctx.Err())
	}
	return Errorf(CodeUnavailable, "check that the daemon is still running (agentnet status)", "control socket: %v", cleanNetError(err))
}

// cleanNetError drops the socket addresses that a *net.OpError prints
// ("read unix ->/path/agentnet.sock: ..."), keeping what went wrong.
func cleanNetError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return se.Err
		}
		return oe.Err
	}
	return err
}

func (c *Client) newRequest(ctx context.Context, method, path string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, Errorf(CodeInvalidArgument, "", "encode request: %v", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, baseURL+path, body)
	if err != nil {
		return nil, Errorf(CodeInvalidArgument, "", "request: %v", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	setTimeout(ctx, req.Header)
	return req, nil
}

// setTimeout tells the daemon the caller's deadline (TimeoutHeader), less a
// margin for the answer to come back.
func setTimeout(ctx context.Context, h http.Header) {
	dl, ok := ctx.Deadline()
	if !ok {
		return
	}
	left := time.Until(dl)
	left -= min(max(left/10, 50*time.Millisecond), time.Second)
	ms := min(max(left.Milliseconds(), 1), 3_600_000)
	h.Set(TimeoutHeader, strconv.FormatInt(ms, 10))
}

// Do sends a request with the JSON encoding of in (nil: no body) and decodes
// the answer into out (nil: discard). Every failure is an *Error.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	req, err := c.newRequest(ctx, method, path, in)
	if err != nil {
		return err
	}
	return c.roundTrip(ctx, req, out)
}

func (c *Client) roundTrip(ctx context.Context, req *http.Request, out any) error {
	resp, err := c.http().Do(req)
	if err != nil {
		return c.transportError(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return Errorf(CodeInternal, "", "decode answer of %s: %v", req.URL.Path, err)
	}
	return nil
}

// readError decodes an error answer.
func readError(resp *http.Response) *Error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		return eb.Error
	}
	return Errorf(CodeInternal, "", "daemon answered %s: %q", resp.Status, bytes.TrimSpace(b))
}

// Upload sends body as the raw request body of a POST to path with query
// parameters (the file endpoint) and decodes the JSON answer into out. size
// is the body length (-1 if unknown).
func (c *Client) Upload(ctx context.Context, path string, query url.Values, body io.Reader, size int64, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+path+"?"+query.Encode(), body)
	if err != nil {
		return Errorf(CodeInvalidArgument, "", "request: %v", err)
	}
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	setTimeout(ctx, req.Header)
	req.Header.Set("Content-Type", "application/octet-stream")
	return c.roundTrip(ctx, req, out)
}

// Get returns the raw answer body of a GET (the inbox data endpoint). The
// caller closes it.
func (c *Client) Get(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp.Body, nil
}

// Stream is the answer of a streaming endpoint: JSON Lines.
type Stream struct {
	resp *http.Response
	dec  *json.Decoder
	ctx  context.Context
	c    *Client
}

// Stream sends a request to a streaming endpoint. It returns once the daemon
// has set the stream up (the subscription, listener or forward is live), or
// with the *Error that prevented it.
func (c *Client) Stream(ctx context.Context, method, path string, in any) (*Stream, error) {
	req, err := c.newRequest(ctx, method, path, in)
	if err != nil {
		return nil, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return &Stream{resp: resp, dec: json.NewDecoder(resp.Body), ctx: ctx, c: c}, nil
}

// Next decodes the next line into v. It returns io.EOF when the daemon ended
// the stream normally, and an *Error when a line is an error object or the
// connection failed.
func (s *Stream) Next(v any) error {
	var raw json.RawMessage
	if err := s.dec.Decode(&raw); err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return s.c.transportError(s.ctx, err)
	}
	var eb ErrorBody
	if json.Unmarshal(raw, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		return eb.Error
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return Errorf(CodeInternal, "", "decode stream line: %v", err)
	}
	return nil
}

// Close ends the stream; the daemon tears down what it set up for it.
func (s *Stream) Close() error { return s.resp.Body.Close() }

// Conn is a byte stream to a peer's virtual port, bridged by the daemon.
// With a daemon that speaks framing (every daemon of this version), the end
// of the stream is explicit both ways (see FramingHeader): Read returns
// io.EOF only when the peer ended its side cleanly, and an *Error (code
// CodeStreamReset, CodeNotTrusted, ...) when the stream broke, including
// when the daemon goes away; Wait tells whether our own side was delivered.
// Read and Write may be called concurrently with each other; each of them
// from one goroutine at a time.
type Conn struct {
	net.Conn // the Unix socket
	r        *bufio.Reader
	framed   bool

	rbuf    []byte // frame buffer
	pending []byte // unread data of the current DATA frame
	rerr    error  // sticky: the *Error that broke the stream
	eof     bool   // the peer's EOF arrived
	done    bool   // the daemon's DONE arrived

	wmu     sync.Mutex
	wclosed bool  // our EOF (or RESET) was sent
	werr    error // sticky write error
	wbuf    []byte
}

// Framed reports whether the daemon speaks framing on this connection.
func (c *Conn) Framed() bool { return c.framed }

// Read reads from the peer.
func (c *Conn) Read(b []byte) (int, error) {
	if !c.framed {
		return c.r.Read(b)
	}
	for len(c.pending) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if c.eof {
			return 0, io.EOF
		}
		t, p, err := c.readFrame()
		if err != nil {
			c.rerr = err
			return 0, err
		}
		switch t {
		case FrameData:
			c.pending = p
		case FrameEOF:
			c.eof = true
		default:
			c.rerr = c.unexpected(t)
			return 0, c.rerr
		}
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// readFrame reads the next frame; RESET, a malformed frame and the socket
// ending become the *Error returned.
func (c *Conn) readFrame() (FrameType, []byte, error) {
	if c.rbuf == nil {
		c.rbuf = make([]byte, MaxFrameData)
	}
	t, p, err := ReadFrame(c.r, c.rbuf)
	switch {
	case err == nil && t == FrameReset:
		return t, nil, ParseReset(p)
	case err == nil:
		return t, p, nil
	case errors.Is(err, ErrFrame):
		return 0, nil, &Error{Code: CodeStreamReset, Message: "the daemon sent a malformed frame: " + err.Error(), Hint: StreamResetHint}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return 0, nil, &Error{Code: CodeUnavailable, Message: "the daemon closed the stream before its end", Hint: "is the daemon still running? (agentnet status); what arrived may be incomplete"}
	}
	return 0, nil, &Error{Code: CodeUnavailable, Message: "control socket: " + cleanNetError(err).Error(), Hint: "is the daemon still running? (agentnet status); what arrived may be incomplete"}
}

func (c *Conn) unexpected(t FrameType) error {
	return &Error{Code: CodeStreamReset, Message: "the daemon sent an unexpected " + t.String() + " frame", Hint: StreamResetHint}
}

// Write writes to the peer.
func (c *Conn) Write(b []byte) (int, error) {
	if !c.framed {
		return c.Conn.Write(b)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if c.wclosed {
		return 0, &Error{Code: CodeInvalidArgument, Message: "write after CloseWrite"}
	}
	n := 0
	for len(b) > 0 {
		k := min(len(b), MaxFrameData)
		c.wbuf, _ = AppendFrame(c.wbuf[:0], FrameData, b[:k])
		if _, err := c.Conn.Write(c.wbuf); err != nil {
			c.werr = &Error{Code: CodeUnavailable, Message: "control socket: " + cleanNetError(err).Error(), Hint: "the daemon ended the stream; Read or Wait says why"}
			return n, c.werr
		}
		n += k
		b = b[k:]
	}
	return n, nil
}

// CloseWrite sends EOF to the peer; reading goes on.
func (c *Conn) CloseWrite() error {
	if !c.framed {
		if uc, ok := c.Conn.(*net.UnixConn); ok {
			return uc.CloseWrite()
		}
		return errors.New("ctl: connection cannot half-close")
	}
	return c.sendEnd(FrameEOF)
}

func (c *Conn) sendEnd(t FrameType) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed || c.werr != nil {
		return c.werr
	}
	c.wclosed = true
	var b []byte
	if t == FrameReset {
		b = AppendReset(nil, nil)
	} else {
		b, _ = AppendFrame(nil, t, nil)
	}
	if _, err := c.Conn.Write(b); err != nil {
		c.werr = &Error{Code: CodeUnavailable, Message: "control socket: " + cleanNetError(err).Error()}
		return c.werr
	}
	return nil
}

// Wait returns, once both directions ended, whether they ended cleanly: nil
// when the daemon confirms it (our data was handed to the peer's stream
// and the peer's EOF arrived), else the *Error that broke the stream. Call
// it after CloseWrite, not concurrently with Read; data the caller did not
// read is dropped. On an unframed connection it returns nil at once.
func (c *Conn) Wait() error {
	if !c.framed || c.done {
		return nil
	}
	c.pending = nil
	for c.rerr == nil {
		t, _, err := c.readFrame()
		switch {
		case err != nil:
			c.rerr = err
		case t == FrameData && !c.eof:
		case t == FrameEOF && !c.eof:
			c.eof = true
		case t == FrameDone && c.eof:
			c.done = true
			return nil
		default:
			c.rerr = c.unexpected(t)
		}
	}
	return c.rerr
}

// Abort resets the stream: the peer's reads and writes fail instead of
// seeing a clean end. It closes the connection.
func (c *Conn) Abort() error {
	if c.framed {
		c.sendEnd(FrameReset)
	}
	return c.Conn.Close()
}

// Close ends our side cleanly (like CloseWrite, if not done yet) and closes
// the connection; data the peer still sends is refused (its writes fail).
// To cut the stream instead, use Abort.
func (c *Conn) Close() error {
	if c.framed {
		c.sendEnd(FrameEOF)
	}
	return c.Conn.Close()
}

// Connect asks the daemon for a stream to req.Peer:req.Port (POST
// /v1/connect). On success the socket is switched to the stream, framed if
// the daemon supports it.
func (c *Client) Connect(ctx context.Context, req ConnectRequest) (*Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	b, _ := json.Marshal(req)
	hr, _ := http.NewRequest(http.MethodPost, baseURL+PathConnect, bytes.NewReader(b))
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Connection", "Upgrade")
	hr.Header.Set("Upgrade", UpgradeProtocol)
	hr.Header.Set(FramingHeader, FramingVersion)
	setTimeout(ctx, hr.Header)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := hr.Write(conn); err != nil {
		conn.Close()
		return nil, c.transportError(ctx, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, hr)
	if err != nil {
		conn.Close()
		return nil, c.transportError(ctx, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, readError(resp)
	}
	if !stop() {
		conn.Close()
		return nil, c.transportError(ctx, ctx.Err())
	}
	return &Conn{Conn: conn, r: br, framed: resp.Header.Get(FramingHeader) == FramingVersion}, nil
}
