package rendezvous

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/trustdb"
)

// BoltStore is the default Store: one bbolt file. Every Update is one
// durable (fsynced) bbolt transaction.
//
// Layout (bucket: key → value; integers big endian):
//
//	agents:     public key → agent record
//	agentseen:  last seen (8) ‖ public key → empty       (expiry index)
//	agentsrc:   source prefix → uint64 agents created from it
//	nodes:      NodeID → public key
//	hostnames:  hostname → public key
//	nonces2:    message time (8) ‖ sender key ‖ nonce → 1  (replay cache, pruned by time)
//	pending:    target key ‖ requester key → pending request
//	pendingby:  requester key → uint64 pending requests it made
//	pendingsrc: source prefix → uint64 pending requests made from it
//	pairs:      lower key ‖ higher key → trust pair
//	mailbox:    recipient key ‖ uint64 id → time ‖ message   (ids from the bucket's sequence)
//	mailcount:  recipient key → uint64 messages
//	meta:       "agent_count", "pending_total" → uint64, "server_key" → public key,
//	            "layout" → uint8
//
// and the network buckets drawn in boltnet.go. A source prefix is
// netip.Prefix's binary form. Stores of layout 1 (nested mail buckets, a
// replay cache keyed by sender, no counts) are converted when opened.
type BoltStore struct {
	db     *bolt.DB
	remove string // file to delete on Close ("" = keep)
}

var (
	bucketAgents     = []byte("agents")
	bucketAgentSeen  = []byte("agentseen")
	bucketAgentSrc   = []byte("agentsrc")
	bucketNodes      = []byte("nodes")
	bucketHostnames  = []byte("hostnames")
	bucketNonces     = []byte("nonces2")
	bucketPending    = []byte("pending")
	bucketPendingBy  = []byte("pendingby")
	bucketPendingSrc = []byte("pendingsrc")
	bucketPairs      = []byte("pairs")
	bucketMailbox    = []byte("mailbox")
	bucketMailCount  = []byte("mailcount")
	bucketMeta       = []byte("meta")

	// Buckets of layout 1.
	bucketNoncesV1 = []byte("nonces")
	bucketMailV1   = []byte("mail")

	metaAgentCount   = []byte("agent_count")
	metaPendingTotal = []byte("pending_total")
	metaServerKey    = []byte("server_key")
	metaLayout       = []byte("layout")
)

// storeLayout is the layout OpenBoltStore converts older stores to.
const storeLayout = 2

// recordVersion is the first byte of every encoded record; decoders also
// accept version 1 (agent and pending records without source fields).
const recordVersion = 2

