package rendezvous

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/trustdb"
)

// TrustReplayWindow is how long the replay cache remembers a trust message
// (by its time, plus trustdb.MaxClockSkew): a second copy within it is
// refused with proto.CodeReplay. Only a message's own sender can send it
// (it must be signed by the connection's key), and an older copy is
// harmless: a request re-creates a pending request its target's node
// refuses as a replay, an approve or reject finds no pending request, and a
// revoke never undoes consent given after it. So the cache holds at most
// this window's messages instead of trustdb.MaxMessageAge's (30 days).
const TrustReplayWindow = 10 * time.Minute

// trustSend relays a signed trust message from the agent with key from,
// whose connection comes from source prefix src. The answer is returned;
// after, if not nil, must run once the answer has been written (it wakes
// the recipient's session: waking it before would let the target's
// existence show in the answer's timing).
//
// Every message is parsed, verified, checked to be signed by the sender's
// own (TLS-authenticated) key, within its time window and never seen before
// (the replay cache is in the store, in the same transaction as the effect).
//
// A request is answered OK whatever happens to it: delivered, held for a
// target that does not exist yet, dropped because a limit is reached, after
// the same store operations in every case (see pending.go). The requester
// learns nothing about the target (REQ-10, REQ-11). Approve, reject and
// revoke are sent by agents that already know their peer, so they get
// precise errors.
func (s *Server) trustSend(from addressing.PublicKey, src netip.Prefix, raw []byte) (resp proto.Message, after func()) {
	m, err := s.checkTrustMessage(from, raw, time.Now())
	if err != nil {
		s.stats.trustRefused.Add(1)
		return &proto.Error{Code: proto.CodeBadMessage, Text: err.Error()}, nil
	}
	now := time.Now()
	var wake []addressing.PublicKey
	var unpaired []addressing.PublicKey // the peer whose pair with from was deleted
	err = s.store.Update(func(tx Tx) error {
		wake = wake[:0]
		unpaired = unpaired[:0]
		seen, err := tx.SeeNonce(from, m.Nonce, m.Time)
		if err != nil {
			return err
		}
		if seen {
			return ErrReplay
		}
		switch m.Kind {
		case trustdb.KindRequest:
			return s.applyRequest(tx, m, raw, src, now, &wake)
		case trustdb.KindApprove, trustdb.KindReject:
			return s.applyAnswer(tx, m, raw, now, &wake)
		case trustdb.KindRevoke:
			return s.applyRevoke(tx, m, raw, now, &wake, &unpaired)
		}
		return fmt.Errorf("%w: kind %s", ErrBadMessage, m.Kind)
	})
	if err != nil {
		if errors.Is(err, ErrReplay) || errors.Is(err, ErrNoRequest) || errors.Is(err, ErrBadMessage) {
			s.stats.trustRefused.Add(1)
		}
		return s.errorAnswer("trust "+m.Kind.String(), err), nil
	}
	s.stats.trustMessages.Add(1)
	// The pair is gone: its relay sessions end now, not at their idle
	// timeout (after the commit, so the broker's second check sees it).
	for _, k := range unpaired {
		if s.relay != nil {
			s.relay.ClosePair(from, k)
		}
	}
	return &proto.OK{}, func() {
		for _, k := range wake {
			if m.Kind == trustdb.KindRequest {
				s.wakeSoon(k)
			} else {
				s.wake(k)
			}
		}
	}
}

// checkTrustMessage parses and verifies raw as a message from key from.
func (s *Server) checkTrustMessage(from addressing.PublicKey, raw []byte, now time.Time) (*trustdb.Message, error) {
	m, err := trustdb.ParseMessage(raw)
	if err != nil {
		return nil, errors.New("malformed trust message")
	}
	if err := m.Verify(); err != nil {
		return nil, errors.New("bad signature")
	}
	if m.From != from {
		return nil, errors.New("not signed by the connection's key")
	}
	if m.Time.Before(now.Add(-trustdb.MaxMessageAge)) || m.Time.After(now.Add(trustdb.MaxClockSkew)) {
		return nil, errors.New("message time out of range")
	}
	return m, nil
}

// applyRequest admits a request for its target (see pending.go): the key
// its name resolves to, or the held key of the name. Nothing in it depends
// on which, and it never fails for a reason that depends on the target.
func (s *Server) applyRequest(tx Tx, m *trustdb.Message, raw []byte, src netip.Prefix, now time.Time, wake *[]addressing.PublicKey) error {
	target := heldKey(m.To)
	k, ok, err := resolve(tx, m.To)
	if err != nil {
		return err
	}
	if ok {
		target = k
	}
	if target == m.From {
		return nil
	}
	member, err := shareNetwork(tx, m.From, target)
	if err != nil {
		return err
	}
	p := PendingRequest{Target: target, Requester: m.From, Nonce: m.Nonce, Time: m.Time, Msg: raw, Source: src, Member: member}
	if _, err := s.admitPending(tx, p, now); err != nil {
		return err
	}
	// Woken even if dropped or held (a held key has no session): the same
	// work either way, after the answer.
	*wake = append(*wake, target)
	return nil
}

