package network

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/agentnet/agentnet/internal/wire"
	"math"
	"strings"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// Kind is the kind of a document.
type Kind uint8

// Document kinds.
const (
	KindInvite Kind = 1
	KindJoin   Kind = 2
	KindLeave  Kind = 3
	KindRemove Kind = 4
)

// String returns "invite", "join", "leave" or "remove".
func (k Kind) String() string {
	switch k {
	case KindInvite:
		return "invite"
	case KindJoin:
		return "join"
	case KindLeave:
		return "leave"
	case KindRemove:
		return "remove"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Sizes and limits.
const (
	NonceSize    = 16
	SigSize      = ed25519.SignatureSize
	MaxDocSize   = 1024 // bytes of an encoded document; parsers refuse more
	MaxClockSkew = 5 * time.Minute
	// MaxInviteTTL is the longest validity NewInvite accepts.
	MaxInviteTTL = 365 * 24 * time.Hour
)

// TokenPrefix starts every invite token.
const TokenPrefix = "anet-invite:"

const (
	docVersion  = 1
	signDomain  = "agentnet network v1\x00"
	claimDomain = "agentnet network claim v1\x00"
	flagBearer  = 1 << 0
	inviteFixed = 2 + 2 + 1 + 32 + 1 + 32 + 8 + 8 + NonceSize + SigSize // without the name
	exitSize    = 2 + 2 + 32 + 32 + 8 + SigSize
)

// Errors. Every error of this package wraps one of them.
var (
	ErrMalformed     = errors.New("network: malformed document")
	ErrBadSignature  = errors.New("network: bad signature")
	ErrExpired       = errors.New("network: document time out of range")
	ErrWrongInvitee  = errors.New("network: invite is for another key")
	ErrWrongNetwork  = errors.New("network: document is for another network")
	ErrStale         = errors.New("network: document not newer than the membership it would change")
	ErrRemoved       = errors.New("network: member was removed after this invite was issued")
	ErrNotMember     = errors.New("network: not a member")
	ErrOwner         = errors.New("network: the owner cannot join, leave or be removed")
	errTrailingBytes = errors.New("trailing bytes")
)

// Signer signs with an identity key; trustdb.Identity implements it.
type Signer interface {
	PublicKey() addressing.PublicKey
	Sign(msg []byte) []byte
}

// Doc is a parsed document: *Invite, *Join or *Exit.
type Doc interface {
	Kind() Kind
	// AppendBinary appends the canonical encoding, signature included.
	AppendBinary(b []byte) ([]byte, error)
	// Verify checks the signatures and the document's own consistency
	// (not its place in a membership: see Info).
	Verify() error
}

// Info names a network: what a node knows of it out of band.
type Info struct {
	ID    addressing.NetworkID
	Name  string
	Owner addressing.PublicKey
}

// Validate checks the fields.
func (i Info) Validate() error {
	switch {
	case i.ID == 0:
		return fmt.Errorf("%w: network 0 is the global space", ErrMalformed)
	case i.Owner.IsZero():
		return fmt.Errorf("%w: zero owner key", ErrMalformed)
	}
	if err := addressing.ValidateHostname(i.Name); err != nil {
		return fmt.Errorf("%w: name: %w", ErrMalformed, err)
	}
	return nil
}

// --- Invite ---

// Invite is the owner's signed invitation to join a network. It is a plain
// value: not safe for concurrent mutation.
type Invite struct {
	Network addressing.NetworkID
	Name    string
	Owner   addressing.PublicKey
	// Invitee is the key that may join: the member's identity key, or for a
	// bearer invite the capability key whose private half the token carries.
	Invitee addressing.PublicKey
	Bearer  bool
	Issued  time.Time
	Expires time.Time
	Nonce   [NonceSize]byte
	Sig     [SigSize]byte
}

// Kind implements Doc.
func (*Invite) Kind() Kind { return KindInvite }

// Info returns the network the invite is for.
func (v *Invite) Info() Info { return Info{ID: v.Network, Name: v.Name, Owner: v.Owner} }

func (v *Invite) validate() error {
	if err := v.Info().Validate(); err != nil {
		return err
	}
	switch {
	case v.Invitee.IsZero():
		return fmt.Errorf("%w: zero invitee", ErrMalformed)
	case v.Invitee == v.Owner:
		return fmt.Errorf("%w: the owner cannot be invited", ErrOwner)
	case v.Nonce == [NonceSize]byte{}:
		return fmt.Errorf("%w: zero nonce", ErrMalformed)
	case !validTime(v.Issued) || !validTime(v.Expires) || !v.Expires.After(v.Issued):
		return fmt.Errorf("%w: issued/expires out of range", ErrMalformed)
	}
	return nil
}

func (v *Invite) appendBody(b []byte) []byte {
	b = append(b, docVersion, byte(KindInvite))
	b = binary.BigEndian.AppendUint16(b, uint16(v.Network))
	b = append(b, byte(len(v.Name)))
	b = append(b, v.Name...)
	b = append(b, v.Owner[:]...)
	var flags byte
	if v.Bearer {
		flags |= flagBearer
	}
	b = append(b, flags)
	b = append(b, v.Invitee[:]...)
	b = appendTime(b, v.Issued)
	b = appendTime(b, v.Expires)
	return append(b, v.Nonce[:]...)
}

// AppendBinary implements Doc.
func (v *Invite) AppendBinary(b []byte) ([]byte, error) {
	if err := v.validate(); err != nil {
		return b, fmt.Errorf("network: encode invite: %w", err)
	}
	return append(v.appendBody(b), v.Sig[:]...), nil
}

// Verify implements Doc: the owner's signature.
func (v *Invite) Verify() error {
	if err := v.validate(); err != nil {
		return fmt.Errorf("network: verify invite: %w", err)
	}
	if !v.Owner.Verify(signed(v.appendBody), v.Sig[:]) {
		return fmt.Errorf("network: invite to %s: %w", v.Name, ErrBadSignature)
	}
	return nil
}

// Token is an invite as a person passes it on: the invite and, for a bearer
// invite, the capability key (which lets its holder join; keep it secret).
type Token struct {
	Invite *Invite
	Key    ed25519.PrivateKey // nil for a targeted invite
}

// NewInvite makes a token for network info, signed by owner, valid from now
// for ttl (at most MaxInviteTTL). invitee is the identity key that may join;
// zero makes a bearer invite anyone holding the token can use.
func NewInvite(owner Signer, info Info, invitee addressing.PublicKey, now time.Time, ttl time.Duration) (Token, error) {
	if owner == nil || owner.PublicKey() != info.Owner {
		return Token{}, fmt.Errorf("network: new invite: %w: only the owner invites", ErrBadSignature)
	}
	if ttl <= 0 || ttl > MaxInviteTTL {
		return Token{}, fmt.Errorf("network: new invite: %w: ttl %v, want (0, %v]", ErrMalformed, ttl, MaxInviteTTL)
	}
	v := &Invite{
		Network: info.ID, Name: info.Name, Owner: info.Owner, Invitee: invitee,
		Issued: time.Unix(0, now.UnixNano()), Expires: time.Unix(0, now.Add(ttl).UnixNano()),
	}
	var tok Token
	if invitee.IsZero() {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return Token{}, fmt.Errorf("network: new invite: %w", err)
		}
		v.Invitee, _ = addressing.PublicKeyFrom(pub)
		v.Bearer = true
		tok.Key = priv
	}
	if _, err := rand.Read(v.Nonce[:]); err != nil {
		return Token{}, fmt.Errorf("network: new invite: %w", err)
	}
	if err := v.validate(); err != nil {
		return Token{}, fmt.Errorf("network: new invite: %w", err)
	}
	copy(v.Sig[:], owner.Sign(signed(v.appendBody)))
	tok.Invite = v
	return tok, nil
}

// String returns the token text, "anet-invite:…". It includes the
// capability key of a bearer invite.
func (t Token) String() string {
	if t.Invite == nil {
		return ""
	}
	b, err := t.Invite.AppendBinary(nil)
	if err != nil {
		return ""
	}
	if t.Key != nil {
		b = append(b, t.Key.Seed()...)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken parses and verifies a token: the invite must be signed by its
// owner, and for a bearer invite the key must be the invite's capability
// key. It does not check expiry (NewJoin does).
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, TokenPrefix)
	if !ok {
		return Token{}, fmt.Errorf("network: token: %w: want %q…", ErrMalformed, TokenPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(b) < inviteFixed {
		return Token{}, fmt.Errorf("network: token: %w: bad encoding", ErrMalformed)
	}
	n := inviteFixed + int(b[4]) // b[4] is the name length
	if len(b) != n && len(b) != n+ed25519.SeedSize {
		return Token{}, fmt.Errorf("network: token: %w: %d bytes", ErrMalformed, len(b))
	}
	v, err := ParseInvite(b[:n])
	if err != nil {
		return Token{}, fmt.Errorf("network: token: %w", err)
	}
	if err := v.Verify(); err != nil {
		return Token{}, fmt.Errorf("network: token: %w", err)
	}
	tok := Token{Invite: v}
	switch {
	case v.Bearer && len(b) == n+ed25519.SeedSize:
		tok.Key = ed25519.NewKeyFromSeed(b[n:])
		if pub, _ := addressing.PublicKeyFrom(tok.Key.Public().(ed25519.PublicKey)); pub != v.Invitee {
			return Token{}, fmt.Errorf("network: token: %w: capability key does not match the invite", ErrBadSignature)
		}
	case v.Bearer || len(b) != n:
		return Token{}, fmt.Errorf("network: token: %w: capability key missing or unexpected", ErrMalformed)
	}
	return tok, nil
}

// --- Join ---

// Join is a member's acceptance of an invite, signed by the member.
type Join struct {
	Invite Invite
	Member addressing.PublicKey
	Time   time.Time
	// Claim is, for a bearer invite, the capability key's signature over
	// the invite nonce and Member; zero otherwise.
	Claim [SigSize]byte
	Sig   [SigSize]byte
}

// Kind implements Doc.
func (*Join) Kind() Kind { return KindJoin }

// NewJoin makes member's Join for tok's invite at now. It fails with
// ErrWrongInvitee for a targeted invite made for another key, ErrExpired
// after the invite's expiry, ErrOwner for the owner.
func NewJoin(member Signer, tok Token, now time.Time) (*Join, error) {
	if member == nil || tok.Invite == nil {
		return nil, fmt.Errorf("network: new join: %w: nil member or invite", ErrMalformed)
	}
	v := *tok.Invite
	j := &Join{Invite: v, Member: member.PublicKey(), Time: time.Unix(0, now.UnixNano())}
	if v.Bearer {
		if tok.Key == nil {
			return nil, fmt.Errorf("network: new join: %w: bearer invite without its key", ErrMalformed)
		}
		copy(j.Claim[:], ed25519.Sign(tok.Key, claimMsg(&v, j.Member)))
	}
	if err := j.validate(); err != nil {
		return nil, fmt.Errorf("network: new join: %w", err)
	}
	if err := j.checkTimes(); err != nil {
		return nil, fmt.Errorf("network: new join: %w", err)
	}
	copy(j.Sig[:], member.Sign(signed(j.appendBody)))
	return j, nil
}

func claimMsg(v *Invite, member addressing.PublicKey) []byte {
	b := append([]byte(claimDomain), v.Nonce[:]...)
	return append(b, member[:]...)
}

func (j *Join) validate() error {
	if err := j.Invite.validate(); err != nil {
		return err
	}
	switch {
	case j.Member.IsZero():
		return fmt.Errorf("%w: zero member", ErrMalformed)
	case j.Member == j.Invite.Owner:
		return ErrOwner
	case !j.Invite.Bearer && j.Member != j.Invite.Invitee:
		return ErrWrongInvitee
	case j.Invite.Bearer == (j.Claim == [SigSize]byte{}):
		return fmt.Errorf("%w: claim present iff the invite is bearer", ErrMalformed)
	case !validTime(j.Time):
		return fmt.Errorf("%w: time out of range", ErrMalformed)
	}
	return nil
}

func (j *Join) checkTimes() error {
	if j.Time.Before(j.Invite.Issued.Add(-MaxClockSkew)) {
		return fmt.Errorf("%w: join before the invite was issued", ErrExpired)
	}
	if j.Time.After(j.Invite.Expires) {
		return fmt.Errorf("%w: invite expired %s", ErrExpired, j.Invite.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

func (j *Join) appendBody(b []byte) []byte {
	b = append(b, docVersion, byte(KindJoin))
	n := len(b)
	b = append(b, 0, 0)
	b = j.Invite.appendBody(b)
	b = append(b, j.Invite.Sig[:]...)
	binary.BigEndian.PutUint16(b[n:], uint16(len(b)-n-2))
	b = append(b, j.Member[:]...)
	b = appendTime(b, j.Time)
	if j.Invite.Bearer {
		b = append(b, j.Claim[:]...)
	}
	return b
}

// AppendBinary implements Doc.
func (j *Join) AppendBinary(b []byte) ([]byte, error) {
	if err := j.validate(); err != nil {
		return b, fmt.Errorf("network: encode join: %w", err)
	}
	return append(j.appendBody(b), j.Sig[:]...), nil
}

// Verify implements Doc: the invite under its owner's key, the claim, the
// member's signature, the invitee, and Issued - MaxClockSkew <= Time <=
// Expires.
func (j *Join) Verify() error {
	if err := j.validate(); err != nil {
		return fmt.Errorf("network: verify join: %w", err)
	}
	if err := j.Invite.Verify(); err != nil {
		return err
	}
	if j.Invite.Bearer && !j.Invite.Invitee.Verify(claimMsg(&j.Invite, j.Member), j.Claim[:]) {
		return fmt.Errorf("network: join by %s: claim: %w", j.Member.NodeID(), ErrBadSignature)
	}
	if !j.Member.Verify(signed(j.appendBody), j.Sig[:]) {
		return fmt.Errorf("network: join by %s: %w", j.Member.NodeID(), ErrBadSignature)
	}
	if err := j.checkTimes(); err != nil {
		return fmt.Errorf("network: join by %s: %w", j.Member.NodeID(), err)
	}
	return nil
}

// --- Exit (Leave, Remove) ---

// Exit ends a membership: a Leave signed by the member, or a Remove signed
// by the owner.
type Exit struct {
	Remove  bool // a Remove by the owner; false: a Leave by the member
	Network addressing.NetworkID
	Owner   addressing.PublicKey
	Member  addressing.PublicKey
	Time    time.Time
	Sig     [SigSize]byte
}

// Kind implements Doc: KindLeave or KindRemove.
func (e *Exit) Kind() Kind {
	if e.Remove {
		return KindRemove
	}
	return KindLeave
}

// Signer returns the key that signs e: the member for a Leave, the owner
// for a Remove.
func (e *Exit) Signer() addressing.PublicKey {
	if e.Remove {
		return e.Owner
	}
	return e.Member
}

// NewLeave makes member's Leave of network info at now.
func NewLeave(member Signer, info Info, now time.Time) (*Exit, error) {
	return newExit(member, false, info, member.PublicKey(), now)
}

// NewRemove makes the owner's Remove of member from network info at now.
func NewRemove(owner Signer, info Info, member addressing.PublicKey, now time.Time) (*Exit, error) {
	if owner.PublicKey() != info.Owner {
		return nil, fmt.Errorf("network: new remove: %w: only the owner removes", ErrBadSignature)
	}
	return newExit(owner, true, info, member, now)
}

func newExit(s Signer, remove bool, info Info, member addressing.PublicKey, now time.Time) (*Exit, error) {
	e := &Exit{Remove: remove, Network: info.ID, Owner: info.Owner, Member: member, Time: time.Unix(0, now.UnixNano())}
	if err := e.validate(); err != nil {
		return nil, fmt.Errorf("network: new %s: %w", e.Kind(), err)
	}
	copy(e.Sig[:], s.Sign(signed(e.appendBody)))
	return e, nil
}

func (e *Exit) validate() error {
	switch {
	case e.Network == 0:
		return fmt.Errorf("%w: network 0", ErrMalformed)
	case e.Owner.IsZero() || e.Member.IsZero():
		return fmt.Errorf("%w: zero key", ErrMalformed)
	case e.Owner == e.Member:
		return ErrOwner
	case !validTime(e.Time):
		return fmt.Errorf("%w: time out of range", ErrMalformed)
	}
	return nil
}

func (e *Exit) appendBody(b []byte) []byte {
	b = append(b, docVersion, byte(e.Kind()))
	b = binary.BigEndian.AppendUint16(b, uint16(e.Network))
	b = append(b, e.Owner[:]...)
	b = append(b, e.Member[:]...)
	return appendTime(b, e.Time)
}

// AppendBinary implements Doc.
func (e *Exit) AppendBinary(b []byte) ([]byte, error) {
	if err := e.validate(); err != nil {
		return b, fmt.Errorf("network: encode %s: %w", e.Kind(), err)
	}
	return append(e.appendBody(b), e.Sig[:]...), nil
}

// Verify implements Doc: the signature of the member (Leave) or the owner
// (Remove).
func (e *Exit) Verify() error {
	if err := e.validate(); err != nil {
		return fmt.Errorf("network: verify %s: %w", e.Kind(), err)
	}
	if !e.Signer().Verify(signed(e.appendBody), e.Sig[:]) {
		return fmt.Errorf("network: %s of %s: %w", e.Kind(), e.Member.NodeID(), ErrBadSignature)
	}
	return nil
}

// --- Membership rules ---

// CheckJoin verifies j and decides whether it makes its member a member of
// network i, given the member's current Join (nil if not a member) and its
// last Exit (nil if none). See the package doc for the rules.
func (i Info) CheckJoin(j *Join, cur *Join, last *Exit) error {
	if err := j.Verify(); err != nil {
		return err
	}
	if j.Invite.Info() != i {
		return fmt.Errorf("network: join by %s: %w", j.Member.NodeID(), ErrWrongNetwork)
	}
	if cur != nil && !j.Time.After(cur.Time) || last != nil && !j.Time.After(last.Time) {
		return fmt.Errorf("network: join by %s: %w", j.Member.NodeID(), ErrStale)
	}
	if last != nil && last.Remove && !j.Invite.Issued.After(last.Time) {
		return fmt.Errorf("network: join by %s: %w", j.Member.NodeID(), ErrRemoved)
	}
	return nil
}

// CheckExit verifies e and decides whether it ends its member's membership
// of network i, given the member's current Join (nil if not a member) and
// its last Exit (nil if none).
func (i Info) CheckExit(e *Exit, cur *Join, last *Exit) error {
	if err := e.Verify(); err != nil {
		return err
	}
	if e.Network != i.ID || e.Owner != i.Owner {
		return fmt.Errorf("network: %s of %s: %w", e.Kind(), e.Member.NodeID(), ErrWrongNetwork)
	}
	if last != nil && !e.Time.After(last.Time) {
		return fmt.Errorf("network: %s of %s: %w", e.Kind(), e.Member.NodeID(), ErrStale)
	}
	if cur == nil {
		return fmt.Errorf("network: %s of %s: %w", e.Kind(), e.Member.NodeID(), ErrNotMember)
	}
	if !e.Time.After(cur.Time) {
		return fmt.Errorf("network: %s of %s: %w", e.Kind(), e.Member.NodeID(), ErrStale)
	}
	return nil
}

// CheckTime reports ErrExpired unless t is within MaxClockSkew of now: the
// rendezvous takes only fresh documents, so nobody can backdate one.
func CheckTime(t, now time.Time) error {
	if d := t.Sub(now); d > MaxClockSkew || d < -MaxClockSkew {
		return fmt.Errorf("%w: %v from the server's clock", ErrExpired, d.Round(time.Second))
	}
	return nil
}

// --- Parsing ---

// Parse decodes one document strictly (see the package doc). It does NOT
// verify signatures; call Verify, or Info.CheckJoin / CheckExit. The result
// does not alias b. Errors wrap ErrMalformed.
func Parse(b []byte) (Doc, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("network: parse: %w: short", ErrMalformed)
	}
	switch Kind(b[1]) {
	case KindInvite:
		return ParseInvite(b)
	case KindJoin:
		return ParseJoin(b)
	case KindLeave, KindRemove:
		return ParseExit(b)
	}
	return nil, fmt.Errorf("network: parse: %w: unknown kind %d", ErrMalformed, b[1])
}

// ParseInvite decodes an invite; see Parse.
func ParseInvite(b []byte) (*Invite, error) {
	r := reader{wire.NewReader(b)}
	v := r.invite()
	if err := r.done(); err != nil {
		return nil, fmt.Errorf("network: parse invite: %w: %w", ErrMalformed, err)
	}
	if err := v.validate(); err != nil {
		return nil, fmt.Errorf("network: parse invite: %w", err)
	}
	return v, nil
}

// ParseJoin decodes a join; see Parse.
func ParseJoin(b []byte) (*Join, error) {
	r := reader{wire.NewReader(b)}
	r.header(KindJoin)
	n := int(r.Uint16())
	ir := reader{wire.NewReader(r.Next(n))}
	j := &Join{}
	if v := ir.invite(); v != nil {
		j.Invite = *v
	}
	if err := ir.done(); err != nil && r.Err() == nil {
		r.Fail(err)
	}
	r.Copy(j.Member[:])
	j.Time = timeFrom(r.Uint64())
	if j.Invite.Bearer {
		r.Copy(j.Claim[:])
	}
	r.Copy(j.Sig[:])
	if err := r.done(); err != nil {
		return nil, fmt.Errorf("network: parse join: %w: %w", ErrMalformed, err)
	}
	if err := j.validate(); err != nil {
		return nil, fmt.Errorf("network: parse join: %w", err)
	}
	return j, nil
}

// ParseExit decodes a leave or remove; see Parse.
func ParseExit(b []byte) (*Exit, error) {
	r := reader{wire.NewReader(b)}
	e := &Exit{}
	switch k := r.header(0); k {
	case KindLeave:
	case KindRemove:
		e.Remove = true
	default:
		if r.Err() == nil {
			r.Fail(fmt.Errorf("kind %d is not leave or remove", k))
		}
	}
	e.Network = addressing.NetworkID(r.Uint16())
	r.Copy(e.Owner[:])
	r.Copy(e.Member[:])
	e.Time = timeFrom(r.Uint64())
	r.Copy(e.Sig[:])
	if err := r.done(); err != nil {
		return nil, fmt.Errorf("network: parse exit: %w: %w", ErrMalformed, err)
	}
	if err := e.validate(); err != nil {
		return nil, fmt.Errorf("network: parse %s: %w", e.Kind(), err)
	}
	return e, nil
}

// --- helpers ---

// signed returns the bytes a signature covers.
func signed(appendBody func([]byte) []byte) []byte {
	return appendBody(append(make([]byte, 0, 512), signDomain...))
}

func validTime(t time.Time) bool {
	return !t.IsZero() && !t.Before(time.Unix(0, 1)) && !t.After(time.Unix(0, math.MaxInt64))
}

func appendTime(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
}

func timeFrom(v uint64) time.Time {
	if v == 0 || v > math.MaxInt64 {
		return time.Time{}
	}
	return time.Unix(0, int64(v))
}

// reader is wire.Reader plus this package's own helpers.
type reader struct{ *wire.Reader }

// header reads the version and kind; want 0 accepts any kind.
func (r *reader) header(want Kind) Kind {
	if r.Err() == nil && r.Len() > MaxDocSize {
		r.Fail(fmt.Errorf("%d bytes, max %d", r.Len(), MaxDocSize))
	}
	if v := r.Byte(); r.Err() == nil && v != docVersion {
		r.Fail(fmt.Errorf("unknown version %d", v))
	}
	k := Kind(r.Byte())
	if r.Err() == nil && want != 0 && k != want {
		r.Fail(fmt.Errorf("kind %s, want %s", k, want))
	}
	return k
}

func (r *reader) invite() *Invite {
	r.header(KindInvite)
	v := &Invite{}
	v.Network = addressing.NetworkID(r.Uint16())
	v.Name = string(r.Next(int(r.Byte())))
	r.Copy(v.Owner[:])
	flags := r.Byte()
	if r.Err() == nil && flags&^flagBearer != 0 {
		r.Fail(fmt.Errorf("unknown flags %#x", flags))
	}
	v.Bearer = flags&flagBearer != 0
	r.Copy(v.Invitee[:])
	v.Issued = timeFrom(r.Uint64())
	v.Expires = timeFrom(r.Uint64())
	r.Copy(v.Nonce[:])
	r.Copy(v.Sig[:])
	return v
}

// done reports the first error, or trailing bytes.
func (r *reader) done() error {
	if r.Err() != nil {
		return r.Err()
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d", errTrailingBytes, r.Len())
	}
	return nil
}