// OpenBoltStore opens (creating if needed) the store at path. A second opener
// of the same file fails after a short timeout.
//
// An existing file is checked before anything is written to it (see
// boltcheck.go: size, meta pages, every page, bbolt's consistency check);
// a damaged one is never opened or overwritten: the error wraps
// ErrStoreDamaged and says how to restore the last good copy (Snapshot).
func OpenBoltStore(path string) (*BoltStore, error) {
	if _, err := os.Stat(path); err == nil {
		if err := verifyBoltStore(path); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("rendezvous: open store %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("rendezvous: open store %s: in use by another process", path)
		}
		return nil, fmt.Errorf("rendezvous: open store %s: %w", path, err)
	}
	db.MaxBatchDelay = batchDelay
	err = db.Update(func(tx *bolt.Tx) error {
		fresh := tx.Bucket(bucketMeta) == nil
		for _, name := range append([][]byte{bucketAgents, bucketAgentSeen, bucketAgentSrc, bucketNodes, bucketHostnames,
			bucketNonces, bucketPending, bucketPendingBy, bucketPendingSrc, bucketPairs, bucketMailbox, bucketMailCount,
			bucketMeta}, networkBuckets...) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if v := tx.Bucket(bucketMeta).Get(metaLayout); !fresh && (len(v) != 1 || v[0] < storeLayout) {
			if err := convertLayout1(boltTx{tx}); err != nil {
				return fmt.Errorf("convert from layout 1: %w", err)
			}
		}
		return tx.Bucket(bucketMeta).Put(metaLayout, []byte{storeLayout})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("rendezvous: init store %s: %w", path, err)
	}
	return &BoltStore{db: db}, nil
}

// convertLayout1 converts a store of layout 1: mail from one bucket per
// recipient to the flat mailbox (ids kept; the sequence continues above the
// highest), the counts and the expiry index built from the records, the
// replay cache dropped (its entries are older than any message the new one
// needs to remember, or one prune away from it).
func convertLayout1(t boltTx) error {
	var maxID uint64
	if old := t.b(bucketMailV1); old != nil {
		err := old.ForEachBucket(func(to []byte) error {
			key, ok := addressing.PublicKeyFromSlice(to)
			if !ok {
				return errors.New("corrupt mailbox key")
			}
			return old.Bucket(to).ForEach(func(k, v []byte) error {
				if len(k) != 8 || len(v) < 8 {
					return errors.New("corrupt mailbox")
				}
				id := binary.BigEndian.Uint64(k)
				maxID = max(maxID, id)
				if err := t.b(bucketMailbox).Put(mailKey(key, id), v); err != nil {
					return err
				}
				return addCount(t.b(bucketMailCount), key[:], 1)
			})
		})
		if err != nil {
			return err
		}
		if err := t.tx.DeleteBucket(bucketMailV1); err != nil {
			return err
		}
	}
	if maxID > 0 {
		if err := t.b(bucketMailbox).SetSequence(maxID); err != nil {
			return err
		}
	}
	if t.b(bucketNoncesV1) != nil {
		if err := t.tx.DeleteBucket(bucketNoncesV1); err != nil {
			return err
		}
	}
	c := t.b(bucketPending).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		p, err := t.pendingRecord(k, v)
		if err != nil {
			return err
		}
		if err := t.countPending(p, 1); err != nil {
			return err
		}
	}
	c = t.b(bucketAgents).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		key, ok := addressing.PublicKeyFromSlice(k)
		if !ok {
			return errors.New("corrupt agent key")
		}
		r, err := decodeAgent(key, v)
		if err != nil {
			return err
		}
		if err := t.b(bucketAgentSeen).Put(seenKey(r.LastSeen, key), nil); err != nil {
			return err
		}
	}
	return nil
}

