package trustdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/agentnet/agentnet/addressing"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// File names inside the store directory.
const (
	IdentityFile = "identity.key"
	DatabaseFile = "trust.db"
)

// openTimeout bounds the wait for bbolt's file lock: a second opener fails
// quickly with a clear error instead of hanging.
const openTimeout = time.Second

// Limits.
const (
	// MaxOutbox is the most messages the outbox holds. A local action that
	// would exceed it fails with ErrOutboxFull; the automatic approve
	// answering a request from a peer already trusted is skipped instead.
	MaxOutbox = 4096
	// maxSeen bounds the seen-nonce set; beyond it the oldest entries go
	// first (PeerTime still refuses their replays).
	maxSeen = 1 << 16
	// prunePerTx bounds the expired seen entries dropped per transaction.
	prunePerTx = 64
	// maxMetaKey and maxMetaValue bound SetMeta.
	maxMetaKey   = 255
	maxMetaValue = 64 << 10
	// storeVersion is the on-disk schema version.
	storeVersion = 1
)

// Bucket layout. records: peer key (32) -> Record. pending: our request's
// nonce (16) -> pending-out Record whose key is unknown. outbox: uint64 big
// endian sequence -> encoded Message. seen: from key (32) ‖ nonce (16) ->
// message time (8). seenTime: message time (8) ‖ from ‖ nonce -> empty, the
// time index used to prune seen. meta: caller's settings. info: our own
// bookkeeping (schema version, identity key, last message time sent).
var (
	bucketRecords  = []byte("records")
	bucketPending  = []byte("pending")
	bucketOutbox   = []byte("outbox")
	bucketSeen     = []byte("seen")
	bucketSeenTime = []byte("seen_time")
	bucketMeta     = []byte("meta")
	bucketInfo     = []byte("info")

	infoVersion  = []byte("version")
	infoIdentity = []byte("identity")
	infoLastSent = []byte("last_sent")
)

// ErrInUse is wrapped by the error Open returns when another process (or
// another Store in this process) has the trust store open.
var ErrInUse = errors.New("trustdb: trust store in use")

type inUseError struct{ path string }

func (e *inUseError) Error() string {
	return "trustdb: trust store " + e.path + " is in use by another process"
}
func (e *inUseError) Is(target error) bool { return target == ErrInUse }

// Event tells a subscriber about one committed change.
type Event struct {
	// Key is the peer's key; zero for a pending-out request whose key is
	// not known yet.
	Key addressing.PublicKey
	// Old is the record's state before the change, 0 if it is new. When an
	// answer to one of our pending-out requests arrives and no record for
	// the peer's key existed, Old is StatePendingOut (the request record,
	// keyed by nonce until then, moved to the key).
	Old State
	// Record is the record after the change.
	Record Record
	// Network is set, and Key, Old and Record are zero, for a change of a
	// network's membership (UpdateNetwork).
	Network *NetworkChange
}

// Store is the agent's trust database: its identity and one record per peer,
// on disk in a bbolt database, with the trusted keys mirrored in memory. It is
// safe for concurrent use. Writes are serialised; reads run in parallel.
type Store struct {
	id      *Identity
	db      *bolt.DB
	dir     string
	now     func() time.Time // our clock; replaced in tests
	maxSeen int              // bound of the seen set; lowered in tests

	// trusted is an immutable set replaced on every change (copy on write).
	trusted atomic.Pointer[map[addressing.PublicKey]struct{}]
	// nets mirrors every network's members (network.go), copy on write.
	nets atomic.Pointer[netIndex]

	mu        sync.Mutex // serialises writes; guards the fields below
	closed    bool       // no more writes (Close began)
	dbClosed  bool       // no more reads either (Close delivered every event)
	lastSent  time.Time  // Time of the newest message we made
	outboxLen int
	seenLen   int
	// untrusted counts the records of peers never trusted (isUntrusted);
	// nextExpiry is when the first of them expires.
	untrusted  int
	nextExpiry time.Time
	// commits counts committed writes; backedUp is its value at the last
	// backup.
	commits, backedUp uint64

	subMu   sync.Mutex // guards the fields below
	subCond *sync.Cond // signalled when queue grows or closing is set
	subs    []*subscriber
	queue   []queuedEvent // committed, not yet delivered
	seq     uint64        // sequence of the last event queued
	dseq    uint64        // sequence of the last event delivered
	closing bool
	done    chan struct{} // closed when deliverLoop returns

	closeOnce sync.Once
	closeErr  error
}

type subscriber struct {
	fn        func(Event)
	after     uint64 // deliver only events with seq > after
	cancelled atomic.Bool
}

type queuedEvent struct {
	seq uint64
	ev  Event
}

