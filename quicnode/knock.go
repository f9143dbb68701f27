package quicnode

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/internal/certs"
	"github.com/agentnet/agentnet/internal/smallmap"
)

// The knock lets the listener refuse a stranger's handshake before doing
// any expensive cryptography. Every pair of agents shares a secret: the
// X25519 agreement of their identity keys (converted from Ed25519, as
// libsodium's crypto_sign_ed25519_*_to_curve25519 do). For every
// connection the dialer draws a fresh nonce and puts it, with a MAC bound to
// it, in the ClientHello's server name:
//
//	"k" + hex(v | nonce | hint) + "." + hex(tag) + ".agentnet"  (77 characters)
//
//	v       1 byte   the low byte of the dialer's knockEpoch number
//	nonce  12 bytes  random, new for every connection
//	hint    8 bytes  AES-128_G(nonce | "knkh")[:8] XOR id
//	tag    12 bytes  AES-128_K(nonce | "knk2")[:12]
//	K | id           HMAC-SHA256(pair secret, "agentnet knock v2" |
//	                   dialer key | listener key | epoch)[:16 | 16:24]
//	G                SHA-256("agentnet knock group v2" | listener key)[:16]
//
// The listener computes G's block for the nonce (one AES block), finds the
// peer by id in its table of admissible peers for the epoch v names (the
// current one or a neighbour: clocks may be one epoch apart), checks the
// tag under that peer's K (one more block), and refuses a name that fails,
// or whose nonce it has accepted before (a replay). Its work per refusal
// does not grow with the number of peers. VerifyConnection later checks
// that the certificate's key is the one the knock named.
//
// To anyone without the pair secret the tag is random, so only the pair
// can make a valid knock; the direction is in K, so a knock cannot be
// reflected back at its dialer. To anyone who does not know the listener's
// public key (G), the hint is random too: two connections of a pair share
// nothing but the epoch byte, which every agent shares at the same time.
// Someone who knows the listener's key (its peers, the rendezvous) can
// strip the hint to id and so tell that two connections within one epoch
// come from the same dialer, not which one.
//
// The replay cache keeps the nonces of accepted knocks per peer and epoch,
// for as long as the epoch is accepted (up to three epochs), at most
// maxKnocksPerEpoch per peer and epoch; a peer over its quota is refused
// until the epoch ends. Only a valid knock adds an entry, so only the peer
// (who holds the pair secret) can fill its own quota: one source cannot
// flush another's entries, and strangers add nothing.
const knockEpoch = 5 * time.Minute

// maxKnocksPerEpoch bounds the handshakes one peer may start towards us
// per knockEpoch (about 1.7/s sustained), and so the replay cache.
const maxKnocksPerEpoch = 512

// Knock name layout.
const (
	knockNonceLen = 12
	knockHintLen  = 8
	knockTagLen   = 12
	knockHeadLen  = 1 + knockNonceLen + knockHintLen // first label
	knockBinLen   = knockHeadLen + knockTagLen
	knockNameLen  = 1 + 2*knockHeadLen + 1 + 2*knockTagLen + len(knockSuffix)
)

// The AES blocks' fill after the nonce.
const (
	knockTagPad  = "knk2"
	knockHintPad = "knkh"
)

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

// knock is a parsed knock server name.
type knock struct {
	v     byte
	nonce [knockNonceLen]byte
	hint  [knockHintLen]byte
	tag   [knockTagLen]byte
}

// knockID identifies a (dialer, listener, epoch) to the listener.
type knockID [knockHintLen]byte

// appendKnockName appends the server name of k.
func appendKnockName(b []byte, k knock) []byte {
	b = append(b, 'k')
	b = hex.AppendEncode(b, []byte{k.v})
	b = hex.AppendEncode(b, k.nonce[:])
	b = hex.AppendEncode(b, k.hint[:])
	b = append(b, '.')
	b = hex.AppendEncode(b, k.tag[:])
	return append(b, knockSuffix...)
}

// parseKnockName parses a knock server name; anything else (wrong length,
// prefix, separators, upper-case or non-hex digits) is not a knock.
func parseKnockName(name string) (knock, bool) {
	var k knock
	if len(name) != knockNameLen || name[0] != 'k' || name[1+2*knockHeadLen] != '.' || !strings.HasSuffix(name, knockSuffix) {
		return k, false
	}
	digits := name[1:1+2*knockHeadLen] + name[2+2*knockHeadLen:len(name)-len(knockSuffix)]
	for i := 0; i < len(digits); i++ {
		if c := digits[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return k, false
		}
	}
	var bin [knockBinLen]byte
	if _, err := hex.Decode(bin[:], []byte(digits)); err != nil {
		return k, false
	}
	k.v = bin[0]
	copy(k.nonce[:], bin[1:])
	copy(k.hint[:], bin[1+knockNonceLen:])
	copy(k.tag[:], bin[knockHeadLen:])
	return k, true
}

