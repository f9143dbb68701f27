package rendezvous

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/network"
	"github.com/agentnet/agentnet/rendezvous/proto"
)

// Networks (REQ-2) on the server: creation, the signed membership
// documents (package network) members send, the full lists members ask for,
// and the pushes that keep every online member's list current. The server
// applies the same rules as the nodes (network.Info.CheckJoin, CheckExit)
// and also refuses documents more than network.MaxClockSkew from its clock,
// so nobody backdates a Join or a Leave. Nodes verify every document again
// against the owner key they know: the server cannot add members.

// maxPushDocs is how many changes of one network may wait for a session
// stream; beyond it they are replaced by one full list.
const maxPushDocs = 32

// createNetwork creates a network owned by the agent with key owner.
func (s *Server) createNetwork(owner addressing.PublicKey, name string) proto.Message {
	var rec NetworkRecord
	err := s.store.Update(func(tx Tx) error {
		if n, err := s.networksOf(tx, owner); err != nil {
			return err
		} else if n >= s.limits.MaxNetworksPerAgent {
			return fmt.Errorf("%w: %d networks", ErrLimit, n)
		}
		var err error
		rec, err = tx.CreateNetwork(name, owner, time.Now())
		return err
	})
	if err != nil {
		return s.errorAnswer("create network", err)
	}
	s.stats.networkDocs.Add(1)
	return &proto.NetworkInfo{ID: rec.ID, Name: rec.Name, Owner: rec.Owner}
}

// networksOf counts the networks k owns or is a member of.
func (s *Server) networksOf(tx Tx, k addressing.PublicKey) (int, error) {
	nets, err := tx.AgentNetworks(k)
	n := 0
	for _, an := range nets {
		if an.Member {
			n++
		}
	}
	return n, err
}

// networkSend applies a signed Join, Leave or Remove from the agent with key
// from, who must be its signer.
func (s *Server) networkSend(from addressing.PublicKey, raw []byte) proto.Message {
	doc, err := network.Parse(raw)
	if err != nil {
		s.stats.networkRefused.Add(1)
		return &proto.Error{Code: proto.CodeBadMessage, Text: "malformed network document"}
	}
	now := time.Now()
	var resp proto.Message
	switch d := doc.(type) {
	// Everything that can be checked without the store is checked first, so
	// a document is refused the same way whether its network exists or not;
	// a document that names a network the server does not know, or knows
	// under another name or owner, gets the NotFound frame either way.
	case *network.Join:
		if d.Member != from {
			err = fmt.Errorf("%w: join not signed by the connection's key", ErrBadMessage)
		} else if err = network.CheckTime(d.Time, now); err == nil {
			if err = d.Verify(); err == nil {
				resp, err = s.applyJoin(d, raw)
			}
		}
	case *network.Exit:
		if d.Signer() != from {
			err = fmt.Errorf("%w: %s not signed by the connection's key", ErrBadMessage, d.Kind())
		} else if err = network.CheckTime(d.Time, now); err == nil {
			if err = d.Verify(); err == nil {
				resp, err = s.applyExit(d, raw)
			}
		}
	default:
		err = fmt.Errorf("%w: a %s is not sent to the server", ErrBadMessage, doc.Kind())
	}
	if err != nil {
		s.stats.networkRefused.Add(1)
		return s.networkError(err)
	}
	s.stats.networkDocs.Add(1)
	return resp
}

// networkError maps a refused document to its answer.
func (s *Server) networkError(err error) proto.Message {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, network.ErrNotMember):
		return &proto.NotFound{}
	case errors.Is(err, network.ErrStale):
		return &proto.Error{Code: proto.CodeReplay, Text: "network document not newer than the membership"}
	case errors.Is(err, ErrLimit):
		return &proto.Error{Code: proto.CodeLimit, Text: err.Error()}
	case errors.Is(err, ErrBadMessage), errors.Is(err, network.ErrMalformed), errors.Is(err, network.ErrBadSignature),
		errors.Is(err, network.ErrExpired), errors.Is(err, network.ErrWrongInvitee), errors.Is(err, network.ErrWrongNetwork),
		errors.Is(err, network.ErrRemoved), errors.Is(err, network.ErrOwner):
		return &proto.Error{Code: proto.CodeBadMessage, Text: err.Error()}
	}
	return s.errorAnswer("network document", err)
}