// Open opens (creating if needed) the trust store in dir: the directory is
// created with mode 0700, the identity is dir/identity.key, the records
// dir/trust.db. If another process holds the database, Open fails within
// about a second with an error naming the path that wraps ErrInUse.
//
// A store is created only in an empty directory (neither file exists), and
// so that a crash at any moment leaves either no store or a whole one.
// Otherwise Open never starts afresh: a missing, empty, truncated or
// otherwise damaged trust.db or identity.key, or a database made for
// another identity key, fails with a *DamagedError (errors.Is ErrDamaged)
// whose Hint says how to restore, and nothing is written. Before opening the
// database for writing, Open checks its meta pages against the file's size
// (bbolt would fault reading past the end of a truncated file, or silently
// roll back to the previous transaction when one meta page is damaged),
// then every page (bbolt's Tx.Check) and every record; a panic inside bbolt
// is recovered and reported as damage. After that verification Open
// refreshes the last good copy, dir/trust.db.bak (see Backup). Close the
// Store when done.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("trustdb: create store directory: %w", err)
	}
	path := filepath.Join(dir, DatabaseFile)
	id, created, err := prepareStore(dir)
	if err != nil {
		return nil, err
	}
	if !created {
		k, err := verifyBolt(path)
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, &inUseError{path}
		case err != nil:
			return nil, damaged(path, err.Error(), err)
		case k != id.pub:
			return nil, damaged(filepath.Join(dir, IdentityFile),
				fmt.Sprintf("holds identity %s, but %s belongs to identity %s (the key file was replaced?)", id.pub, path, k), nil)
		}
	}
	db, err := openBolt(path, false)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, &inUseError{path}
		}
		return nil, damaged(path, err.Error(), err)
	}
	s := &Store{id: id, db: db, dir: dir, now: time.Now, maxSeen: maxSeen, done: make(chan struct{})}
	s.subCond = sync.NewCond(&s.subMu)
	if err := s.safeLoad(path); err != nil {
		db.Close()
		return nil, err
	}
	if !created {
		if err := s.backupLocked(true); err != nil {
			db.Close()
			return nil, err
		}
	}
	go s.deliverLoop()
	if err := s.Prune(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// safeLoad runs load, turning a panic inside bbolt into damage.
func (s *Store) safeLoad(path string) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = damaged(path, fmt.Sprintf("reading the database failed: %v", r), nil)
		}
	}()
	return s.load(path)
}

// openBolt opens the bbolt file at path (read-only: shared lock, nothing
// written), recovering a panic inside bbolt as an error.
func openBolt(path string, readOnly bool) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("bbolt failed opening it: %v", r)
		}
	}()
	return bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout, ReadOnly: readOnly})
}

// verifyBolt checks the trust database at path without writing to it: its
// meta pages against the file size, then every page (Tx.Check), then that
// it is a trust store of our schema. It returns the identity key the store
// was made for. An error wrapping bolterrors.ErrTimeout means another
// process holds the file; any other error describes damage.
func verifyBolt(path string) (key addressing.PublicKey, err error) {
	if err := checkBoltFile(path); err != nil {
		return key, err
	}
	db, err := openBolt(path, true)
	if err != nil {
		return key, err
	}
	defer db.Close()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading the database failed: %v", r)
		}
	}()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for e := range tx.Check() { // read to the end: the checker uses tx
			if len(errs) < 4 {
				errs = append(errs, e)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("bbolt's consistency check failed: %w", errors.Join(errs...))
		}
		info := tx.Bucket(bucketInfo)
		if info == nil {
			return errors.New("no info bucket: not a trust store, or its first transaction was lost")
		}
		k, ok := addressing.PublicKeyFromSlice(info.Get(infoIdentity))
		if !ok {
			return errors.New("no identity recorded in the info bucket")
		}
		key = k
		return nil
	})
	return key, err
}

