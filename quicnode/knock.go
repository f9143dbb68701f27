package quicnode

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
)

// The knock lets the listener refuse a stranger's handshake before doing
// any expensive cryptography. Every pair of agents shares a secret: the
// X25519 agreement of their identity keys (converted from Ed25519, as
// libsodium's crypto_sign_ed25519_*_to_curve25519 do). The dialer puts
// HMAC(secret, epoch) in the ClientHello's server name; the listener's
// GetConfigForClient looks it up in a table built for its admissible peers
// and refuses unknown names at once, and VerifyConnection later checks that
// the certificate's key is the one the knock named. Names change every
// knockEpoch and reveal nothing but "the same pair, within minutes".
const knockEpoch = 5 * time.Minute

// knockSuffix ends every knock server name.
const knockSuffix = ".agentnet"

// errKnock refuses a handshake. It carries TLS alert bad_certificate, the
// one the certificate gate sends, so a refused dialer sees the same QUIC
// error (CRYPTO_ERROR 0x12a) whichever check refused it.
var errKnock = fmt.Errorf("quicnode: no valid knock%.0w", tls.AlertError(42))

// curve25519P is 2^255 - 19.
var curve25519P = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))

// x25519Public converts an Ed25519 public key to the X25519 one: u = (1+y)/(1-y) mod p.
func x25519Public(k addressing.PublicKey) (*ecdh.PublicKey, error) {
	var le [32]byte
	copy(le[:], k[:])
	le[31] &= 0x7f // drop the sign of x
	y := new(big.Int).SetBytes(reverse(le[:]))
	one := big.NewInt(1)
	num := new(big.Int).Add(one, y)
	den := new(big.Int).Sub(one, y)
	den.Mod(den, curve25519P)
	if den.Sign() == 0 {
		return nil, errors.New("quicnode: degenerate key")
	}
	u := num.Mul(num, den.ModInverse(den, curve25519P))
	u.Mod(u, curve25519P)
	var out [32]byte
	u.FillBytes(out[:])
	return ecdh.X25519().NewPublicKey(reverse(out[:]))
}

// x25519Private converts an Ed25519 private key to the X25519 one.
func x25519Private(priv ed25519.PrivateKey) (*ecdh.PrivateKey, error) {
	h := sha512.Sum512(priv.Seed())
	return ecdh.X25519().NewPrivateKey(h[:32]) // X25519 clamps the scalar
}

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

// knocker computes and checks knocks for one node.
type knocker struct {
	self addressing.PublicKey
	priv *ecdh.PrivateKey

	mu      sync.Mutex
	secrets map[addressing.PublicKey][32]byte // pair secrets, by peer
	table   map[string]addressing.PublicKey   // valid server names (epochs e-1..e+1)
	epoch   int64                             // epoch the table was built for
	keys    []addressing.PublicKey            // admissible peers the table covers
}

func newKnocker(self addressing.PublicKey, priv ed25519.PrivateKey) (*knocker, error) {
	x, err := x25519Private(priv)
	if err != nil {
		return nil, err
	}
	return &knocker{self: self, priv: x, secrets: map[addressing.PublicKey][32]byte{}, table: map[string]addressing.PublicKey{}}, nil
}

func knockEpochAt(t time.Time) int64 { return t.Unix() / int64(knockEpoch/time.Second) }

// secretLocked returns the pair secret with peer, computing it once.
func (kn *knocker) secretLocked(peer addressing.PublicKey) ([32]byte, error) {
	if s, ok := kn.secrets[peer]; ok {
		return s, nil
	}
	pub, err := x25519Public(peer)
	if err != nil {
		return [32]byte{}, err
	}
	shared, err := kn.priv.ECDH(pub)
	if err != nil {
		return [32]byte{}, err
	}
	a, b := kn.self, peer
	if string(a[:]) > string(b[:]) {
		a, b = b, a
	}
	h := sha256.New()
	h.Write([]byte("agentnet knock v1\x00"))
	h.Write(shared)
	h.Write(a[:])
	h.Write(b[:])
	var s [32]byte
	h.Sum(s[:0])
	kn.secrets[peer] = s
	return s, nil
}

