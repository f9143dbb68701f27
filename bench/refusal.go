package bench

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/trustdb"
)

// Refusals is the outcome of the refusal scenario.
type Refusals struct {
	Refused   int64         // handshakes refused by the gate
	Admitted  int64         // handshakes the gate let through (must be 0)
	Wall      time.Duration // length of the attack
	ServerCPU time.Duration // CPU time the refusing process used meanwhile
}

// PerSecond returns refusals per wall-clock second.
func (r Refusals) PerSecond() float64 { return float64(r.Refused) / r.Wall.Seconds() }

// PerCore returns refusals per CPU-second of the refusing process.
func (r Refusals) PerCore() float64 { return float64(r.Refused) / r.ServerCPU.Seconds() }

// refusalWorkers is the number of concurrent untrusted dialers.
const refusalWorkers = 16

// Refusal runs sys's listener in a child process that trusts nobody, and
// dials it from untrusted keys (same TLS and QUIC configuration as a real
// client) for dur. The child's CPU time is measured alone, so PerCore is
// the cost of the gate's side.
func Refusal(ctx context.Context, sys System, dur time.Duration) (Refusals, error) {
	var role string
	switch sys {
	case Agentnet:
		role = roleRefuseAgentnet
	case QUIC:
		role = roleRefuseQUIC
	case TLS:
		role = roleRefuseTLS
	default:
		return Refusals{}, notSupported("no handshake to refuse")
	}
	ch, err := startChild(ctx, role)
	if err != nil {
		return Refusals{}, err
	}
	defer ch.close()
	if len(ch.ready) < 2 {
		return Refusals{}, fmt.Errorf("bench: child %s: ready line %q", role, ch.ready)
	}
	addr, alpn := ch.ready[0], ch.ready[1]
	var attack attacker = attackQUIC
	if sys == TLS {
		attack = attackTLS
	}
	// A short warm-up, then the measured window.
	if _, _, err := attack(ctx, addr, alpn, time.Now().Add(dur/10)); err != nil {
		return Refusals{}, err
	}
	s0, err := ch.stats(ctx, false)
	if err != nil {
		return Refusals{}, err
	}
	t0 := time.Now()
	refused, admitted, err := attack(ctx, addr, alpn, t0.Add(dur))
	if err != nil {
		return Refusals{}, err
	}
	wall := time.Since(t0)
	s1, err := ch.stats(ctx, false)
	if err != nil {
		return Refusals{}, err
	}
	return Refusals{
		Refused:   refused,
		Admitted:  admitted,
		Wall:      wall,
		ServerCPU: time.Duration(s1["cpu_ns"] - s0["cpu_ns"]),
	}, nil
}

// attacker dials addr until the deadline and counts refusals.
type attacker func(ctx context.Context, addr, alpn string, until time.Time) (refused, admitted int64, err error)

const tlsAlertBadCertificate = 42

func attackQUIC(ctx context.Context, addr, alpn string, until time.Time) (refused, admitted int64, err error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return 0, 0, err
	}
	var nRefused, nAdmitted atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	const transports = 4
	for t := range transports {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return 0, 0, err
		}
		tr := &quic.Transport{Conn: udp}
		defer udp.Close()
		defer tr.Close()
		for w := t; w < refusalWorkers; w += transports {
			id, err := newIdentity()
			if err != nil {
				return 0, 0, err
			}
			conf := clientTLS(id.cert, alpn, addressing.PublicKey{})
			conf.ServerName = knockShapedName()
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(until) && ctx.Err() == nil {
					ok, err := refusedQUIC(ctx, tr, ua, conf)
					switch {
					case err != nil:
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						return
					case ok:
						nRefused.Add(1)
					default:
						nAdmitted.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	return nRefused.Load(), nAdmitted.Load(), firstErr
}

// refusedQUIC makes one handshake and reports whether the server's gate
// refused it. A TLS 1.3 client finishes before the server judges it, so the
// refusal usually arrives as the connection's close, about one RTT later.
func refusedQUIC(ctx context.Context, tr *quic.Transport, to net.Addr, conf *tls.Config) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := tr.Dial(ctx, to, conf, QUICConfig())
	if err == nil {
		select {
		case <-c.Context().Done():
			err = context.Cause(c.Context())
		case <-time.After(2 * time.Second):
			c.CloseWithError(0, "")
			return false, nil
		}
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode == quic.TransportErrorCode(0x100+tlsAlertBadCertificate) {
		return true, nil
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote {
		return false, nil // admitted, then closed by the application
	}
	return false, fmt.Errorf("bench: untrusted handshake: %w", err)
}

func attackTLS(ctx context.Context, addr, alpn string, until time.Time) (refused, admitted int64, err error) {
	var nRefused, nAdmitted atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range refusalWorkers {
		id, err := newIdentity()
		if err != nil {
			return 0, 0, err
		}
		conf := clientTLS(id.cert, alpn, addressing.PublicKey{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(until) && ctx.Err() == nil {
				ok, err := refusedTLS(ctx, addr, conf)
				switch {
				case err != nil:
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				case ok:
					nRefused.Add(1)
				default:
					nAdmitted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return nRefused.Load(), nAdmitted.Load(), firstErr
}

func refusedTLS(ctx context.Context, addr string, conf *tls.Config) (bool, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, conf)
	err = tc.Handshake()
	if err == nil {
		var b [1]byte
		_, err = tc.Read(b[:])
	}
	if err != nil && strings.Contains(err.Error(), "bad certificate") {
		return true, nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, nil
	}
	return false, fmt.Errorf("bench: untrusted TLS handshake: %w", err)
}

// knockShapedName returns a random server name of the knock's shape
// (quicnode/knock.go: "k" + hex(epoch byte | nonce | hint) + "." + hex(tag)
// + ".agentnet", in the current 5-minute epoch), so that agentnet's gate
// does all its work on it (parse, the hint's AES block, the table lookup)
// before refusing: the most a stranger can make it do. Other systems ignore
// the name.
func knockShapedName() string {
	var b [33]byte
	rand.Read(b[:])
	b[0] = byte(time.Now().Unix() / 300)
	return "k" + hex.EncodeToString(b[:21]) + "." + hex.EncodeToString(b[21:]) + ".agentnet"
}

// RefuserPeersEnv, set to a number, makes the agentnet refuser admit that
// many fellow members (made-up keys in a network of its own): its knock
// table then holds that many keys, each of which a refused knock is tried
// against. Unset, it admits nobody.
const RefuserPeersEnv = "AGENTNET_BENCH_REFUSER_PEERS"

// admitRefuserPeers adds RefuserPeersEnv fellow members to st.
func admitRefuserPeers(st *trustdb.Store) error {
	v := os.Getenv(RefuserPeersEnv)
	if v == "" {
		return nil
	}
	count, err := strconv.Atoi(v)
	if err != nil || count < 0 {
		return fmt.Errorf("bench: %s=%q: want a count", RefuserPeersEnv, v)
	}
	self := st.Identity().PublicKey()
	return st.UpdateNetwork(1, func(n *trustdb.Network, _ bool) (bool, error) {
		n.Name, n.Owner = "bench", self
		for range count {
			p, _, err := ed25519.GenerateKey(nil)
			if err != nil {
				return false, err
			}
			k, _ := addressing.PublicKeyFrom(p)
			n.Members = append(n.Members, trustdb.NetworkDoc{Key: k, Doc: []byte{0}}) // never verified: nobody pushes it
		}
		slices.SortFunc(n.Members, func(a, b trustdb.NetworkDoc) int { return bytes.Compare(a.Key[:], b.Key[:]) })
		return true, nil
	})
}