// prepareStore loads the identity of the store in dir, creating the store
// if the directory holds neither file, or finishing a creation that a crash
// interrupted. created reports a store made now. Any other combination is
// damage.
func prepareStore(dir string) (id *Identity, created bool, err error) {
	idPath, path := filepath.Join(dir, IdentityFile), filepath.Join(dir, DatabaseFile)
	id, idErr := loadIdentity(idPath)
	_, dbErr := os.Lstat(path)
	if idErr == nil && dbErr == nil {
		return id, false, nil
	}
	if idErr != nil && !errors.Is(idErr, fs.ErrNotExist) {
		return nil, false, idErr
	}
	if dbErr != nil && !errors.Is(dbErr, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("trustdb: %w", dbErr)
	}
	// Something is missing: look again holding the directory lock, so two
	// processes never both create a store.
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	id, idErr = loadIdentity(idPath)
	_, dbErr = os.Lstat(path)
	newPath := path + ".new"
	idMissing, dbMissing := errors.Is(idErr, fs.ErrNotExist), errors.Is(dbErr, fs.ErrNotExist)
	switch {
	case idErr != nil && !idMissing:
		return nil, false, idErr
	case dbErr != nil && !dbMissing:
		return nil, false, fmt.Errorf("trustdb: %w", dbErr)
	case !idMissing && !dbMissing:
		return id, false, nil
	case !idMissing:
		// A creation that died after writing the key installs its
		// database now; anything else means the records are gone.
		if k, err := verifyBolt(newPath); err == nil && k == id.pub {
			if err := os.Rename(newPath, path); err != nil {
				return nil, false, fmt.Errorf("trustdb: finish creating the store: %w", err)
			}
			return id, true, syncDir(dir)
		}
		return nil, false, damaged(path, "is missing, but "+IdentityFile+" exists: the agent's trust records are gone", nil)
	case !dbMissing:
		return nil, false, damaged(idPath, "is missing, but "+DatabaseFile+" exists: the agent's private key is gone", nil)
	}
	// A new store: the database (recording the identity) first, under a
	// temporary name; then the key; then the database's real name.
	id, err = GenerateIdentity()
	if err != nil {
		return nil, false, err
	}
	os.Remove(newPath) // from a creation that died before its key existed
	db, err := bolt.Open(newPath, 0o600, &bolt.Options{Timeout: openTimeout})
	if err != nil {
		return nil, false, fmt.Errorf("trustdb: create %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := createBuckets(tx); err != nil {
			return err
		}
		info := tx.Bucket(bucketInfo)
		if err := info.Put(infoVersion, []byte{storeVersion}); err != nil {
			return err
		}
		return info.Put(infoIdentity, id.pub[:])
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(newPath)
		return nil, false, fmt.Errorf("trustdb: create %s: %w", path, err)
	}
	if err := writeKeyFile(idPath, encodeKeyFile(id)); err != nil {
		os.Remove(newPath)
		return nil, false, err
	}
	if err := os.Rename(newPath, path); err != nil {
		return nil, false, fmt.Errorf("trustdb: create %s: %w", path, err)
	}
	return id, true, syncDir(dir)
}

// lockDir takes an exclusive flock on dir; unlock releases it.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("trustdb: lock store directory: %w", err)
	}
	deadline := time.Now().Add(openTimeout)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, &inUseError{dir}
			}
			return nil, fmt.Errorf("trustdb: lock store directory: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var allBuckets = [][]byte{bucketRecords, bucketPending, bucketOutbox, bucketSeen, bucketSeenTime, bucketMeta, bucketInfo, bucketNetworks}

func createBuckets(tx *bolt.Tx) error {
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// load checks the schema and identity, and fills the in-memory state. Every
// problem it finds is damage.
func (s *Store) load(path string) error {
	trusted := make(map[addressing.PublicKey]struct{})
	var members map[addressing.NetworkID]map[addressing.PublicKey]struct{}
	var untrusted []untrustedEntry
	// Buckets added by later versions of the schema appear here; a store
	// that has them all is only read.
	missing := false
	s.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			missing = missing || tx.Bucket(name) == nil
		}
		return nil
	})
	run := s.db.View
	if missing {
		run = s.db.Update
	}
	err := run(func(tx *bolt.Tx) error {
		if missing {
			if err := createBuckets(tx); err != nil {
				return err
			}
		}
		info := tx.Bucket(bucketInfo)
		if v := info.Get(infoVersion); v == nil {
			return damaged(path, "has no schema version", nil)
		} else if len(v) != 1 || v[0] != storeVersion {
			return fmt.Errorf("trustdb: %s has unsupported schema version %v", path, v)
		}
		if v := info.Get(infoIdentity); !bytes.Equal(v, s.id.pub[:]) {
			k, _ := addressing.PublicKeyFromSlice(v)
			return damaged(filepath.Join(s.dir, IdentityFile), fmt.Sprintf("holds identity %s, but %s belongs to identity %s", s.id.pub, path, k), nil)
		}
		if v := info.Get(infoLastSent); len(v) == 8 {
			s.lastSent = timeFrom(binary.BigEndian.Uint64(v))
		}
		err := tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
			r, err := ParseRecord(v)
			if err != nil {
				return damaged(path, fmt.Sprintf("record %x: %v", k, err), err)
			}
			if !bytes.Equal(k, r.Key[:]) {
				return damaged(path, fmt.Sprintf("record %x is filed under the wrong key", k), nil)
			}
			if r.State == StateTrusted {
				trusted[r.Key] = struct{}{}
			}
			if isUntrusted(r) {
				untrusted = append(untrusted, untrustedEntry{r.Key, r.State, r.Updated})
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
			if _, err := ParseRecord(v); err != nil {
				return damaged(path, fmt.Sprintf("pending request %x: %v", k, err), err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if members, err = loadNetworks(tx, path); err != nil {
			return damaged(path, err.Error(), err)
		}
		s.outboxLen = tx.Bucket(bucketOutbox).Stats().KeyN
		s.seenLen = tx.Bucket(bucketSeen).Stats().KeyN
		return nil
	})
	if err != nil {
		var de *DamagedError
		if errors.As(err, &de) {
			return de
		}
		return fmt.Errorf("trustdb: load %s: %w", path, err)
	}
	s.untrusted = len(untrusted)
	s.nextExpiry = nextExpiry(untrusted)
	s.trusted.Store(&trusted)
	s.nets.Store(newNetIndex(members, s.id.pub))
	return nil
}

// Identity returns the store's identity.
func (s *Store) Identity() *Identity { return s.id }

// Dir returns the directory the store was opened in.
func (s *Store) Dir() string { return s.dir }

// Close waits for writes in progress, delivers every event already committed
// to the subscribers, waits until no callback is running, and closes the
// database. It is idempotent; every call returns the first call's result.
// Afterwards writes fail with an error wrapping net.ErrClosed, IsTrusted
// reports false, and reads report nothing. Close must not be called from a
// subscriber callback (it would wait for itself).
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		empty := map[addressing.PublicKey]struct{}{}
		s.trusted.Store(&empty)
		s.nets.Store(newNetIndex(nil, s.id.pub))
		s.mu.Unlock()

		s.subMu.Lock()
		s.closing = true
		s.subCond.Broadcast()
		s.subMu.Unlock()
		<-s.done

		// Callbacks of the events Close delivered could still read; now
		// nothing reads any more. The last good copy is refreshed first.
		s.mu.Lock()
		s.dbClosed = true
		berr := s.backupLocked(false)
		s.mu.Unlock()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("trustdb: close: %w", err)
		} else if berr != nil {
			s.closeErr = berr
		}
	})
	return s.closeErr
}