// knockBlock returns AES_b(nonce | pad).
func knockBlock(b cipher.Block, nonce *[knockNonceLen]byte, pad string) [aes.BlockSize]byte {
	var blk [aes.BlockSize]byte
	copy(blk[:], nonce[:])
	copy(blk[knockNonceLen:], pad)
	b.Encrypt(blk[:], blk[:])
	return blk
}

// knockGroup returns G's block for knocks to listener.
func knockGroup(listener addressing.PublicKey) cipher.Block {
	g := knockGroupKey(listener)
	return newKnockBlock(g[:])
}

// knockGroupKey returns G's AES key for knocks to listener.
func knockGroupKey(listener addressing.PublicKey) (g [16]byte) {
	h := sha256.New()
	h.Write([]byte("agentnet knock group v2\x00"))
	h.Write(listener[:])
	copy(g[:], h.Sum(nil))
	return g
}

func newKnockBlock(key []byte) cipher.Block {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // a 16-byte key is always valid
	}
	return b
}

// knockSlot names one peer's knocks in one epoch.
type knockSlot struct {
	peer  addressing.PublicKey
	epoch int64
}

// knockKey is one (peer, epoch) entry: K's block and the id.
type knockKey struct {
	peer addressing.PublicKey
	k    cipher.Block
	id   knockID
}

// knocker computes and checks knocks for one node. Safe for concurrent use.
type knocker struct {
	self  addressing.PublicKey
	priv  *ecdh.PrivateKey
	group cipher.Block     // G for knocks to us
	now   func() time.Time // time.Now; tests move it

	mu      sync.Mutex
	secrets map[addressing.PublicKey][32]byte              // pair secrets, by peer
	dialK   smallmap.Map[addressing.PublicKey, dialKey]    // our knocks to peers (self → peer), one epoch each
	acceptK map[knockSlot]knockKey                         // peers' knocks to us (peer → self)
	table   map[int64]map[knockID]knockKey                 // acceptK by epoch and id, epochs e-1..e+1
	seen    map[knockSlot]map[[knockNonceLen]byte]struct{} // nonces accepted, by peer and epoch
	epoch   int64                                          // epoch the table was built for
	keys    []addressing.PublicKey                         // admissible peers the table covers

	replays atomic.Uint64 // valid knocks refused: replayed, or over the peer's quota
}

// dialKey is what knocking to one peer in one epoch takes: the raw AES
// keys (32 bytes, where the expanded blocks take ~1 KB per peer; a dial
// expands them, which costs far less than its handshake).
type dialKey struct {
	k, group [16]byte // K, and the peer's G
	id       knockID
	epoch    int64 // the epoch k and id are for
}

func newKnocker(self addressing.PublicKey, priv ed25519.PrivateKey) (*knocker, error) {
	x, err := x25519Private(priv)
	if err != nil {
		return nil, err
	}
	return &knocker{
		self: self, priv: x, group: knockGroup(self), now: time.Now,
		secrets: map[addressing.PublicKey][32]byte{},
		acceptK: map[knockSlot]knockKey{},
		table:   map[int64]map[knockID]knockKey{},
		seen:    map[knockSlot]map[[knockNonceLen]byte]struct{}{},
	}, nil
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

// knockKeyFor derives K and the id for knocks from dialer to listener in
// epoch.
func knockKeyFor(secret [32]byte, dialer, listener addressing.PublicKey, epoch int64) knockKey {
	k, id := knockKeyBytes(secret, dialer, listener, epoch)
	return knockKey{k: newKnockBlock(k[:]), id: id}
}

// knockKeyBytes is knockKeyFor's K as a raw AES key, and the id.
func knockKeyBytes(secret [32]byte, dialer, listener addressing.PublicKey, epoch int64) (k [16]byte, id knockID) {
	m := hmac.New(sha256.New, secret[:])
	m.Write([]byte("agentnet knock v2\x00"))
	m.Write(dialer[:])
	m.Write(listener[:])
	var e [8]byte
	binary.BigEndian.PutUint64(e[:], uint64(epoch))
	m.Write(e[:])
	sum := m.Sum(nil)
	copy(k[:], sum[:16])
	copy(id[:], sum[16:])
	return k, id
}

// name returns a fresh server name to dial peer with now.
func (kn *knocker) name(peer addressing.PublicKey) (string, error) {
	epoch := knockEpochAt(kn.now())
	kn.mu.Lock()
	dk, ok := kn.dialK.Get(peer)
	if !ok || dk.epoch != epoch { // one epoch per peer is enough to dial
		s, err := kn.secretLocked(peer)
		if err != nil {
			kn.mu.Unlock()
			return "", err
		}
		dk.k, dk.id = knockKeyBytes(s, kn.self, peer, epoch)
		dk.group = knockGroupKey(peer)
		dk.epoch = epoch
		kn.dialK.Set(peer, dk)
	}
	kn.mu.Unlock()
	k := knock{v: byte(epoch)}
	if _, err := rand.Read(k.nonce[:]); err != nil {
		return "", err
	}
	g := knockBlock(newKnockBlock(dk.group[:]), &k.nonce, knockHintPad)
	for i := range k.hint {
		k.hint[i] = g[i] ^ dk.id[i]
	}
	t := knockBlock(newKnockBlock(dk.k[:]), &k.nonce, knockTagPad)
	copy(k.tag[:], t[:])
	return string(appendKnockName(nil, k)), nil
}

// rebuild makes the table cover keys for the current epoch and its
// neighbours (clock skew of up to one epoch). Secrets, derived keys and
// replay entries of keys no longer admissible, or of epochs no longer
// accepted, are dropped.
func (kn *knocker) rebuild(keys []addressing.PublicKey) {
	epoch := knockEpochAt(kn.now())
	table := make(map[int64]map[knockID]knockKey, 3)
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
			slot := knockSlot{k, e}
			kk, ok := kn.acceptK[slot]
			if !ok {
				kk = knockKeyFor(s, k, kn.self, e)
				kk.peer = k
				kn.acceptK[slot] = kk
			}
			if table[e] == nil {
				table[e] = make(map[knockID]knockKey, len(keys))
			}
			table[e][kk.id] = kk // ids are 64 bits: a collision (never seen) refuses one of the two
		}
	}
	for k := range kn.secrets {
		if !keep[k] {
			delete(kn.secrets, k)
		}
	}
	for sl := range kn.acceptK {
		if !keep[sl.peer] || sl.epoch < epoch-1 || sl.epoch > epoch+1 {
			delete(kn.acceptK, sl)
		}
	}
	for sl := range kn.seen {
		if !keep[sl.peer] || sl.epoch < epoch-1 {
			delete(kn.seen, sl)
		}
	}
	for p, dk := range kn.dialK.All() {
		if dk.epoch < epoch-1 {
			kn.dialK.Delete(p)
		}
	}
	kn.table, kn.epoch, kn.keys = table, epoch, keys
}

