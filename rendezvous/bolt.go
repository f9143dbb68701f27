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
// Layout (bucket: key → value):
//
//	agents:    public key → agent record
//	nodes:     NodeID → public key
//	hostnames: hostname → public key
//	nonces:    sender key ‖ nonce → message time
//	pending:   target key ‖ requester key → pending request
//	pairs:     lower key ‖ higher key → trust pair
//	mail:      recipient key → bucket{ uint64 id → time ‖ message }
//	meta:      "agent_count" → uint64, "server_key" → public key
//
// and the network buckets drawn in boltnet.go.
type BoltStore struct {
	db     *bolt.DB
	remove string // file to delete on Close ("" = keep)
}

var (
	bucketAgents    = []byte("agents")
	bucketNodes     = []byte("nodes")
	bucketHostnames = []byte("hostnames")
	bucketNonces    = []byte("nonces")
	bucketPending   = []byte("pending")
	bucketPairs     = []byte("pairs")
	bucketMail      = []byte("mail")
	bucketMeta      = []byte("meta")

	metaAgentCount = []byte("agent_count")
	metaServerKey  = []byte("server_key")
)

// recordVersion is the first byte of every encoded record.
const recordVersion = 1

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
		for _, name := range append([][]byte{bucketAgents, bucketNodes, bucketHostnames, bucketNonces, bucketPending, bucketPairs, bucketMail, bucketMeta}, networkBuckets...) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("rendezvous: init store %s: %w", path, err)
	}
	return &BoltStore{db: db}, nil
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
	if !had {
		n, err := t.AgentCount()
		if err != nil {
			return err
		}
		if err := t.b(bucketMeta).Put(metaAgentCount, binary.BigEndian.AppendUint64(nil, uint64(n+1))); err != nil {
			return err
		}
	}
	return t.b(bucketAgents).Put(r.Key[:], encodeAgent(r))
}

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

func (t boltTx) SeeNonce(from addressing.PublicKey, nonce [trustdb.NonceSize]byte, tm time.Time) (bool, error) {
	k := append(from[:len(from):len(from)], nonce[:]...)
	b := t.b(bucketNonces)
	if b.Get(k) != nil {
		return true, nil
	}
	return false, b.Put(k, appendTime(nil, tm))
}

func pairKey(a, b addressing.PublicKey) []byte {
	if bytes.Compare(a[:], b[:]) > 0 {
		a, b = b, a
	}
	return append(a[:len(a):len(a)], b[:]...)
}

func (t boltTx) Pending(target, requester addressing.PublicKey) (PendingRequest, bool, error) {
	v := t.b(bucketPending).Get(append(target[:len(target):len(target)], requester[:]...))
	if v == nil {
		return PendingRequest{}, false, nil
	}
	p, err := decodePending(target, requester, v)
	return p, err == nil, err
}

func (t boltTx) PendingCount(target addressing.PublicKey) (int, error) {
	n := 0
	c := t.b(bucketPending).Cursor()
	for k, _ := c.Seek(target[:]); k != nil && bytes.HasPrefix(k, target[:]); k, _ = c.Next() {
		n++
	}
	return n, nil
}

func (t boltTx) PutPending(p PendingRequest) error {
	return t.b(bucketPending).Put(append(p.Target[:len(p.Target):len(p.Target)], p.Requester[:]...), encodePending(p))
}