func errClosed(op string) error { return fmt.Errorf("trustdb: %s: %w", op, net.ErrClosed) }

// IsTrusted reports whether k is trusted. It reads only memory (one atomic
// load and a map lookup), for the TLS handshake's hot path. It reflects every
// committed change by the time the change's method returns.
func (s *Store) IsTrusted(k addressing.PublicKey) bool {
	_, ok := (*s.trusted.Load())[k]
	return ok
}

// TrustedKeys returns the keys currently trusted, in no particular order.
func (s *Store) TrustedKeys() []addressing.PublicKey {
	m := *s.trusted.Load()
	keys := make([]addressing.PublicKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// view runs fn in a read transaction; it reports false if the store is
// closed.
// view runs fn in a read transaction. It holds the writer lock, so a reader
// never sees a committed change before IsTrusted does (update applies the
// trusted set before it releases the lock).
func (s *Store) view(fn func(tx *bolt.Tx) error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dbClosed {
		return false
	}
	return s.db.View(fn) == nil
}

// Get returns the record of peer key k.
func (s *Store) Get(k addressing.PublicKey) (Record, bool) {
	var r Record
	var ok bool
	if k.IsZero() {
		return r, false
	}
	s.view(func(tx *bolt.Tx) error {
		r, ok = getRecord(tx, k)
		return nil
	})
	return r, ok
}

// List returns every record, including pending-out requests whose key is not
// known yet, sorted by key (pending-out requests first) and then nonce.
func (s *Store) List() []Record {
	var out []Record
	s.view(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketPending, bucketRecords} {
			tx.Bucket(name).ForEach(func(k, v []byte) error {
				if r, err := ParseRecord(v); err == nil {
					out = append(out, r)
				}
				return nil
			})
		}
		return nil
	})
	slices.SortStableFunc(out, func(a, b Record) int {
		if c := bytes.Compare(a.Key[:], b.Key[:]); c != 0 {
			return c
		}
		return bytes.Compare(a.Nonce[:], b.Nonce[:])
	})
	return out
}

// OutboxItem is a queued signed message waiting for delivery to the
// rendezvous. Msg is an encoded Message the caller owns.
type OutboxItem struct {
	ID  uint64
	Msg []byte
}

// Outbox returns the queued messages, oldest first. Every change that queues
// a message (each local action, and the automatic approve answering a request
// from a peer already trusted) also publishes an Event, so a subscriber can
// take events as the cue to deliver the outbox.
func (s *Store) Outbox() []OutboxItem {
	var out []OutboxItem
	s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			if len(k) == 8 {
				out = append(out, OutboxItem{ID: binary.BigEndian.Uint64(k), Msg: bytes.Clone(v)})
			}
			return nil
		})
	})
	return out
}

// AckOutbox removes a delivered message from the outbox. Acking an ID that
// is not queued (already acked) is not an error.
func (s *Store) AckOutbox(id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed("ack outbox")
	}
	var removed bool
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		k := binary.BigEndian.AppendUint64(nil, id)
		if b.Get(k) == nil {
			return nil
		}
		removed = true
		return b.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("trustdb: ack outbox %d: %w", id, err)
	}
	if removed {
		s.outboxLen--
		s.commits++
	}
	return nil
}

// Meta returns a copy of the setting stored under key.
func (s *Store) Meta(key string) ([]byte, bool) {
	var v []byte
	s.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta).Get([]byte(key)); b != nil {
			v = bytes.Clone(b)
		}
		return nil
	})
	return v, v != nil
}