// applyAnswer handles an approve or reject from the target of a pending
// request: the request must exist and its nonce must be ReplyTo. An approve
// records the pair with both signed messages. Either is queued for the
// requester.
func (s *Server) applyAnswer(tx Tx, m *trustdb.Message, raw []byte, now time.Time, wake *[]addressing.PublicKey) error {
	a, ok := m.To.Addr()
	if !ok {
		return fmt.Errorf("%w: %s must name an address", ErrBadMessage, m.Kind)
	}
	requester, ok, err := tx.AgentByNode(a.Node())
	if err != nil {
		return err
	}
	if !ok {
		return ErrNoRequest
	}
	p, ok, err := tx.Pending(m.From, requester)
	if err != nil {
		return err
	}
	if !ok || p.Nonce != m.ReplyTo {
		return ErrNoRequest
	}
	if err := tx.DeletePending(m.From, requester); err != nil {
		return err
	}
	if m.Kind == trustdb.KindReject {
		// A rejection is never passed on: until the target approves, the
		// requester must not learn that it exists (REQ-10/11), and a
		// rejection would tell it. To the requester a rejected request
		// looks exactly like one never answered.
		return nil
	}
	if n, err := tx.MailCount(requester); err != nil {
		return err
	} else if n >= s.limits.MaxMailbox {
		return fmt.Errorf("%w: requester's mailbox is full", ErrLimit)
	}
	err = tx.PutPair(TrustPair{A: requester, B: m.From, Request: p.Msg, Approve: raw, Created: now})
	if err != nil {
		return err
	}
	if _, err := tx.Enqueue(requester, raw, now); err != nil {
		return err
	}
	*wake = append(*wake, requester)
	return nil
}

// applyRevoke drops the pair (and any pending request either way) between
// the sender and the addressee and queues the revoke for the addressee,
// unless nothing it knows of the sender needs it: a request of the sender's
// that was never delivered is simply withdrawn. With nothing between them it
// does nothing and still succeeds. A revoke older than the sender's own
// consent (its request or approve of the pair, its pending request) does
// not undo that consent. The addressee of a deleted pair is added to
// unpaired. An addressee that does not exist is looked up under its held
// key (pending.go), with the same store operations, so the answer's timing
// says nothing about it either.
func (s *Server) applyRevoke(tx Tx, m *trustdb.Message, raw []byte, now time.Time, wake, unpaired *[]addressing.PublicKey) error {
	a, ok := m.To.Addr()
	if !ok {
		return fmt.Errorf("%w: revoke must name an address", ErrBadMessage)
	}
	peer := heldKey(addressing.TargetAddr(a))
	k, ok, err := tx.AgentByNode(a.Node())
	if err != nil {
		return err
	}
	if ok {
		peer = k
	}
	if peer == m.From {
		return nil
	}
	pair, paired, err := tx.Pair(m.From, peer)
	if err != nil {
		return err
	}
	outReq, out, err := tx.Pending(peer, m.From)
	if err != nil {
		return err
	}
	inReq, in, err := tx.Pending(m.From, peer)
	if err != nil {
		return err
	}
	paired = paired && !consentAfter(pair, m)
	out = out && !outReq.Time.After(m.Time)
	in = in && !inReq.Time.After(m.Time)
	if !paired && !out && !in {
		return nil
	}
	tell := paired || in
	if out {
		// Withdrawn before delivery: the peer never needs to hear of it.
		queued := false
		if outReq.MailID != 0 {
			if queued, err = tx.Ack(peer, outReq.MailID); err != nil {
				return err
			}
		}
		tell = tell || !queued
		if err := tx.DeletePending(peer, m.From); err != nil {
			return err
		}
	}
	if in {
		if err := tx.DeletePending(m.From, peer); err != nil {
			return err
		}
	}
	if !tell {
		return nil
	}
	if n, err := tx.MailCount(peer); err != nil {
		return err
	} else if n >= s.limits.MaxMailbox {
		if paired {
			return fmt.Errorf("%w: peer's mailbox is full", ErrLimit)
		}
		s.stats.mailboxDropped.Add(1)
		return nil
	}
	if paired {
		if err := tx.DeletePair(m.From, peer); err != nil {
			return err
		}
		*unpaired = append(*unpaired, peer)
	}
	if _, err := tx.Enqueue(peer, raw, now); err != nil {
		return err
	}
	*wake = append(*wake, peer)
	return nil
}

// consentAfter reports whether revoke r's sender consented to pair p after
// r's time (its request or approve is newer): a stale revoke.
func consentAfter(p TrustPair, r *trustdb.Message) bool {
	own := p.Approve
	if p.A == r.From {
		own = p.Request
	}
	m, err := trustdb.ParseMessage(own)
	return err == nil && m.Time.After(r.Time)
}
