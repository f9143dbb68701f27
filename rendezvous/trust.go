package rendezvous

import (
	"errors"
	"fmt"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous/proto"
	"github.com/agentnet/agentnet/trustdb"
)

// trustSend relays a signed trust message from the agent with key from.
//
// Every message is parsed, verified, checked to be signed by the sender's
// own (TLS-authenticated) key, within its time window and never seen before
// (the replay cache is in the store, in the same transaction as the effect).
//
// A request is answered OK whatever happens to it: delivered, dropped
// because the target is over its pending or mailbox limit, or ignored
// because the target does not exist. The requester learns nothing about the
// target (REQ-10, REQ-11). Approve, reject and revoke are sent by agents that
// already know their peer, so they get precise errors.
func (s *Server) trustSend(from addressing.PublicKey, raw []byte) proto.Message {
	m, err := s.checkTrustMessage(from, raw, time.Now())
	if err != nil {
		s.stats.trustRefused.Add(1)
		return &proto.Error{Code: proto.CodeBadMessage, Text: err.Error()}
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
			return s.applyRequest(tx, m, raw, now, &wake)
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
		return s.errorAnswer("trust "+m.Kind.String(), err)
	}
	s.stats.trustMessages.Add(1)
	// The pair is gone: its relay sessions end now, not at their idle
	// timeout (after the commit, so the broker's second check sees it).
	for _, k := range unpaired {
		if s.relay != nil {
			s.relay.ClosePair(from, k)
		}
	}
	for _, k := range wake {
		s.wake(k)
	}
	return &proto.OK{}
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

// applyRequest queues a request in the target's mailbox and remembers it as
// pending, if the target exists, is not the sender, and is under its limits.
// It never fails for a reason that depends on the target.
func (s *Server) applyRequest(tx Tx, m *trustdb.Message, raw []byte, now time.Time, wake *[]addressing.PublicKey) error {
	target, ok, err := resolve(tx, m.To)
	if err != nil || !ok || target == m.From {
		return err
	}
	_, replacing, err := tx.Pending(target, m.From)
	if err != nil {
		return err
	}
	if !replacing {
		n, err := tx.PendingCount(target)
		if err != nil {
			return err
		}
		if n >= s.limits.MaxPendingPerTarget {
			s.stats.requestsDropped.Add(1)
			return nil
		}
	}
	if n, err := tx.MailCount(target); err != nil {
		return err
	} else if n >= s.limits.MaxMailbox {
		s.stats.requestsDropped.Add(1)
		return nil
	}
	// One pending request per pair: a newer request replaces the older one
	// (the target's trustdb answers the newest).
	err = tx.PutPending(PendingRequest{Target: target, Requester: m.From, Nonce: m.Nonce, Time: m.Time, Msg: raw})
	if err != nil {
		return err
	}
	if _, err := tx.Enqueue(target, raw, now); err != nil {
		return err
	}
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
// the sender and the addressee and queues the revoke for the addressee. With
// nothing between them it does nothing and still succeeds. The addressee of
// a deleted pair is added to unpaired.
func (s *Server) applyRevoke(tx Tx, m *trustdb.Message, raw []byte, now time.Time, wake, unpaired *[]addressing.PublicKey) error {
	a, ok := m.To.Addr()
	if !ok {
		return fmt.Errorf("%w: revoke must name an address", ErrBadMessage)
	}
	peer, ok, err := tx.AgentByNode(a.Node())
	if err != nil || !ok || peer == m.From {
		return err
	}
	_, paired, err := tx.Pair(m.From, peer)
	if err != nil {
		return err
	}
	_, out, err := tx.Pending(peer, m.From)
	if err != nil {
		return err
	}
	_, in, err := tx.Pending(m.From, peer)
	if err != nil {
		return err
	}
	if !paired && !out && !in {
		return nil
	}
	if n, err := tx.MailCount(peer); err != nil {
		return err
	} else if n >= s.limits.MaxMailbox {
		if paired {
			return fmt.Errorf("%w: peer's mailbox is full", ErrLimit)
		}
		s.stats.mailboxDropped.Add(1)
		return errors.Join(tx.DeletePending(peer, m.From), tx.DeletePending(m.From, peer))
	}
	if err := errors.Join(tx.DeletePair(m.From, peer), tx.DeletePending(peer, m.From), tx.DeletePending(m.From, peer)); err != nil {
		return err
	}
	if _, err := tx.Enqueue(peer, raw, now); err != nil {
		return err
	}
	*wake = append(*wake, peer)
	if paired {
		*unpaired = append(*unpaired, peer)
	}
	return nil
}