// SetMeta stores a small setting (key 1-255 bytes, value at most 64 KiB); a
// nil v deletes it. Settings produce no Event.
func (s *Store) SetMeta(key string, v []byte) error {
	if len(key) == 0 || len(key) > maxMetaKey {
		return fmt.Errorf("trustdb: set meta: key must be 1-%d bytes", maxMetaKey)
	}
	if len(v) > maxMetaValue {
		return fmt.Errorf("trustdb: set meta %q: value is %d bytes, max %d", key, len(v), maxMetaValue)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed("set meta")
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v == nil {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), v)
	})
	if err != nil {
		return fmt.Errorf("trustdb: set meta %q: %w", key, err)
	}
	s.commits++
	return nil
}

// Subscribe registers fn to be told of every change committed after
// Subscribe returns, in commit order, never dropped. Calls come from one
// delivery goroutine owned by the Store, after the change is on disk and
// outside every Store lock, one at a time (all subscribers see event N before
// any sees N+1), so fn may call any Store method, writes included, except
// Close. The delivery queue is unbounded, which is fine because trust changes
// are rare and events small; a slow fn delays later events, it never loses
// them. After cancel returns fn is not called again (a call already running
// may finish). Subscribe on a closed Store returns a no-op cancel.
func (s *Store) Subscribe(fn func(Event)) (cancel func()) {
	sub := &subscriber{fn: fn}
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.closing {
		return func() {}
	}
	sub.after = s.seq
	s.subs = append(s.subs, sub)
	return func() {
		sub.cancelled.Store(true)
		s.subMu.Lock()
		defer s.subMu.Unlock()
		s.subs = slices.DeleteFunc(s.subs, func(x *subscriber) bool { return x == sub })
	}
}

// deliverLoop hands queued events to subscribers until Close, after
// delivering everything queued.
func (s *Store) deliverLoop() {
	defer close(s.done)
	for {
		s.subMu.Lock()
		for len(s.queue) == 0 && !s.closing {
			s.subCond.Wait()
		}
		if len(s.queue) == 0 {
			s.subMu.Unlock()
			return
		}
		q := s.queue[0]
		s.queue[0] = queuedEvent{}
		s.queue = s.queue[1:]
		if len(s.queue) == 0 {
			s.queue = nil
		}
		subs := slices.Clone(s.subs)
		s.subMu.Unlock()
		for _, sub := range subs {
			if q.seq > sub.after && !sub.cancelled.Load() {
				sub.fn(q.ev)
			}
		}
		s.subMu.Lock()
		s.dseq = q.seq
		s.subCond.Broadcast()
		s.subMu.Unlock()
	}
}

// Flush returns once every event committed before the call has been handed
// to every subscriber and its callbacks have returned: after
//
//	s.Revoke(k, "")
//	s.Flush()
//
// every subscriber has acted on the revocation. It must not be called from a
// subscriber callback (it would wait for itself).
func (s *Store) Flush() {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	target := s.seq
	for s.dseq < target {
		s.subCond.Wait()
	}
}

// publishLocked queues events for delivery. Called with s.mu held, right
// after the commit, so the queue is in commit order.
func (s *Store) publishLocked(evs []Event) {
	if len(evs) == 0 {
		return
	}
	s.subMu.Lock()
	for _, ev := range evs {
		s.seq++
		s.queue = append(s.queue, queuedEvent{s.seq, ev})
	}
	s.subCond.Broadcast()
	s.subMu.Unlock()
}

// change is what a write transaction did, applied to memory after commit.
type change struct {
	events   []Event
	outbox   int       // messages queued
	seen     int       // net change of the seen set
	lastSent time.Time // time of the message we made, if any
	nets     []netUpdate
	// untrusted is the net change of the untrusted records, expiry the
	// earliest expiry among those written. A prune recounts instead:
	// untrustedAbs and nextExpiry replace the Store's figures.
	untrusted    int
	expiry       time.Time
	recount      bool
	untrustedAbs int
	nextExpiry   time.Time
}

// update runs fn in a write transaction under s.mu and, if it commits,
// applies the change to the in-memory state and publishes its events.
func (s *Store) update(op string, fn func(tx *bolt.Tx, c *change) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed(op)
	}
	var c change
	before, beforeNets := s.trusted.Load(), s.nets.Load()
	if err := s.db.Update(func(tx *bolt.Tx) error {
		c = change{}
		if err := fn(tx, &c); err != nil {
			return err
		}
		// Fail closed: trust that this change withdraws stops counting
		// before the commit is visible (restored below if it fails).
		s.applyTrustedLocked(withdrawals(c.events))
		s.withdrawMembersLocked(c.nets)
		return nil
	}); err != nil {
		s.trusted.Store(before)
		s.nets.Store(beforeNets)
		return err
	}
	s.commits++
	s.outboxLen += c.outbox
	s.seenLen += c.seen
	if !c.lastSent.IsZero() {
		s.lastSent = c.lastSent
	}
	if c.recount {
		s.untrusted, s.nextExpiry = c.untrustedAbs+c.untrusted, c.nextExpiry
	} else {
		s.untrusted += c.untrusted
	}
	if !c.expiry.IsZero() && (s.nextExpiry.IsZero() || c.expiry.Before(s.nextExpiry)) {
		s.nextExpiry = c.expiry
	}
	s.applyTrustedLocked(c.events)
	s.applyNetworksLocked(c.nets)
	s.publishLocked(c.events)
	return nil
}