// memberDocs parses a stored member record's documents (stored ones were
// verified when they came in).
func memberDocs(m MemberRecord, had bool) (*network.Join, *network.Exit) {
	if !had {
		return nil, nil
	}
	var j *network.Join
	var e *network.Exit
	if m.Join != nil {
		j, _ = network.ParseJoin(m.Join)
	}
	if m.Exit != nil {
		e, _ = network.ParseExit(m.Exit)
	}
	return j, e
}

// applyJoin records a Join and pushes it to the network's online members.
// Sending the Join that is already the current one again is answered as
// the first time (a retry).
func (s *Server) applyJoin(j *network.Join, raw []byte) (proto.Message, error) {
	var rec NetworkRecord
	var members []addressing.PublicKey
	changed := false
	err := s.store.Update(func(tx Tx) error {
		var ok bool
		var err error
		rec, ok, err = tx.Network(j.Invite.Network)
		if err != nil {
			return err
		}
		info := network.Info{ID: rec.ID, Name: rec.Name, Owner: rec.Owner}
		if !ok || j.Invite.Info() != info {
			return ErrNotFound
		}
		cur, had, err := tx.NetworkMember(rec.ID, j.Member)
		if err != nil {
			return err
		}
		if had && string(cur.Join) == string(raw) {
			return nil // a retry
		}
		curJ, last := memberDocs(cur, had)
		if err := info.CheckJoin(j, curJ, last); err != nil {
			return err
		}
		if !cur.Member() {
			if n, err := s.networksOf(tx, j.Member); err != nil {
				return err
			} else if n >= s.limits.MaxNetworksPerAgent {
				return fmt.Errorf("%w: the agent is in %d networks", ErrLimit, n)
			}
			all, err := tx.NetworkMembers(rec.ID)
			if err != nil {
				return err
			}
			if n := countMembers(all); n >= s.limits.MaxNetworkMembers {
				return fmt.Errorf("%w: the network has %d members", ErrLimit, n)
			}
		}
		err = tx.PutNetworkMember(MemberRecord{Network: rec.ID, Key: j.Member, Join: raw, Exit: cur.Exit, Time: j.Time})
		if err != nil {
			return err
		}
		changed = true
		members, err = networkKeys(tx, rec)
		return err
	})
	if err != nil {
		return nil, err
	}
	if changed {
		s.pushNetworkDoc(rec, members, raw)
	}
	return &proto.NetworkInfo{ID: rec.ID, Name: rec.Name, Owner: rec.Owner}, nil
}

// applyExit records a Leave or Remove, pushes it to the network's online
// members and to the former member, and closes the relay sessions of pairs
// that no longer see each other.
func (s *Server) applyExit(e *network.Exit, raw []byte) (proto.Message, error) {
	var rec NetworkRecord
	var before []addressing.PublicKey
	err := s.store.Update(func(tx Tx) error {
		var ok bool
		var err error
		rec, ok, err = tx.Network(e.Network)
		if err != nil {
			return err
		}
		if !ok || rec.Owner != e.Owner {
			return ErrNotFound
		}
		cur, had, err := tx.NetworkMember(rec.ID, e.Member)
		if err != nil {
			return err
		}
		curJ, last := memberDocs(cur, had)
		if !cur.Member() {
			curJ = nil
		}
		info := network.Info{ID: rec.ID, Name: rec.Name, Owner: rec.Owner}
		if err := info.CheckExit(e, curJ, last); err != nil {
			return err
		}
		if before, err = networkKeys(tx, rec); err != nil {
			return err
		}
		if err := tx.PutNetworkMember(MemberRecord{Network: rec.ID, Key: e.Member, Exit: raw, Time: e.Time}); err != nil {
			return err
		}
		return s.pruneFormer(tx, rec.ID)
	})
	if err != nil {
		return nil, err
	}
	s.pushNetworkDoc(rec, before, raw) // before includes the former member
	if s.relay != nil {
		for _, k := range before {
			if k == e.Member {
				continue
			}
			if ok, err := s.connectableKey(e.Member, k); err == nil && !ok {
				s.relay.ClosePair(e.Member, k)
			}
		}
	}
	return &proto.OK{}, nil
}