func (t boltTx) DeletePending(target, requester addressing.PublicKey) error {
	return t.b(bucketPending).Delete(append(target[:len(target):len(target)], requester[:]...))
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

func (t boltTx) mailbox(to addressing.PublicKey, create bool) (*bolt.Bucket, error) {
	if create {
		return t.b(bucketMail).CreateBucketIfNotExists(to[:])
	}
	return t.b(bucketMail).Bucket(to[:]), nil
}

func (t boltTx) Enqueue(to addressing.PublicKey, msg []byte, tm time.Time) (uint64, error) {
	b, err := t.mailbox(to, true)
	if err != nil {
		return 0, err
	}
	// Mailbox buckets are never deleted, so ids never repeat for a recipient.
	id, err := b.NextSequence()
	if err != nil {
		return 0, err
	}
	return id, b.Put(binary.BigEndian.AppendUint64(nil, id), append(appendTime(nil, tm), msg...))
}

func (t boltTx) MailCount(to addressing.PublicKey) (int, error) {
	b, err := t.mailbox(to, false)
	if b == nil || err != nil {
		return 0, err
	}
	n := 0
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n, nil
}

func (t boltTx) Mail(to addressing.PublicKey, after uint64, max int) ([]MailItem, error) {
	b, err := t.mailbox(to, false)
	if b == nil || err != nil {
		return nil, err
	}
	var items []MailItem
	c := b.Cursor()
	for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, after+1)); k != nil && len(items) < max; k, v = c.Next() {
		if len(k) != 8 || len(v) < 8 {
			return nil, errors.New("rendezvous: store: corrupt mailbox")
		}
		items = append(items, MailItem{
			ID:   binary.BigEndian.Uint64(k),
			Time: readTime(v),
			Msg:  bytes.Clone(v[8:]),
		})
	}
	return items, nil
}

func (t boltTx) Ack(to addressing.PublicKey, id uint64) (bool, error) {
	b, err := t.mailbox(to, false)
	if b == nil || err != nil {
		return false, err
	}
	k := binary.BigEndian.AppendUint64(nil, id)
	if b.Get(k) == nil {
		return false, nil
	}
	return true, b.Delete(k)
}

func (t boltTx) Prune(cutoff time.Time) (int, error) {
	n := 0
	old := func(v []byte) bool { return len(v) >= 8 && readTime(v).Before(cutoff) }
	prune := func(b *bolt.Bucket, isOld func(v []byte) bool) error {
		var dead [][]byte
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v != nil && isOld(v) {
				dead = append(dead, bytes.Clone(k))
			}
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n += len(dead)
		return nil
	}
	if err := prune(t.b(bucketNonces), old); err != nil {
		return n, err
	}
	pendingOld := func(v []byte) bool {
		return len(v) >= 1+trustdb.NonceSize+8 && readTime(v[1+trustdb.NonceSize:]).Before(cutoff)
	}
	if err := prune(t.b(bucketPending), pendingOld); err != nil {
		return n, err
	}
	mail := t.b(bucketMail)
	err := mail.ForEachBucket(func(k []byte) error { return prune(mail.Bucket(k), old) })
	return n, err
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

// agent: version | uint8 len hostname | uint8 count | count × (uint8 len | netip binary | uint16 port) | created | last seen
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
	return appendTime(b, r.LastSeen)
}

func decodeAgent(k addressing.PublicKey, v []byte) (AgentRecord, error) {
	d := dec{b: v}
	r := AgentRecord{Key: k}
	if d.next(1)[0] != recordVersion {
		d.bad = true
	}
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
	return r, d.err("agent")
}

// pending: version | nonce | time | bytes16 msg
func encodePending(p PendingRequest) []byte {
	b := append([]byte{recordVersion}, p.Nonce[:]...)
	b = appendTime(b, p.Time)
	return appendBytes16(b, p.Msg)
}

func decodePending(target, requester addressing.PublicKey, v []byte) (PendingRequest, error) {
	d := dec{b: v}
	p := PendingRequest{Target: target, Requester: requester}
	if d.next(1)[0] != recordVersion {
		d.bad = true
	}
	copy(p.Nonce[:], d.next(trustdb.NonceSize))
	p.Time = d.time()
	p.Msg = d.bytes16()
	return p, d.err("pending")
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
	if d.next(1)[0] != recordVersion {
		d.bad = true
	}
	copy(p.A[:], d.next(addressing.PublicKeySize))
	copy(p.B[:], d.next(addressing.PublicKeySize))
	p.Created = d.time()
	p.Request = d.bytes16()
	p.Approve = d.bytes16()
	return p, d.err("pair")
}