// applyTrustedLocked updates the trusted-key mirror (copy on write).
// withdrawals returns the events that take a key out of the trusted state.
func withdrawals(evs []Event) []Event {
	var out []Event
	for _, ev := range evs {
		if ev.Record.State != StateTrusted {
			out = append(out, ev)
		}
	}
	return out
}

func (s *Store) applyTrustedLocked(evs []Event) {
	cur := *s.trusted.Load()
	var next map[addressing.PublicKey]struct{}
	for _, ev := range evs {
		if ev.Key.IsZero() {
			continue
		}
		_, was := cur[ev.Key]
		if next != nil {
			_, was = next[ev.Key]
		}
		is := ev.Record.State == StateTrusted
		if was == is {
			continue
		}
		if next == nil {
			next = make(map[addressing.PublicKey]struct{}, len(cur)+1)
			for k := range cur {
				next[k] = struct{}{}
			}
		}
		if is {
			next[ev.Key] = struct{}{}
		} else {
			delete(next, ev.Key)
		}
	}
	if next != nil {
		s.trusted.Store(&next)
	}
}

// stampLocked returns the Time for a message we make now: our clock, but
// strictly after the last message we made, so peers (which refuse messages not
// newer than the last one from us) accept it even if our clock stepped back.
func (s *Store) stampLocked() time.Time {
	t := time.Unix(0, s.now().UnixNano())
	if !t.After(s.lastSent) {
		t = s.lastSent.Add(time.Nanosecond)
	}
	return t
}

// queueMessage makes, signs and queues a message in tx.
func (s *Store) queueMessage(tx *bolt.Tx, c *change, kind Kind, to addressing.Target, replyTo [NonceSize]byte, hostname, note string) (*Message, error) {
	if s.outboxLen+c.outbox >= MaxOutbox {
		return nil, fmt.Errorf("%d messages queued: %w", MaxOutbox, ErrOutboxFull)
	}
	m, err := newMessageAt(s.id, kind, to, replyTo, hostname, note, s.stampLocked())
	if err != nil {
		return nil, err
	}
	enc, err := m.AppendBinary(nil)
	if err != nil {
		return nil, err
	}
	b := tx.Bucket(bucketOutbox)
	seq, err := b.NextSequence()
	if err != nil {
		return nil, err
	}
	if err := b.Put(binary.BigEndian.AppendUint64(nil, seq), enc); err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketInfo).Put(infoLastSent, appendTime(nil, m.Time)); err != nil {
		return nil, err
	}
	c.outbox++
	c.lastSent = m.Time
	return m, nil
}

func getRecord(tx *bolt.Tx, k addressing.PublicKey) (Record, bool) {
	v := tx.Bucket(bucketRecords).Get(k[:])
	if v == nil {
		return Record{}, false
	}
	r, err := ParseRecord(v)
	if err != nil {
		return Record{}, false
	}
	return r, true
}

func putRecord(tx *bolt.Tx, r Record) error {
	enc, err := r.AppendBinary(nil)
	if err != nil {
		return err
	}
	if r.Key.IsZero() {
		return tx.Bucket(bucketPending).Put(r.Nonce[:], enc)
	}
	return tx.Bucket(bucketRecords).Put(r.Key[:], enc)
}

func peerAddr(k addressing.PublicKey) addressing.Target {
	return addressing.TargetAddr(addressing.AddrFrom(0, k.NodeID()))
}

