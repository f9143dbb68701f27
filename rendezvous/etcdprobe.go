package rendezvous

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// explainEtcdTimeout adds to err, if it is a timeout of the first contact
// with etcd, why the endpoints did not answer, as far as a plain TCP and
// TLS probe of each can tell: nothing listening, a TLS handshake refused
// (a certificate from an unknown authority, no or a wrong client
// certificate), TLS where none is configured. etcd's client only says
// "context deadline exceeded" for all of these.
//
// A permission refused without a user configured says that etcd has auth
// enabled.
func explainEtcdTimeout(cfg EtcdConfig, err error) error {
	if errors.Is(err, rpctypes.ErrPermissionDenied) && cfg.Username == "" {
		return fmt.Errorf("%w (etcd has auth enabled, and no user is configured)", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var why []string
	for _, ep := range cfg.Endpoints[:min(len(cfg.Endpoints), 3)] {
		if w := probeEtcd(ep, cfg.TLS); w != "" {
			why = append(why, w)
		}
	}
	if len(why) == 0 {
		return err
	}
	return fmt.Errorf("%w (%s)", err, strings.Join(why, "; "))
}

// probeEtcd connects to the etcd endpoint ep as the client would (with tc
// if set) and returns what went wrong, or "" if the connection looks fine.
func probeEtcd(ep string, tc *tls.Config) string {
	host := ep
	if u, err := url.Parse(ep); err == nil && u.Host != "" {
		host = u.Host
	}
	d := &net.Dialer{Timeout: time.Second}
	c, err := d.Dial("tcp", host)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if tc == nil {
		// Does it want TLS? A handshake that gets a server certificate
		// says so.
		tlc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // a probe: nothing is sent
		if tlc.Handshake() == nil {
			return fmt.Sprintf("%s serves TLS, and no TLS is configured (a CA, a client certificate)", host)
		}
		return ""
	}
	cc := tc.Clone()
	if cc.ServerName == "" {
		cc.ServerName, _, _ = net.SplitHostPort(host)
	}
	tlc := tls.Client(c, cc)
	if err := tlc.Handshake(); err != nil {
		return fmt.Sprintf("TLS to %s: %v", host, err)
	}
	// With TLS 1.3 the server checks the client certificate after the
	// client's handshake is done: its refusal is the first thing read.
	tlc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := tlc.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return fmt.Sprintf("TLS to %s: %v", host, err)
		}
	}
	return ""
}