// pruneFormer drops the oldest former members' records of network id
// beyond Limits.MaxNetworkMembers.
func (s *Server) pruneFormer(tx Tx, id addressing.NetworkID) error {
	all, err := tx.NetworkMembers(id)
	if err != nil {
		return err
	}
	var former []MemberRecord
	for _, m := range all {
		if !m.Member() {
			former = append(former, m)
		}
	}
	if len(former) <= s.limits.MaxNetworkMembers {
		return nil
	}
	slices.SortFunc(former, func(a, b MemberRecord) int { return a.Time.Compare(b.Time) })
	for _, m := range former[:len(former)-s.limits.MaxNetworkMembers] {
		if err := tx.DeleteNetworkMember(id, m.Key); err != nil {
			return err
		}
	}
	return nil
}

func countMembers(all []MemberRecord) int {
	n := 0
	for _, m := range all {
		if m.Member() {
			n++
		}
	}
	return n
}

// networkKeys returns the owner and the current members of rec.
func networkKeys(tx Tx, rec NetworkRecord) ([]addressing.PublicKey, error) {
	all, err := tx.NetworkMembers(rec.ID)
	if err != nil {
		return nil, err
	}
	keys := []addressing.PublicKey{rec.Owner}
	for _, m := range all {
		if m.Member() {
			keys = append(keys, m.Key)
		}
	}
	return keys, nil
}

// networkMembers answers NetworkMembers from agent k: the pages of the full
// list if k owns network id or is a member, else the NotFound frame.
func (s *Server) networkMembers(k addressing.PublicKey, id addressing.NetworkID) []proto.Message {
	var frames []*proto.NetworkState
	err := s.store.View(func(tx Tx) (err error) {
		frames, err = s.fullList(tx, k, id)
		return err
	})
	if err != nil {
		return []proto.Message{s.errorAnswer("network members", err)}
	}
	if frames == nil {
		return []proto.Message{&proto.NotFound{}}
	}
	out := make([]proto.Message, len(frames))
	for i, f := range frames {
		out[i] = f
	}
	return out
}

// fullList returns network id's full list for agent k in pages, or nil if
// k is not the owner or a member.
func (s *Server) fullList(tx Tx, k addressing.PublicKey, id addressing.NetworkID) ([]*proto.NetworkState, error) {
	ok, err := tx.IsNetworkMember(id, k)
	if err != nil || !ok {
		return nil, err
	}
	rec, ok, err := tx.Network(id)
	if err != nil || !ok {
		return nil, err
	}
	all, err := tx.NetworkMembers(id)
	if err != nil {
		return nil, err
	}
	docs := make([][]byte, 0, len(all))
	for _, m := range all {
		if m.Member() {
			docs = append(docs, m.Join)
		} else {
			docs = append(docs, m.Exit)
		}
	}
	pages := pageDocs(rec, docs)
	pages[0].First = true
	pages[len(pages)-1].Last = true
	return pages, nil
}

// pageDocs packs docs into as few NetworkState frames as fit proto.MaxBody
// (at least one, possibly empty).
func pageDocs(rec NetworkRecord, docs [][]byte) []*proto.NetworkState {
	head := 2 + 1 + len(rec.Name) + addressing.PublicKeySize + 1 + 2
	page := &proto.NetworkState{ID: rec.ID, Name: rec.Name, Owner: rec.Owner}
	pages := []*proto.NetworkState{page}
	size := head
	for _, d := range docs {
		if size+2+len(d) > proto.MaxBody {
			page = &proto.NetworkState{ID: rec.ID, Name: rec.Name, Owner: rec.Owner}
			pages = append(pages, page)
			size = head
		}
		page.Docs = append(page.Docs, d)
		size += 2 + len(d)
	}
	return pages
}

// --- pushes on the session stream ---

// netPusher holds the network frames waiting for one session stream:
// per network, changes (documents) or the need for a full list. It is
// bounded: more than maxPushDocs changes of a network become a full list.
type netPusher struct {
	wake chan struct{} // capacity 1

	mu      sync.Mutex
	order   []addressing.NetworkID // networks with something pending, oldest first
	pending map[addressing.NetworkID]*netPush
}

type netPush struct {
	rec  NetworkRecord
	full bool     // send what the agent should know now (see writeNetworkPushes)
	docs [][]byte // changes to send, if not full
}

func newNetPusher() *netPusher {
	return &netPusher{wake: make(chan struct{}, 1), pending: make(map[addressing.NetworkID]*netPush)}
}

func (p *netPusher) entryLocked(rec NetworkRecord) *netPush {
	e := p.pending[rec.ID]
	if e == nil {
		e = &netPush{rec: rec}
		p.pending[rec.ID] = e
		p.order = append(p.order, rec.ID)
	}
	return e
}