// openTempStore opens a BoltStore in a new temporary file that Close deletes.
func openTempStore() (*BoltStore, error) {
	dir, err := os.MkdirTemp("", "rendezvous-store-")
	if err != nil {
		return nil, fmt.Errorf("rendezvous: temp store: %w", err)
	}
	s, err := OpenBoltStore(filepath.Join(dir, "rendezvous.db"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.remove = dir
	return s, nil
}

// View implements Store.
func (s *BoltStore) View(fn func(Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// Update implements Store.
func (s *BoltStore) Update(fn func(Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// Batch is Update for writes that may share one transaction (and one disk
// sync) with concurrent ones: registrations arriving together commit
// together, at most batchDelay later. fn may run more than once (bbolt
// retries a failed batch one function at a time), so it must not have side
// effects outside the transaction.
func (s *BoltStore) Batch(fn func(Tx) error) error {
	return s.db.Batch(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// batchDelay bounds how long Batch waits for company.
const batchDelay = 2 * time.Millisecond

// Close implements Store.
func (s *BoltStore) Close() error {
	err := s.db.Close()
	if s.remove != "" {
		os.RemoveAll(s.remove)
	}
	return err
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) b(name []byte) *bolt.Bucket { return t.tx.Bucket(name) }

// --- counts ---

func getCount(b *bolt.Bucket, k []byte) int {
	if k == nil {
		return 0
	}
	if v := b.Get(k); len(v) == 8 {
		return int(binary.BigEndian.Uint64(v))
	}
	return 0
}

// addCount adds d to the count under k (nil: none), deleting it at zero.
func addCount(b *bolt.Bucket, k []byte, d int) error {
	if k == nil {
		return nil
	}
	n := getCount(b, k) + d
	if n <= 0 {
		return b.Delete(k)
	}
	return b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// prefixKey is a source prefix's key in the count buckets (nil if invalid).
func prefixKey(p netip.Prefix) []byte {
	if !p.IsValid() {
		return nil
	}
	b, _ := p.MarshalBinary()
	return b
}

// --- agents ---

func (t boltTx) Agent(k addressing.PublicKey) (AgentRecord, bool, error) {
	v := t.b(bucketAgents).Get(k[:])
	if v == nil {
		return AgentRecord{}, false, nil
	}
	r, err := decodeAgent(k, v)
	return r, err == nil, err
}

func (t boltTx) AgentByNode(n addressing.NodeID) (addressing.PublicKey, bool, error) {
	return keyValue(t.b(bucketNodes).Get(n[:]))
}

func (t boltTx) AgentByHostname(h string) (addressing.PublicKey, bool, error) {
	if h == "" {
		return addressing.PublicKey{}, false, nil
	}
	return keyValue(t.b(bucketHostnames).Get([]byte(h)))
}

func keyValue(v []byte) (addressing.PublicKey, bool, error) {
	if v == nil {
		return addressing.PublicKey{}, false, nil
	}
	k, ok := addressing.PublicKeyFromSlice(v)
	if !ok {
		return k, false, errors.New("rendezvous: store: corrupt key index")
	}
	return k, true, nil
}

func (t boltTx) AgentCount() (int, error) {
	v := t.b(bucketMeta).Get(metaAgentCount)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, errors.New("rendezvous: store: corrupt agent count")
	}
	return int(binary.BigEndian.Uint64(v)), nil
}

func (t boltTx) AgentsFrom(src netip.Prefix) (int, error) {
	return getCount(t.b(bucketAgentSrc), prefixKey(src)), nil
}

func seenKey(tm time.Time, k addressing.PublicKey) []byte {
	return append(appendTime(nil, tm), k[:]...)
}

func (t boltTx) PutAgent(r AgentRecord) error {
	node := r.Key.NodeID()
	if k, ok, err := t.AgentByNode(node); err != nil {
		return err
	} else if ok && k != r.Key {
		return ErrNodeIDTaken
	}
	if r.Hostname != "" {
		if k, ok, err := t.AgentByHostname(r.Hostname); err != nil {
			return err
		} else if ok && k != r.Key {
			return ErrHostnameTaken
		}
	}
	old, had, err := t.Agent(r.Key)
	if err != nil {
		return err
	}
	if had && old.Hostname != "" && old.Hostname != r.Hostname {
		if err := t.b(bucketHostnames).Delete([]byte(old.Hostname)); err != nil {
			return err
		}
	}
	if r.Hostname != "" {
		if err := t.b(bucketHostnames).Put([]byte(r.Hostname), r.Key[:]); err != nil {
			return err
		}
	}
	if err := t.b(bucketNodes).Put(node[:], r.Key[:]); err != nil {
		return err
	}
	if had {
		if err := t.b(bucketAgentSeen).Delete(seenKey(old.LastSeen, r.Key)); err != nil {
			return err
		}
		if old.Source != r.Source {
			if err := addCount(t.b(bucketAgentSrc), prefixKey(old.Source), -1); err != nil {
				return err
			}
		}
	}
	if !had || old.Source != r.Source {
		if err := addCount(t.b(bucketAgentSrc), prefixKey(r.Source), 1); err != nil {
			return err
		}
	}
	if !had {
		if err := addCount(t.b(bucketMeta), metaAgentCount, 1); err != nil {
			return err
		}
	}
	if err := t.b(bucketAgentSeen).Put(seenKey(r.LastSeen, r.Key), nil); err != nil {
		return err
	}
	return t.b(bucketAgents).Put(r.Key[:], encodeAgent(r))
}

func (t boltTx) DeleteAgent(k addressing.PublicKey) error {
	r, had, err := t.Agent(k)
	if err != nil || !had {
		return err
	}
	if r.Hostname != "" {
		if owner, ok, _ := t.AgentByHostname(r.Hostname); ok && owner == k {
			if err := t.b(bucketHostnames).Delete([]byte(r.Hostname)); err != nil {
				return err
			}
		}
	}
	node := k.NodeID()
	if owner, ok, _ := t.AgentByNode(node); ok && owner == k {
		if err := t.b(bucketNodes).Delete(node[:]); err != nil {
			return err
		}
	}
	if err := errors.Join(
		t.b(bucketAgentSeen).Delete(seenKey(r.LastSeen, k)),
		addCount(t.b(bucketAgentSrc), prefixKey(r.Source), -1),
		addCount(t.b(bucketMeta), metaAgentCount, -1),
	); err != nil {
		return err
	}
	return t.b(bucketAgents).Delete(k[:])
}

func (t boltTx) IdleAgents(before time.Time, max int) ([]addressing.PublicKey, error) {
	var out []addressing.PublicKey
	c := t.b(bucketAgentSeen).Cursor()
	end := appendTime(nil, before)
	for k, _ := c.First(); k != nil && len(out) < max && bytes.Compare(k[:8], end) < 0; k, _ = c.Next() {
		key, ok := addressing.PublicKeyFromSlice(k[8:])
		if len(k) != 8+addressing.PublicKeySize || !ok {
			return nil, errors.New("rendezvous: store: corrupt agent expiry index")
		}
		out = append(out, key)
	}
	return out, nil
}

// --- server key ---

func (t boltTx) ServerKey() (addressing.PublicKey, bool, error) {
	v := t.b(bucketMeta).Get(metaServerKey)
	if v == nil {
		return addressing.PublicKey{}, false, nil
	}
	k, ok := addressing.PublicKeyFromSlice(v)
	if !ok {
		return k, false, errors.New("rendezvous: store: corrupt server key")
	}
	return k, true, nil
}

func (t boltTx) PutServerKey(k addressing.PublicKey) error {
	return t.b(bucketMeta).Put(metaServerKey, k[:])
}

// --- replay cache ---

func (t boltTx) SeeNonce(from addressing.PublicKey, nonce [trustdb.NonceSize]byte, tm time.Time) (bool, error) {
	k := append(append(appendTime(make([]byte, 0, 8+len(from)+len(nonce)), tm), from[:]...), nonce[:]...)
	b := t.b(bucketNonces)
	if b.Get(k) != nil {
		return true, nil
	}
	return false, b.Put(k, []byte{1})
}

// --- pending requests ---

func pendingKey(target, requester addressing.PublicKey) []byte {
	return append(target[:len(target):len(target)], requester[:]...)
}

func (t boltTx) pendingRecord(k, v []byte) (PendingRequest, error) {
	target, ok1 := addressing.PublicKeyFromSlice(k[:min(len(k), addressing.PublicKeySize)])
	requester, ok2 := addressing.PublicKeyFromSlice(k[min(len(k), addressing.PublicKeySize):])
	if !ok1 || !ok2 {
		return PendingRequest{}, errors.New("rendezvous: store: corrupt pending key")
	}
	return decodePending(target, requester, v)
}

func (t boltTx) Pending(target, requester addressing.PublicKey) (PendingRequest, bool, error) {
	v := t.b(bucketPending).Get(pendingKey(target, requester))
	if v == nil {
		return PendingRequest{}, false, nil
	}
	p, err := decodePending(target, requester, v)
	return p, err == nil, err
}

func (t boltTx) Pendings(target addressing.PublicKey, max int) ([]PendingRequest, error) {
	var out []PendingRequest
	c := t.b(bucketPending).Cursor()
	for k, v := c.Seek(target[:]); k != nil && len(out) < max && bytes.HasPrefix(k, target[:]); k, v = c.Next() {
		p, err := t.pendingRecord(k, v)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (t boltTx) PendingQuota(requester addressing.PublicKey, src netip.Prefix) (PendingQuota, error) {
	return PendingQuota{
		ByRequester: getCount(t.b(bucketPendingBy), requester[:]),
		BySource:    getCount(t.b(bucketPendingSrc), prefixKey(src)),
		Total:       getCount(t.b(bucketMeta), metaPendingTotal),
	}, nil
}

// countPending adds d to the counts p takes part in.
func (t boltTx) countPending(p PendingRequest, d int) error {
	return errors.Join(
		addCount(t.b(bucketPendingBy), p.Requester[:], d),
		addCount(t.b(bucketPendingSrc), prefixKey(p.Source), d),
		addCount(t.b(bucketMeta), metaPendingTotal, d),
	)
}

func (t boltTx) PutPending(p PendingRequest) error {
	k := pendingKey(p.Target, p.Requester)
	if v := t.b(bucketPending).Get(k); v != nil {
		old, err := decodePending(p.Target, p.Requester, v)
		if err != nil {
			return err
		}
		if err := t.countPending(old, -1); err != nil {
			return err
		}
	}
	if err := t.countPending(p, 1); err != nil {
		return err
	}
	return t.b(bucketPending).Put(k, encodePending(p))
}

func (t boltTx) DeletePending(target, requester addressing.PublicKey) error {
	k := pendingKey(target, requester)
	v := t.b(bucketPending).Get(k)
	if v == nil {
		return nil
	}
	old, err := decodePending(target, requester, v)
	if err != nil {
		return err
	}
	if err := t.countPending(old, -1); err != nil {
		return err
	}
	return t.b(bucketPending).Delete(k)
}

// --- pairs ---

func pairKey(a, b addressing.PublicKey) []byte {
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	return append(a[:len(a):len(a)], b[:]...)
}

func (t boltTx) Pair(a, b addressing.PublicKey) (TrustPair, bool, error) {
	v := t.b(bucketPairs).Get(pairKey(a, b))
	if v == nil {
		return TrustPair{}, false, nil
	}
	p, err := decodePair(v)
	return p, err == nil, err
}

func (t boltTx) PutPair(p TrustPair) error {
	return t.b(bucketPairs).Put(pairKey(p.A, p.B), encodePair(p))
}

func (t boltTx) DeletePair(a, b addressing.PublicKey) error {
	return t.b(bucketPairs).Delete(pairKey(a, b))
}

// --- mailboxes ---

func mailKey(to addressing.PublicKey, id uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), to[:]...), id)
}

func (t boltTx) Enqueue(to addressing.PublicKey, msg []byte, tm time.Time) (uint64, error) {
	b := t.b(bucketMailbox)
	// One sequence for every mailbox: ids never repeat for a recipient.
	id, err := b.NextSequence()
	if err != nil {
		return 0, err
	}
	if err := addCount(t.b(bucketMailCount), to[:], 1); err != nil {
		return 0, err
	}
	return id, b.Put(mailKey(to, id), append(appendTime(nil, tm), msg...))
}

func (t boltTx) MailCount(to addressing.PublicKey) (int, error) {
	return getCount(t.b(bucketMailCount), to[:]), nil
}

func (t boltTx) Mail(to addressing.PublicKey, after uint64, max int) ([]MailItem, error) {
	var items []MailItem
	c := t.b(bucketMailbox).Cursor()
	for k, v := c.Seek(mailKey(to, after+1)); k != nil && len(items) < max && bytes.HasPrefix(k, to[:]); k, v = c.Next() {
		if len(k) != addressing.PublicKeySize+8 || len(v) < 8 {
			return nil, errors.New("rendezvous: store: corrupt mailbox")
		}
		items = append(items, MailItem{
			ID:   binary.BigEndian.Uint64(k[addressing.PublicKeySize:]),
			Time: readTime(v),
			Msg:  bytes.Clone(v[8:]),
		})
	}
	return items, nil
}

func (t boltTx) Ack(to addressing.PublicKey, id uint64) (bool, error) {
	k := mailKey(to, id)
	b := t.b(bucketMailbox)
	if b.Get(k) == nil {
		return false, nil
	}
	if err := addCount(t.b(bucketMailCount), to[:], -1); err != nil {
		return false, err
	}
	return true, b.Delete(k)
}

// --- pruning ---

func (t boltTx) Prune(nonces, records time.Time) (int, error) {
	n := 0
	// The replay cache is in time order: delete from the front.
	var dead [][]byte
	end := appendTime(nil, nonces)
	c := t.b(bucketNonces).Cursor()
	for k, _ := c.First(); k != nil && bytes.Compare(k[:min(8, len(k))], end) < 0; k, _ = c.Next() {
		dead = append(dead, bytes.Clone(k))
	}
	for _, k := range dead {
		if err := t.b(bucketNonces).Delete(k); err != nil {
			return n, err
		}
	}
	n += len(dead)

	if records.IsZero() {
		return n, nil
	}
	var old []PendingRequest
	c = t.b(bucketPending).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		p, err := t.pendingRecord(k, v)
		if err != nil {
			return n, err
		}
		if p.Time.Before(records) {
			old = append(old, p)
		}
	}
	for _, p := range old {
		if err := t.DeletePending(p.Target, p.Requester); err != nil {
			return n, err
		}
	}
	n += len(old)

	dead = dead[:0]
	c = t.b(bucketMailbox).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(v) >= 8 && readTime(v).Before(records) {
			dead = append(dead, bytes.Clone(k))
		}
	}
	for _, k := range dead {
		to, _ := addressing.PublicKeyFromSlice(k[:min(len(k), addressing.PublicKeySize)])
		if err := errors.Join(t.b(bucketMailbox).Delete(k), addCount(t.b(bucketMailCount), to[:], -1)); err != nil {
			return n, err
		}
	}
	n += len(dead)
	return n, nil
}

// --- record encodings (all integers big endian) ---

func appendTime(b []byte, t time.Time) []byte {
	var v int64
	if !t.IsZero() {
		v = t.UnixNano()
	}
	return binary.BigEndian.AppendUint64(b, uint64(v))
}

func readTime(b []byte) time.Time {
	v := int64(binary.BigEndian.Uint64(b))
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v)
}

// dec is a bounds-checked cursor over a stored record.
type dec struct {
	b   []byte
	bad bool
}

func (d *dec) next(n int) []byte {
	if d.bad || len(d.b) < n {
		d.bad = true
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) time() time.Time { return readTime(d.next(8)) }
func (d *dec) bytes16() []byte {
	return bytes.Clone(d.next(int(binary.BigEndian.Uint16(d.next(2)))))
}

func (d *dec) err(what string) error {
	if d.bad {
		return fmt.Errorf("rendezvous: store: corrupt %s record", what)
	}
	return nil
}

func appendBytes16(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// agent: version | uint8 len hostname | uint8 count | count × (uint8 len | netip binary | uint16 port) |
// created | last seen | prefix source (version 2)
func encodeAgent(r AgentRecord) []byte {
	b := []byte{recordVersion, byte(len(r.Hostname))}
	b = append(b, r.Hostname...)
	b = append(b, byte(len(r.Locators)))
	for _, ap := range r.Locators {
		ab, _ := ap.Addr().WithZone("").MarshalBinary()
		b = append(b, byte(len(ab)))
		b = append(b, ab...)
		b = binary.BigEndian.AppendUint16(b, ap.Port())
	}
	b = appendTime(b, r.Created)
	b = appendTime(b, r.LastSeen)
	return appendPrefix(b, r.Source)
}

func decodeAgent(k addressing.PublicKey, v []byte) (AgentRecord, error) {
	d := dec{b: v}
	r := AgentRecord{Key: k}
	ver := d.version()
	r.Hostname = string(d.next(int(d.next(1)[0])))
	n := int(d.next(1)[0])
	for range n {
		var a netip.Addr
		if err := a.UnmarshalBinary(d.next(int(d.next(1)[0]))); err != nil {
			d.bad = true
		}
		port := binary.BigEndian.Uint16(d.next(2))
		if d.bad {
			break
		}
		r.Locators = append(r.Locators, netip.AddrPortFrom(a, port))
	}
	r.Created = d.time()
	r.LastSeen = d.time()
	if ver >= 2 {
		r.Source = d.prefix()
	}
	return r, d.err("agent")
}

// pending: version | nonce | time | bytes16 msg | prefix source | uint8 flags (bit 0: member) |
// uint64 mail id (the last three from version 2)
func encodePending(p PendingRequest) []byte {
	b := append([]byte{recordVersion}, p.Nonce[:]...)
	b = appendTime(b, p.Time)
	b = appendBytes16(b, p.Msg)
	b = appendPrefix(b, p.Source)
	var flags byte
	if p.Member {
		flags |= 1
	}
	b = append(b, flags)
	return binary.BigEndian.AppendUint64(b, p.MailID)
}

func decodePending(target, requester addressing.PublicKey, v []byte) (PendingRequest, error) {
	d := dec{b: v}
	p := PendingRequest{Target: target, Requester: requester}
	ver := d.version()
	copy(p.Nonce[:], d.next(trustdb.NonceSize))
	p.Time = d.time()
	p.Msg = d.bytes16()
	if ver >= 2 {
		p.Source = d.prefix()
		p.Member = d.next(1)[0]&1 != 0
		p.MailID = binary.BigEndian.Uint64(d.next(8))
	}
	return p, d.err("pending")
}

// prefix: uint8 length (0: none) | netip.Prefix binary
func appendPrefix(b []byte, p netip.Prefix) []byte {
	if !p.IsValid() {
		return append(b, 0)
	}
	pb, _ := p.MarshalBinary()
	b = append(b, byte(len(pb)))
	return append(b, pb...)
}

func (d *dec) prefix() netip.Prefix {
	n := int(d.next(1)[0])
	if n == 0 {
		return netip.Prefix{}
	}
	var p netip.Prefix
	if err := p.UnmarshalBinary(d.next(n)); err != nil || !p.IsValid() || p != p.Masked() {
		d.bad = true
		return netip.Prefix{}
	}
	return p
}

// version reads the record version, 1 or recordVersion.
func (d *dec) version() byte {
	v := d.next(1)[0]
	if v < 1 || v > recordVersion {
		d.bad = true
	}
	return v
}

// pair: version | A | B | created | bytes16 request | bytes16 approve
func encodePair(p TrustPair) []byte {
	b := append([]byte{recordVersion}, p.A[:]...)
	b = append(b, p.B[:]...)
	b = appendTime(b, p.Created)
	b = appendBytes16(b, p.Request)
	return appendBytes16(b, p.Approve)
}

func decodePair(v []byte) (TrustPair, error) {
	d := dec{b: v}
	var p TrustPair
	d.version()
	copy(p.A[:], d.next(addressing.PublicKeySize))
	copy(p.B[:], d.next(addressing.PublicKeySize))
	p.Created = d.time()
	p.Request = d.bytes16()
	p.Approve = d.bytes16()
	return p, d.err("pair")
}