// Request asks the agent named by to for trust: it records a pending-out
// request (keyed by its nonce until the answer reveals the peer's key) and
// queues the signed request in the outbox, in one transaction, and returns
// the message. hostname is our own hostname ("" if none), note free text for
// the peer's operator.
func (s *Store) Request(to addressing.Target, hostname, note string) (*Message, error) {
	if a, ok := to.Addr(); ok && a.Node() == s.id.node {
		return nil, fmt.Errorf("trustdb: request %s: that is our own address", to)
	}
	var m *Message
	err := s.update("request", func(tx *bolt.Tx, c *change) error {
		// A repeated request replaces the earlier ones to the same target
		// (and their messages, if still undelivered): one pending-out
		// record per target.
		prev, err := s.dropRequestsLocked(tx, c, to.String())
		if err != nil {
			return err
		}
		c.events = nil
		m, err = s.queueMessage(tx, c, KindRequest, to, [NonceSize]byte{}, hostname, note)
		if err != nil {
			return err
		}
		now := s.now()
		r := Record{Target: to.String(), State: StatePendingOut, Nonce: m.Nonce, Note: note, Created: now, Updated: now}
		var old State
		for _, p := range prev {
			old = StatePendingOut
			if p.Created.Before(r.Created) {
				r.Created = p.Created
			}
		}
		if h, ok := to.Hostname(); ok {
			r.Hostname = h
		}
		if err := putRecord(tx, r); err != nil {
			return err
		}
		c.events = append(c.events, Event{Old: old, Record: r})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("trustdb: request %s: %w", to, err)
	}
	return m, nil
}

// Approve consents to peer k's pending request: pending-in -> trusted, and
// queues the signed approve. hostname is our own hostname ("" if none).
// Anything but a pending-in record fails with ErrUnexpected.
func (s *Store) Approve(k addressing.PublicKey, hostname string) (*Message, error) {
	return s.answer("approve", KindApprove, StateTrusted, k, hostname, StatePendingIn)
}

// Reject refuses peer k's pending request: pending-in -> rejected, and queues
// the signed reject. Anything but a pending-in record fails with
// ErrUnexpected.
func (s *Store) Reject(k addressing.PublicKey, hostname string) (*Message, error) {
	return s.answer("reject", KindReject, StateRejected, k, hostname, StatePendingIn)
}

// Revoke withdraws consent: a trusted or pending-in peer k becomes revoked,
// and the signed revoke is queued. IsTrusted(k) is false when Revoke returns.
// Any other state, or no record, fails with ErrUnexpected.
func (s *Store) Revoke(k addressing.PublicKey, hostname string) (*Message, error) {
	return s.answer("revoke", KindRevoke, StateRevoked, k, hostname, StateTrusted, StatePendingIn)
}

func (s *Store) answer(op string, kind Kind, next State, k addressing.PublicKey, hostname string, from ...State) (*Message, error) {
	var m *Message
	err := s.update(op, func(tx *bolt.Tx, c *change) error {
		r, ok := getRecord(tx, k)
		if !ok {
			return fmt.Errorf("no record: %w", ErrUnexpected)
		}
		if !slices.Contains(from, r.State) {
			return fmt.Errorf("peer is %s: %w", r.State, ErrUnexpected)
		}
		var reply [NonceSize]byte
		if kind == KindApprove || kind == KindReject {
			reply = r.Nonce
		}
		var err error
		m, err = s.queueMessage(tx, c, kind, peerAddr(k), reply, hostname, "")
		if err != nil {
			return err
		}
		before := r
		r.State = next
		r.Updated = s.now()
		if next == StateTrusted {
			r.EverTrusted = true
		}
		if err := s.putTracked(tx, c, before, true, r); err != nil {
			return err
		}
		c.events = append(c.events, Event{Key: k, Old: before.State, Record: r})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("trustdb: %s %s: %w", op, k, err)
	}
	return m, nil
}

// HandleMessage applies a trust message received from the rendezvous
// mailbox. It verifies the signature, the time (at most MaxMessageAge old,
// at most MaxClockSkew ahead), replay (strictly newer than the sender's
// record's PeerTime, and (sender, nonce) not seen before), and that To names
// us: our NodeID, or ourHostname if it is not "". Then:
//
//   - request: the sender becomes pending-in; a trusted sender stays trusted
//     and an approve answering the request is queued.
//   - approve / reject: ReplyTo must be the nonce of one of our pending-out
//     requests and, if that request named an address, the sender's NodeID
//     must match it; the record moves to the sender's key, trusted / rejected.
//   - revoke: the sender must have a record; it becomes revoked.
//
// It returns the record after the change. On any error nothing changed; the
// errors wrap ErrMalformed, ErrBadSignature, ErrExpired, ErrReplay,
// ErrNotForUs or ErrUnexpected (permanent: drop the message), or net.ErrClosed
// or a disk error.
func (s *Store) HandleMessage(m *Message, ourHostname string) (Record, error) {
	if m == nil {
		return Record{}, fmt.Errorf("trustdb: handle message: nil: %w", ErrMalformed)
	}
	if err := m.Verify(); err != nil {
		return Record{}, err
	}
	wrap := func(err error) error { return fmt.Errorf("trustdb: handle %s: %w", m, err) }
	if m.From == s.id.pub {
		return Record{}, wrap(fmt.Errorf("message from ourselves: %w", ErrUnexpected))
	}
	if a, ok := m.To.Addr(); ok {
		if a.Node() != s.id.node {
			return Record{}, wrap(ErrNotForUs)
		}
	} else if h, _ := m.To.Hostname(); ourHostname == "" || h != ourHostname {
		return Record{}, wrap(ErrNotForUs)
	}
	now := s.now()
	if m.Time.Before(now.Add(-MaxMessageAge)) {
		return Record{}, wrap(fmt.Errorf("older than %v: %w", MaxMessageAge, ErrExpired))
	}
	if m.Time.After(now.Add(MaxClockSkew)) {
		return Record{}, wrap(fmt.Errorf("more than %v in the future: %w", MaxClockSkew, ErrExpired))
	}
	enc, err := m.AppendBinary(nil)
	if err != nil {
		return Record{}, wrap(err)
	}
	var out Record
	err = s.update("handle message", func(tx *bolt.Tx, c *change) error {
		seenKey := append(append(make([]byte, 0, 48), m.From[:]...), m.Nonce[:]...)
		if tx.Bucket(bucketSeen).Get(seenKey) != nil {
			return fmt.Errorf("nonce seen before: %w", ErrReplay)
		}
		r, exists := getRecord(tx, m.From)
		before := r
		if exists && !m.Time.After(r.PeerTime) {
			return fmt.Errorf("not newer than the last message from this peer (%s): %w", r.PeerTime.UTC().Format(time.RFC3339Nano), ErrReplay)
		}
		old := r.State
		switch m.Kind {
		case KindRequest:
			if exists && r.State == StateTrusted {
				// The peer lost its record of us: answer again.
				// If the outbox is full, skip this courtesy answer.
				if s.outboxLen+c.outbox < MaxOutbox {
					if _, err := s.queueMessage(tx, c, KindApprove, peerAddr(m.From), m.Nonce, ourHostname, ""); err != nil {
						return err
					}
				}
			} else {
				r.State = StatePendingIn
				r.Nonce = m.Nonce
				r.Note = m.Note
				r.Consent = enc
			}
		case KindApprove, KindReject:
			pv := tx.Bucket(bucketPending).Get(m.ReplyTo[:])
			if pv == nil {
				return fmt.Errorf("%s answers no pending request of ours: %w", m.Kind, ErrUnexpected)
			}
			p, err := ParseRecord(pv)
			if err != nil {
				return err
			}
			if t, err := addressing.ParseTarget(p.Target); err == nil {
				if a, ok := t.Addr(); ok && a.Node() != m.From.NodeID() {
					return fmt.Errorf("we asked %s, but the %s is from %s: %w", a, m.Kind, m.From.NodeID(), ErrUnexpected)
				}
			}
			if err := tx.Bucket(bucketPending).Delete(m.ReplyTo[:]); err != nil {
				return err
			}
			if !exists {
				old = StatePendingOut
				r.Created = p.Created
			}
			r.State = StateTrusted
			r.EverTrusted = true
			if m.Kind == KindReject {
				r.State = StateRejected
				r.EverTrusted = before.EverTrusted
			}
			r.Target = p.Target
			if r.Hostname == "" {
				r.Hostname = p.Hostname
			}
			r.Nonce = p.Nonce
			r.Note = m.Note
			r.Consent = enc
		case KindRevoke:
			if !exists {
				return fmt.Errorf("revoke from a peer we have no record of: %w", ErrUnexpected)
			}
			r.State = StateRevoked
			r.Note = m.Note
			r.Consent = enc
		}
		r.Key = m.From
		if m.Hostname != "" {
			r.Hostname = m.Hostname
		}
		r.PeerTime = m.Time
		if r.Created.IsZero() {
			r.Created = now
		}
		r.Updated = now
		if err := s.putTracked(tx, c, before, exists, r); err != nil {
			return err
		}
		if err := s.markSeen(tx, c, seenKey, m.Time, now); err != nil {
			return err
		}
		c.events = append(c.events, Event{Key: m.From, Old: old, Record: r})
		out = r
		// Strangers cannot pile records up: this bounds and expires them.
		return s.pruneLocked(tx, c, now)
	})
	if err != nil {
		return Record{}, wrap(err)
	}
	return out, nil
}

// markSeen records (from, nonce) in the seen set and prunes it: entries for
// messages too old to be accepted anyway, a few per call, and the oldest
// beyond maxSeen.
func (s *Store) markSeen(tx *bolt.Tx, c *change, seenKey []byte, t, now time.Time) error {
	seen, byTime := tx.Bucket(bucketSeen), tx.Bucket(bucketSeenTime)
	tk := appendTime(nil, t)
	if err := seen.Put(seenKey, tk); err != nil {
		return err
	}
	if err := byTime.Put(append(tk, seenKey...), nil); err != nil {
		return err
	}
	c.seen++
	cutoff := appendTime(nil, now.Add(-MaxMessageAge-MaxClockSkew))
	cur := byTime.Cursor()
	for i := 0; ; i++ {
		k, _ := cur.First()
		if k == nil {
			return nil
		}
		k = bytes.Clone(k)
		expired := i < prunePerTx && bytes.Compare(k[:8], cutoff) < 0
		if !expired && s.seenLen+c.seen <= s.maxSeen {
			return nil
		}
		if err := cur.Delete(); err != nil {
			return err
		}
		if err := seen.Delete(k[8:]); err != nil {
			return err
		}
		c.seen--
	}
}