func (p *netPusher) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// add queues a change of network rec.
func (p *netPusher) add(rec NetworkRecord, doc []byte) {
	p.mu.Lock()
	e := p.entryLocked(rec)
	if !e.full {
		if len(e.docs) >= maxPushDocs {
			e.full, e.docs = true, nil
		} else {
			e.docs = append(e.docs, doc)
		}
	}
	p.mu.Unlock()
	p.signal()
}

// full queues a full list of network id.
func (p *netPusher) full(id addressing.NetworkID) {
	p.mu.Lock()
	e := p.entryLocked(NetworkRecord{ID: id})
	e.full, e.docs = true, nil
	p.mu.Unlock()
	p.signal()
}

func (p *netPusher) take() []*netPush {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*netPush, 0, len(p.order))
	for _, id := range p.order {
		out = append(out, p.pending[id])
	}
	p.order = nil
	clear(p.pending)
	return out
}

// pushNetworkDoc queues doc, a change of network rec, for the online
// sessions of keys.
func (s *Server) pushNetworkDoc(rec NetworkRecord, keys []addressing.PublicKey, doc []byte) {
	s.mu.Lock()
	var sessions []*session
	for _, k := range keys {
		if sess := s.sessions[k]; sess != nil {
			sessions = append(sessions, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.net.add(rec, doc)
	}
}

// queueNetworkSync queues, for a session that just registered, what its
// agent should know of every network it owns, is in, or was in.
func (s *Server) queueNetworkSync(sess *session) {
	var nets []AgentNetwork
	err := s.store.View(func(tx Tx) (err error) {
		nets, err = tx.AgentNetworks(sess.c.key)
		return err
	})
	if err != nil {
		s.stats.storeErrors.Add(1)
		s.log.Error("rendezvous: read agent networks", "err", err)
		return
	}
	for _, an := range nets {
		sess.net.full(an.ID)
	}
}

// writeNetworkPushes writes the session's pending network frames; false if
// the stream failed. A full list goes to a member; a former member gets the
// Leave or Remove that ended its membership.
func (s *Server) writeNetworkPushes(sess *session, str *quic.Stream, buf []byte) ([]byte, bool) {
	for _, e := range sess.net.take() {
		var frames []*proto.NetworkState
		if e.full {
			err := s.store.View(func(tx Tx) error {
				var err error
				if frames, err = s.fullList(tx, sess.c.key, e.rec.ID); err != nil || frames != nil {
					return err
				}
				m, had, err := tx.NetworkMember(e.rec.ID, sess.c.key)
				if err != nil || !had || m.Exit == nil || m.Member() {
					return err
				}
				rec, ok, err := tx.Network(e.rec.ID)
				if ok {
					frames = pageDocs(rec, [][]byte{m.Exit})
				}
				return err
			})
			if err != nil {
				s.stats.storeErrors.Add(1)
				s.log.Error("rendezvous: read network", "err", err)
				continue
			}
		} else {
			frames = pageDocs(e.rec, e.docs)
		}
		for _, f := range frames {
			var err error
			if buf, err = proto.AppendMessage(buf[:0], f); err != nil {
				continue
			}
			str.SetWriteDeadline(time.Now().Add(requestTimeout))
			if _, err := str.Write(buf); err != nil {
				return buf, false
			}
			s.stats.networkPushes.Add(1)
		}
	}
	return buf, true
}

// canSeeIn is canSee within network n: for n 0 (the global space) a trust
// pair or a shared network; otherwise both must be members of n.
func (s *Server) canSeeIn(tx Tx, n addressing.NetworkID, a, b addressing.PublicKey) (bool, error) {
	if n == 0 || a == b {
		return s.canSee(tx, a, b)
	}
	if ok, err := tx.IsNetworkMember(n, a); err != nil || !ok {
		return false, err
	}
	return tx.IsNetworkMember(n, b)
}

// shareNetwork reports whether a and b are both members (or owners) of some
// network.
func shareNetwork(tx Tx, a, b addressing.PublicKey) (bool, error) {
	nets, err := tx.AgentNetworks(a)
	if err != nil {
		return false, err
	}
	for _, an := range nets {
		if !an.Member {
			continue
		}
		if ok, err := tx.IsNetworkMember(an.ID, b); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}
