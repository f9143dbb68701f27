package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/rendezvous/proto"
)

// NetworkInfo names a network as the server reports it. A node trusts it
// only as far as the owner's signatures on its documents go.
type NetworkInfo struct {
	ID    addressing.NetworkID
	Name  string
	Owner addressing.PublicKey
}

// NetworkState is a set of signed membership documents (encoded
// network.Join, Leave and Remove) of one network, as the server sent them:
// with Full, the whole list (every current member's Join and former
// members' last Leave or Remove, so members it does not name are gone);
// otherwise changes to apply. The server's word is not proof: verify every
// document. The slices are the callee's.
type NetworkState struct {
	NetworkInfo
	Full bool
	Docs [][]byte
}

// maxListDocs bounds the documents a client collects for one full list.
const maxListDocs = 1 << 16

// CreateNetwork asks the server to create a network named name (hostname
// rules) owned by us. It fails with ErrNetworkTaken if the name is taken,
// ErrLimit if we are in too many networks.
func (c *Client) CreateNetwork(ctx context.Context, name string) (NetworkInfo, error) {
	if err := addressing.ValidateHostname(name); err != nil {
		return NetworkInfo{}, fmt.Errorf("rendezvous: create network: %w", err)
	}
	m, err := c.roundTrip(ctx, &proto.NetworkCreate{Name: name})
	if err != nil {
		return NetworkInfo{}, fmt.Errorf("rendezvous: create network %q: %w", name, err)
	}
	info, ok := m.(*proto.NetworkInfo)
	if !ok {
		return NetworkInfo{}, fmt.Errorf("rendezvous: create network: unexpected answer %s", m.FrameType())
	}
	if info.Owner != c.cfg.Identity.PublicKey() || info.Name != name {
		return NetworkInfo{}, errors.New("rendezvous: create network: the server answered another network")
	}
	return NetworkInfo{ID: info.ID, Name: info.Name, Owner: info.Owner}, nil
}

// JoinNetwork sends our signed Join (an encoded network.Join) and returns
// the network the server recorded it for. It fails with ErrNotFound if the
// server knows no such network, ErrBadMessage for a Join it refuses
// (forged, expired, for another key, for a network we were removed from
// since the invite was issued), ErrReplay for one not newer than our
// membership, ErrLimit over a limit.
func (c *Client) JoinNetwork(ctx context.Context, join []byte) (NetworkInfo, error) {
	m, err := c.networkSend(ctx, join)
	if err != nil {
		return NetworkInfo{}, fmt.Errorf("rendezvous: join network: %w", err)
	}
	info, ok := m.(*proto.NetworkInfo)
	if !ok {
		return NetworkInfo{}, fmt.Errorf("rendezvous: join network: unexpected answer %s", m.FrameType())
	}
	return NetworkInfo{ID: info.ID, Name: info.Name, Owner: info.Owner}, nil
}

// SendExit sends a signed Leave (ours) or Remove (we own the network). It
// fails with ErrNotFound if the member is not one, ErrBadMessage or
// ErrReplay for a document the server refuses.
func (c *Client) SendExit(ctx context.Context, exit []byte) error {
	m, err := c.networkSend(ctx, exit)
	if err != nil {
		return fmt.Errorf("rendezvous: network exit: %w", err)
	}
	if _, ok := m.(*proto.OK); !ok {
		return fmt.Errorf("rendezvous: network exit: unexpected answer %s", m.FrameType())
	}
	return nil
}

func (c *Client) networkSend(ctx context.Context, doc []byte) (proto.Message, error) {
	m, err := c.roundTrip(ctx, &proto.NetworkSend{Doc: doc})
	if err != nil {
		return nil, err
	}
	if _, ok := m.(*proto.NotFound); ok {
		return nil, ErrNotFound
	}
	return m, nil
}

// Members returns the full list of network id. It fails with ErrNotFound
// when the network does not exist and when we are not a member: the
// server's answers are identical.
func (c *Client) Members(ctx context.Context, id addressing.NetworkID) (NetworkState, error) {
	var st NetworkState
	var asm listAssembler
	err := c.roundTripFrames(ctx, &proto.NetworkMembers{ID: id}, func(m proto.Message) (bool, error) {
		switch m := m.(type) {
		case *proto.NotFound:
			return true, ErrNotFound
		case *proto.NetworkState:
			if m.ID != id {
				return true, errors.New("answer for another network")
			}
			if !m.First && asm.st == nil {
				return true, errors.New("list without its first page")
			}
			full, err := asm.add(m)
			if full != nil {
				st = *full
			}
			return full != nil, err
		}
		return true, fmt.Errorf("unexpected answer %s", m.FrameType())
	})
	if err != nil {
		return NetworkState{}, fmt.Errorf("rendezvous: network %d members: %w", id, err)
	}
	return st, nil
}

// listAssembler collects the pages of full lists, one network at a time.
type listAssembler struct {
	st *NetworkState // the list being collected; nil between lists
}

// add takes one NetworkState frame. It returns the state to hand on: the
// whole list after its Last page, a change at once, or nil while a list is
// incomplete.
func (a *listAssembler) add(m *proto.NetworkState) (*NetworkState, error) {
	info := NetworkInfo{ID: m.ID, Name: m.Name, Owner: m.Owner}
	if !m.First && !m.Last && a.st == nil {
		return &NetworkState{NetworkInfo: info, Docs: cloneDocs(m.Docs)}, nil
	}
	if m.First {
		a.st = &NetworkState{NetworkInfo: info, Full: true}
	}
	if a.st == nil || a.st.NetworkInfo != info {
		a.st = nil
		return nil, errors.New("pages of a network list out of order")
	}
	if len(a.st.Docs)+len(m.Docs) > maxListDocs {
		a.st = nil
		return nil, errors.New("network list too long")
	}
	a.st.Docs = append(a.st.Docs, cloneDocs(m.Docs)...)
	if !m.Last {
		return nil, nil
	}
	st := a.st
	a.st = nil
	return st, nil
}

func cloneDocs(ds [][]byte) [][]byte {
	out := make([][]byte, len(ds))
	for i, d := range ds {
		out[i] = append([]byte(nil), d...)
	}
	return out
}

// roundTripFrames sends req on a fresh stream and hands each answer frame
// to next until it reports done (or fails); an Error frame becomes a
// *ServerError.
func (c *Client) roundTripFrames(ctx context.Context, req proto.Message, next func(proto.Message) (done bool, err error)) error {
	b, err := proto.AppendMessage(nil, req)
	if err != nil {
		return err
	}
	b = proto.Pad(b, minRequestSize)
	qc, err := c.readyConn(ctx)
	if err != nil {
		return err
	}
	str, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("rendezvous: open stream: %w", err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(requestTimeout)
	}
	str.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() {
		str.CancelRead(streamCodeDone)
		str.CancelWrite(streamCodeDone)
	})
	defer stop()
	defer str.CancelRead(streamCodeDone)
	if _, err := str.Write(b); err != nil {
		return c.requestErr(ctx, err)
	}
	str.Close()
	for {
		f, err := proto.ReadFrame(str, proto.MaxBody)
		if err != nil {
			return c.requestErr(ctx, err)
		}
		m, err := proto.ParseMessage(f)
		if err != nil {
			return fmt.Errorf("rendezvous: answer: %w", err)
		}
		if e, ok := m.(*proto.Error); ok {
			return &ServerError{Code: e.Code, Text: e.Text}
		}
		if done, err := next(m); done || err != nil {
			return err
		}
	}
}