// refresh rebuilds the table when the epoch has moved on.
func (kn *knocker) refresh() {
	kn.mu.Lock()
	stale := kn.epoch != knockEpochAt(kn.now())
	keys := kn.keys
	kn.mu.Unlock()
	if stale {
		kn.rebuild(keys)
	}
}

// accept checks a knock server name and returns the peer it knocks for. A
// name it accepts once is refused ever after (within its epochs, which is
// as long as it would be valid). Two AES blocks and a map lookup, however
// many peers we admit.
func (kn *knocker) accept(name string) (addressing.PublicKey, bool) {
	k, ok := parseKnockName(name)
	if !ok {
		return addressing.PublicKey{}, false
	}
	g := knockBlock(kn.group, &k.nonce, knockHintPad)
	var id knockID
	for i := range id {
		id[i] = g[i] ^ k.hint[i]
	}
	kn.mu.Lock()
	epoch := kn.epoch + int64(int8(k.v-byte(kn.epoch))) // the epoch of v nearest to ours
	kk, ok := kn.table[epoch][id]                       // none outside e-1..e+1
	kn.mu.Unlock()
	if !ok {
		return addressing.PublicKey{}, false
	}
	t := knockBlock(kk.k, &k.nonce, knockTagPad)
	if subtle.ConstantTimeCompare(t[:knockTagLen], k.tag[:]) != 1 {
		return addressing.PublicKey{}, false
	}
	slot := knockSlot{kk.peer, epoch}
	kn.mu.Lock()
	defer kn.mu.Unlock()
	seen := kn.seen[slot]
	if _, replay := seen[k.nonce]; replay || len(seen) >= maxKnocksPerEpoch {
		kn.replays.Add(1)
		return addressing.PublicKey{}, false
	}
	if seen == nil {
		seen = make(map[[knockNonceLen]byte]struct{})
		kn.seen[slot] = seen
	}
	seen[k.nonce] = struct{}{}
	return kk.peer, true
}

// serverTLS is the listeners' TLS config: the trust gate, with the knock
// checked first (before any key exchange) and bound to the certificate.
func (n *Node) serverTLS() *tls.Config {
	c := certs.ServerConfig(n.cert, alpn, n.gate)
	verify := c.VerifyConnection
	c.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		want, ok := n.knock.accept(h.ServerName)
		if !ok {
			n.stats.knocksRefused.Add(1)
			n.kickNetRefresh() // a member whose Join we have not heard of yet?
			return nil, errKnock
		}
		// The knock is spent: this handshake's certificate must carry the
		// key it named.
		cc := c.Clone()
		cc.GetConfigForClient = nil
		cc.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := verify(cs); err != nil {
				return err
			}
			k, err := certs.PeerKey(cs)
			if err != nil {
				return err
			}
			if k != want {
				return errKnock
			}
			return nil
		}
		return cc, nil
	}
	c.VerifyConnection = func(tls.ConnectionState) error {
		return errKnock // every handshake goes through GetConfigForClient's config
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
