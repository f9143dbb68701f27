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
	"sync"
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
			"no agentnet daemon answers on %s: %v", c.socket, de.err)
	case ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
		return Errorf(CodeTimeout, "raise --timeout", "the daemon did not answer in time")
	case ctx.Err() != nil:
		return Errorf(CodeUnavailable, "", "request cancelled: %v", ctx.Err())
	}
	return Errorf(CodeUnavailable, "check that the daemon is still running (agentnet status)", "control socket: %v", err)
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
	return req, nil
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
type Conn struct {
	net.Conn // the Unix socket
	r        *bufio.Reader
}

// Read reads from the peer.
func (c *Conn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite sends EOF to the peer; reading goes on.
func (c *Conn) CloseWrite() error {
	if uc, ok := c.Conn.(*net.UnixConn); ok {
		return uc.CloseWrite()
	}
	return errors.New("ctl: connection cannot half-close")
}

// Connect asks the daemon for a stream to req.Peer:req.Port (POST
// /v1/connect). On success the socket is switched to the raw stream.
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
	return &Conn{Conn: conn, r: br}, nil
}
