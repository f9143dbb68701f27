package rendezvous

import (
	"errors"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"
)

// What operators read: readiness and the store's size (package
// internal/metrics exports them with the Stats counters).

// StoreStats describes the server's store.
type StoreStats struct {
	Kind   string // "bbolt", "etcd", or "custom" for a Store of the caller's
	Agents int    // registered agents
	// Mail is the number of messages queued in all mailboxes (-1 if the
	// store cannot tell cheaply).
	Mail int
	// Bytes is the store's size: the bbolt file, or for etcd the bytes of
	// keys and values this server holds in its replica.
	Bytes int64
	// Etcd is set for an EtcdStore.
	Etcd *EtcdStats
}

// storeStatser is implemented by the stores of this package.
type storeStatser interface {
	storeStats() (StoreStats, error)
}

// readier is implemented by stores whose readiness can change (EtcdStore:
// cut off from etcd for longer than its lease).
type readier interface {
	ready() error
}

// StoreStats returns the store's size. It is safe to call at any time
// after Start; before, it fails.
func (s *Server) StoreStats() (StoreStats, error) {
	s.mu.Lock()
	st := s.store
	s.mu.Unlock()
	if st == nil {
		return StoreStats{}, errors.New("rendezvous: store stats: not started")
	}
	if ss, ok := st.(storeStatser); ok {
		return ss.storeStats()
	}
	out := StoreStats{Kind: "custom", Mail: -1}
	err := st.View(func(tx Tx) (err error) {
		out.Agents, err = tx.AgentCount()
		return err
	})
	return out, err
}

// Ready reports whether the server serves: nil once Start has succeeded,
// until Shutdown or Close, while its store can answer (an EtcdStore cut off
// from etcd for longer than its lease is not ready).
func (s *Server) Ready() error {
	s.mu.Lock()
	started, closed, draining, st := s.started, s.closed, s.draining, s.store
	ln := s.ln
	s.mu.Unlock()
	switch {
	case closed || draining:
		return errors.New("rendezvous: shutting down")
	case !started || ln == nil || st == nil:
		return errors.New("rendezvous: not started")
	}
	if r, ok := st.(readier); ok {
		return r.ready()
	}
	return nil
}

func (s *BoltStore) storeStats() (StoreStats, error) {
	out := StoreStats{Kind: "bbolt"}
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if out.Agents, err = (boltTx{tx}).AgentCount(); err != nil {
			return err
		}
		out.Mail = tx.Bucket(bucketMailbox).Stats().KeyN
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("rendezvous: store stats: %w", err)
	}
	if fi, err := os.Stat(s.db.Path()); err == nil {
		out.Bytes = fi.Size()
	}
	return out, nil
}
