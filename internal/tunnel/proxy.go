package tunnel

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// Proxy errors. Each comes wrapped with what was tried; errors.Is tells
// them apart.
var (
	// ErrProxyAuth: the proxy refused our credentials, or wants some: 407
	// (some proxies, tinyproxy among them, answer 401).
	ErrProxyAuth = errors.New("proxy authentication required or refused")
	// ErrProxyRefused: the proxy answered CONNECT with another non-2xx status.
	ErrProxyRefused = errors.New("proxy refused the CONNECT")
	// ErrProxyCmd: the proxy command failed or printed no usable URL.
	ErrProxyCmd = errors.New("proxy command failed")
)

// ProxyConfig says how a Client reaches the rendezvous's TCP port: through
// an HTTP proxy (HTTP CONNECT; Basic proxy authentication from the URL's
// user info), or directly.
type ProxyConfig struct {
	// URL, if set, is the proxy to use ("http://user:pass@proxy:3128").
	URL *url.URL
	// Cmd, if set (and URL is not), is a shell command whose standard
	// output's first line is the proxy URL. It runs before each connection
	// and again after a 407 or a failed connection, so it can hand out
	// rotating credentials.
	Cmd string
	// Environment honours HTTPS_PROXY/https_proxy and NO_PROXY (the
	// standard library's rules) when neither URL nor Cmd is set.
	Environment bool
}

// proxyFor returns the proxy to reach addr through, or nil for none.
func (p ProxyConfig) proxyFor(ctx context.Context, addr string) (*url.URL, error) {
	switch {
	case p.URL != nil:
		return p.URL, nil
	case p.Cmd != "":
		return runProxyCmd(ctx, p.Cmd)
	case p.Environment:
		u, err := httpproxy.FromEnvironment().ProxyFunc()(&url.URL{Scheme: "https", Host: addr})
		if err != nil {
			return nil, fmt.Errorf("tunnel: proxy from environment: %w", err)
		}
		return u, nil
	}
	return nil, nil
}

func runProxyCmd(ctx context.Context, cmd string) (*url.URL, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/bin/sh", "-c", cmd).Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrProxyCmd, cmd, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	u, err := ParseProxyURL(strings.TrimSpace(line))
	if err != nil {
		return nil, fmt.Errorf("%w: %q printed %w", ErrProxyCmd, cmd, err)
	}
	return u, nil
}

// ParseProxyURL parses a proxy URL: http://[user:pass@]host[:port] (a bare
// host:port means http; the port defaults to 3128).
func ParseProxyURL(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("bad proxy URL: %w", err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("bad proxy URL: scheme %q (only http proxies, which tunnel TLS with CONNECT)", u.Scheme)
	}
	if u.Hostname() == "" { // "http://:8080" has a Host but no host name
		return nil, errors.New("bad proxy URL: no host")
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "3128")
	} else if n, err := strconv.ParseUint(u.Port(), 10, 16); err != nil || n == 0 {
		return nil, fmt.Errorf("bad proxy URL: port %q (want 1 to 65535)", u.Port())
	}
	return u, nil
}

// Redacted returns u without its password, for messages.
func Redacted(u *url.URL) string {
	if u == nil {
		return "none"
	}
	return u.Redacted()
}

// connectVia opens a tunnel to addr through proxy with HTTP CONNECT on c.
// The returned conn must be used instead of c (it keeps bytes the proxy
// sent after its answer).
func connectVia(ctx context.Context, c net.Conn, proxy *url.URL, addr string) (net.Conn, error) {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: addr},
		Host:   addr,
		Header: make(http.Header),
	}
	if u := proxy.User; u != nil {
		pass, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)))
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	if err := req.Write(c); err != nil {
		return nil, fmt.Errorf("tunnel: proxy %s: send CONNECT: %w", Redacted(proxy), err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("tunnel: proxy %s: read CONNECT answer: %w", Redacted(proxy), err)
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusProxyAuthRequired || resp.StatusCode == http.StatusUnauthorized:
		return nil, fmt.Errorf("tunnel: proxy %s: %w (HTTP %s)", Redacted(proxy), ErrProxyAuth, resp.Status)
	case resp.StatusCode/100 != 2:
		return nil, fmt.Errorf("tunnel: proxy %s: %w: %s", Redacted(proxy), ErrProxyRefused, resp.Status)
	}
	if br.Buffered() == 0 {
		return c, nil
	}
	return &bufferedConn{Conn: c, r: br}, nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