func knockName(secret [32]byte, epoch int64) string {
	m := hmac.New(sha256.New, secret[:])
	var e [8]byte
	for i := 0; i < 8; i++ {
		e[i] = byte(uint64(epoch) >> (56 - 8*i))
	}
	m.Write(e[:])
	return "k" + hex.EncodeToString(m.Sum(nil)[:12]) + knockSuffix
}

// name returns the server name to dial peer with now.
func (kn *knocker) name(peer addressing.PublicKey) (string, error) {
	kn.mu.Lock()
	defer kn.mu.Unlock()
	s, err := kn.secretLocked(peer)
	if err != nil {
		return "", err
	}
	return knockName(s, knockEpochAt(time.Now())), nil
}

// rebuild makes the table cover keys for the current epoch and its
// neighbours (clock skew of up to one epoch). Secrets of keys no longer
// admissible are dropped.
func (kn *knocker) rebuild(keys []addressing.PublicKey) {
	epoch := knockEpochAt(time.Now())
	table := make(map[string]addressing.PublicKey, 3*len(keys))
	kn.mu.Lock()
	defer kn.mu.Unlock()
	keep := make(map[addressing.PublicKey]bool, len(keys))
	for _, k := range keys {
		s, err := kn.secretLocked(k)
		if err != nil {
			continue
		}
		keep[k] = true
		for e := epoch - 1; e <= epoch+1; e++ {
			table[knockName(s, e)] = k
		}
	}
	for k := range kn.secrets {
		if !keep[k] {
			delete(kn.secrets, k)
		}
	}
	kn.table, kn.epoch, kn.keys = table, epoch, keys
}

// refresh rebuilds the table when the epoch has moved on.
func (kn *knocker) refresh() {
	kn.mu.Lock()
	stale := kn.epoch != knockEpochAt(time.Now())
	keys := kn.keys
	kn.mu.Unlock()
	if stale {
		kn.rebuild(keys)
	}
}

// lookup returns the peer a server name knocks for.
func (kn *knocker) lookup(name string) (addressing.PublicKey, bool) {
	kn.mu.Lock()
	defer kn.mu.Unlock()
	k, ok := kn.table[name]
	return k, ok
}

// serverTLS is the listeners' TLS config: the trust gate, with the knock
// checked first (before any key exchange) and bound to the certificate.
func (n *Node) serverTLS() *tls.Config {
	c := certs.ServerConfig(n.cert, alpn, n.gate)
	verify := c.VerifyConnection
	c.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		if _, ok := n.knock.lookup(h.ServerName); !ok {
			n.stats.knocksRefused.Add(1)
			n.kickNetRefresh() // a member whose Join we have not heard of yet?
			return nil, errKnock
		}
		return nil, nil // go on with c
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := verify(cs); err != nil {
			return err
		}
		k, err := certs.PeerKey(cs)
		if err != nil {
			return err
		}
		if want, ok := n.knock.lookup(cs.ServerName); !ok || want != k {
			return errKnock
		}
		return nil
	}
	return c
}

// clientTLS is the TLS config for dialling key: pinned, gated, knocking.
func (n *Node) clientTLS(key addressing.PublicKey) *tls.Config {
	c := certs.ClientConfig(n.cert, alpn, key, n.gate)
	if name, err := n.knock.name(key); err == nil {
		c.ServerName = name
	}
	return c
}

// admissibleKeys lists the peers whose handshakes the listener admits:
// trusted peers and fellow network members.
func (n *Node) admissibleKeys() []addressing.PublicKey {
	keys := n.store.TrustedKeys()
	for _, k := range n.store.Fellows() {
		if !n.store.IsTrusted(k) {
			keys = append(keys, k)
		}
	}
	return keys
}
