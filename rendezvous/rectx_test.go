package rendezvous

// Generated from the Tx interface (store.go, netstore.go) for
// TestTrustRequestSameWork: a Tx that logs every call.

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/trustdb"
)

var (
	_ = netip.Prefix{}
	_ = time.Time{}
	_ = trustdb.NonceSize
)

type recTx struct {
	tx  Tx
	log *[]string
}

func (rt recTx) note(name string, args ...any) {
	s := name
	for _, a := range args {
		s += " " + shape(a)
	}
	*rt.log = append(*rt.log, s)
}

// shape describes an argument by its kind and size, not its value.
func shape(a any) string {
	switch v := a.(type) {
	case []byte:
		return fmt.Sprintf("bytes(%d)", len(v))
	case string:
		return fmt.Sprintf("string(%d)", len(v))
	case PendingRequest:
		return fmt.Sprintf("pending(msg %d, member %v, source %v)", len(v.Msg), v.Member, v.Source.IsValid())
	case AgentRecord:
		return fmt.Sprintf("agent(host %d, locators %d)", len(v.Hostname), len(v.Locators))
	case int:
		return fmt.Sprint(v)
	}
	return fmt.Sprintf("%T", a)
}

func (rt recTx) Agent(k addressing.PublicKey) (AgentRecord, bool, error) {
	rt.note("Agent", k)
	return rt.tx.Agent(k)
}

func (rt recTx) AgentByNode(n addressing.NodeID) (addressing.PublicKey, bool, error) {
	rt.note("AgentByNode", n)
	return rt.tx.AgentByNode(n)
}

func (rt recTx) AgentByHostname(h string) (addressing.PublicKey, bool, error) {
	rt.note("AgentByHostname", h)
	return rt.tx.AgentByHostname(h)
}

func (rt recTx) AgentCount() (int, error) {
	rt.note("AgentCount")
	return rt.tx.AgentCount()
}

func (rt recTx) AgentsFrom(src netip.Prefix) (int, error) {
	rt.note("AgentsFrom", src)
	return rt.tx.AgentsFrom(src)
}

func (rt recTx) PutAgent(r AgentRecord) error {
	rt.note("PutAgent", r)
	return rt.tx.PutAgent(r)
}

func (rt recTx) DeleteAgent(k addressing.PublicKey) error {
	rt.note("DeleteAgent", k)
	return rt.tx.DeleteAgent(k)
}

func (rt recTx) IdleAgents(before time.Time, max int) ([]addressing.PublicKey, error) {
	rt.note("IdleAgents", before, max)
	return rt.tx.IdleAgents(before, max)
}

func (rt recTx) ServerKey() (addressing.PublicKey, bool, error) {
	rt.note("ServerKey")
	return rt.tx.ServerKey()
}

func (rt recTx) PutServerKey(k addressing.PublicKey) error {
	rt.note("PutServerKey", k)
	return rt.tx.PutServerKey(k)
}

func (rt recTx) SeeNonce(from addressing.PublicKey, nonce [trustdb.NonceSize]byte, t time.Time) (seen bool, err error) {
	rt.note("SeeNonce", from, nonce, t)
	return rt.tx.SeeNonce(from, nonce, t)
}

func (rt recTx) Pending(target addressing.PublicKey, requester addressing.PublicKey) (PendingRequest, bool, error) {
	rt.note("Pending", target, requester)
	return rt.tx.Pending(target, requester)
}

func (rt recTx) Pendings(target addressing.PublicKey, max int) ([]PendingRequest, error) {
	rt.note("Pendings", target, max)
	return rt.tx.Pendings(target, max)
}

func (rt recTx) PendingQuota(requester addressing.PublicKey, src netip.Prefix) (PendingQuota, error) {
	rt.note("PendingQuota", requester, src)
	return rt.tx.PendingQuota(requester, src)
}

func (rt recTx) PutPending(p PendingRequest) error {
	rt.note("PutPending", p)
	return rt.tx.PutPending(p)
}

func (rt recTx) DeletePending(target addressing.PublicKey, requester addressing.PublicKey) error {
	rt.note("DeletePending", target, requester)
	return rt.tx.DeletePending(target, requester)
}

func (rt recTx) Pair(a addressing.PublicKey, b addressing.PublicKey) (TrustPair, bool, error) {
	rt.note("Pair", a, b)
	return rt.tx.Pair(a, b)
}

func (rt recTx) PutPair(p TrustPair) error {
	rt.note("PutPair", p)
	return rt.tx.PutPair(p)
}

func (rt recTx) DeletePair(a addressing.PublicKey, b addressing.PublicKey) error {
	rt.note("DeletePair", a, b)
	return rt.tx.DeletePair(a, b)
}

func (rt recTx) Enqueue(to addressing.PublicKey, msg []byte, t time.Time) (id uint64, err error) {
	rt.note("Enqueue", to, msg, t)
	return rt.tx.Enqueue(to, msg, t)
}

func (rt recTx) MailCount(to addressing.PublicKey) (int, error) {
	rt.note("MailCount", to)
	return rt.tx.MailCount(to)
}

func (rt recTx) Mail(to addressing.PublicKey, after uint64, max int) ([]MailItem, error) {
	rt.note("Mail", to, after, max)
	return rt.tx.Mail(to, after, max)
}

func (rt recTx) Ack(to addressing.PublicKey, id uint64) (bool, error) {
	rt.note("Ack", to, id)
	return rt.tx.Ack(to, id)
}

func (rt recTx) Prune(nonces time.Time, records time.Time) (int, error) {
	rt.note("Prune", nonces, records)
	return rt.tx.Prune(nonces, records)
}

func (rt recTx) Network(id addressing.NetworkID) (NetworkRecord, bool, error) {
	rt.note("Network", id)
	return rt.tx.Network(id)
}

func (rt recTx) NetworkByName(name string) (NetworkRecord, bool, error) {
	rt.note("NetworkByName", name)
	return rt.tx.NetworkByName(name)
}

func (rt recTx) CreateNetwork(name string, owner addressing.PublicKey, t time.Time) (NetworkRecord, error) {
	rt.note("CreateNetwork", name, owner, t)
	return rt.tx.CreateNetwork(name, owner, t)
}

func (rt recTx) NetworkMember(id addressing.NetworkID, k addressing.PublicKey) (MemberRecord, bool, error) {
	rt.note("NetworkMember", id, k)
	return rt.tx.NetworkMember(id, k)
}

func (rt recTx) PutNetworkMember(m MemberRecord) error {
	rt.note("PutNetworkMember", m)
	return rt.tx.PutNetworkMember(m)
}

func (rt recTx) DeleteNetworkMember(id addressing.NetworkID, k addressing.PublicKey) error {
	rt.note("DeleteNetworkMember", id, k)
	return rt.tx.DeleteNetworkMember(id, k)
}

func (rt recTx) NetworkMembers(id addressing.NetworkID) ([]MemberRecord, error) {
	rt.note("NetworkMembers", id)
	return rt.tx.NetworkMembers(id)
}

func (rt recTx) AgentNetworks(k addressing.PublicKey) ([]AgentNetwork, error) {
	rt.note("AgentNetworks", k)
	return rt.tx.AgentNetworks(k)
}

func (rt recTx) IsNetworkMember(id addressing.NetworkID, k addressing.PublicKey) (bool, error) {
	rt.note("IsNetworkMember", id, k)
	return rt.tx.IsNetworkMember(id, k)
}
