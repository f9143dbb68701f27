package trustdb

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/agentnet/agentnet/addressing"
	bolt "go.etcd.io/bbolt"
)

// Bounds of the records of peers we never trusted: requests from strangers
// waiting for our decision (pending-in), requests we or they rejected, and
// requests their senders withdrew (revoked). Anyone can make such a record
// by sending a request, so they must not accumulate: each expires, and at
// most MaxUntrusted are kept. Records of peers we trusted at some point
// (Record.EverTrusted) are never removed automatically.
const (
	// MaxUntrusted is the most records of never-trusted peers the Store
	// keeps. Beyond it the oldest go first (by Updated): rejected and
	// revoked ones before requests still waiting for a decision.
	MaxUntrusted = 256
	// UntrustedPendingTTL is how long a stranger's request waits for our
	// decision after its last change (the same as MaxMessageAge, the
	// request's own lifetime in the rendezvous mailbox).
	UntrustedPendingTTL = MaxMessageAge
	// UntrustedClosedTTL is how long a rejected or revoked record of a
	// peer we never trusted is kept after its last change.
	UntrustedClosedTTL = 24 * time.Hour
)

// isUntrusted reports whether r is a record of a peer we never trusted,
// subject to the bounds above.
func isUntrusted(r Record) bool {
	return !r.Key.IsZero() && !r.EverTrusted && r.State != StateTrusted
}

// expiresAt is when an untrusted record expires.
func expiresAt(r Record) time.Time {
	if r.State == StatePendingIn {
		return r.Updated.Add(UntrustedPendingTTL)
	}
	return r.Updated.Add(UntrustedClosedTTL)
}

type untrustedEntry struct {
	key     addressing.PublicKey
	state   State
	updated time.Time
}

func (e untrustedEntry) expires() time.Time {
	return expiresAt(Record{State: e.state, Updated: e.updated})
}

// nextExpiry returns the earliest expiry of es (zero for none).
func nextExpiry(es []untrustedEntry) time.Time {
	var t time.Time
	for _, e := range es {
		if x := e.expires(); t.IsZero() || x.Before(t) {
			t = x
		}
	}
	return t
}

// putTracked writes r (a record with a key) over old (the record before, if
// exists) and keeps the untrusted count and next expiry of the change.
func (s *Store) putTracked(tx *bolt.Tx, c *change, old Record, exists bool, r Record) error {
	if err := putRecord(tx, r); err != nil {
		return err
	}
	if exists && isUntrusted(old) {
		c.untrusted--
	}
	if isUntrusted(r) {
		c.untrusted++
		if x := expiresAt(r); c.expiry.IsZero() || x.Before(c.expiry) {
			c.expiry = x
		}
	}
	return nil
}

// pruneLocked deletes the untrusted records that expired and the oldest
// beyond MaxUntrusted, if either is due, in tx.
func (s *Store) pruneLocked(tx *bolt.Tx, c *change, now time.Time) error {
	over := s.untrusted+c.untrusted > MaxUntrusted
	due := !s.nextExpiry.IsZero() && !now.Before(s.nextExpiry)
	if !over && !due {
		return nil
	}
	var es []untrustedEntry
	err := tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
		r, err := ParseRecord(v)
		if err != nil {
			return err
		}
		if isUntrusted(r) {
			es = append(es, untrustedEntry{r.Key, r.State, r.Updated})
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Expired first, then the oldest closed ones, then the oldest requests.
	slices.SortStableFunc(es, func(a, b untrustedEntry) int {
		ae, be := !now.Before(a.expires()), !now.Before(b.expires())
		if ae != be {
			if ae {
				return -1
			}
			return 1
		}
		ap, bp := a.state == StatePendingIn, b.state == StatePendingIn
		if ap != bp {
			if bp {
				return -1
			}
			return 1
		}
		return a.updated.Compare(b.updated)
	})
	n := 0
	for n < len(es) && (!now.Before(es[n].expires()) || len(es)-n > MaxUntrusted) {
		r, _ := getRecord(tx, es[n].key)
		if err := tx.Bucket(bucketRecords).Delete(es[n].key[:]); err != nil {
			return err
		}
		c.events = append(c.events, Event{Key: es[n].key, Old: r.State, Record: Record{Key: es[n].key}})
		n++
	}
	c.recount = true
	c.untrustedAbs = len(es) - n
	c.nextExpiry = nextExpiry(es[n:])
	return nil
}

// Prune deletes the records of never-trusted peers that expired, and the
// oldest beyond MaxUntrusted. The Store also prunes in Open and whenever a
// message from a peer arrives; a long-running process calls Prune
// periodically so that expiry does not wait for traffic. Each deleted record
// publishes an Event whose Record has State 0.
func (s *Store) Prune() error {
	s.mu.Lock()
	due := !s.nextExpiry.IsZero() && !s.now().Before(s.nextExpiry) || s.untrusted > MaxUntrusted
	s.mu.Unlock()
	if !due {
		return nil
	}
	err := s.update("prune", func(tx *bolt.Tx, c *change) error {
		return s.pruneLocked(tx, c, s.now())
	})
	if err != nil {
		return fmt.Errorf("trustdb: prune: %w", err)
	}
	return nil
}

// Forget deletes the record of peer k, which must not be trusted (revoke
// first): a request waiting for our decision is dropped without an answer,
// and the history of a rejected or revoked peer is gone, so its next
// request is new. No record fails with ErrUnexpected. It publishes an Event
// whose Record has State 0 and returns the record deleted.
func (s *Store) Forget(k addressing.PublicKey) (Record, error) {
	var out Record
	err := s.update("forget", func(tx *bolt.Tx, c *change) error {
		r, ok := getRecord(tx, k)
		if !ok {
			return fmt.Errorf("no record: %w", ErrUnexpected)
		}
		if r.State == StateTrusted {
			return fmt.Errorf("peer is trusted (revoke it first): %w", ErrUnexpected)
		}
		if err := tx.Bucket(bucketRecords).Delete(k[:]); err != nil {
			return err
		}
		if isUntrusted(r) {
			c.untrusted--
		}
		c.events = append(c.events, Event{Key: k, Old: r.State, Record: Record{Key: k}})
		out = r
		return nil
	})
	if err != nil {
		return Record{}, fmt.Errorf("trustdb: forget %s: %w", k, err)
	}
	return out, nil
}

// ForgetRequests deletes our pending-out requests to target (whose key we
// do not know yet), and their messages if they still wait in the outbox
// (a request already delivered may still be answered; the answer is then
// refused as unexpected). It returns the records deleted; none is not an
// error. Each publishes an Event whose Record has State 0.
func (s *Store) ForgetRequests(target addressing.Target) ([]Record, error) {
	var out []Record
	err := s.update("forget", func(tx *bolt.Tx, c *change) error {
		out = nil
		rs, err := s.dropRequestsLocked(tx, c, target.String())
		out = rs
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("trustdb: forget requests to %s: %w", target, err)
	}
	return out, nil
}

// dropRequestsLocked deletes the pending-out records whose Target is
// target, and their undelivered requests in the outbox.
func (s *Store) dropRequestsLocked(tx *bolt.Tx, c *change, target string) ([]Record, error) {
	var out []Record
	pb := tx.Bucket(bucketPending)
	err := pb.ForEach(func(k, v []byte) error {
		r, err := ParseRecord(v)
		if err != nil {
			return err
		}
		if r.Target == target {
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, nil
	}
	for _, r := range out {
		if err := pb.Delete(r.Nonce[:]); err != nil {
			return nil, err
		}
		c.events = append(c.events, Event{Old: StatePendingOut, Record: Record{Target: r.Target, Nonce: r.Nonce}})
	}
	ob := tx.Bucket(bucketOutbox)
	var drop [][]byte
	err = ob.ForEach(func(k, v []byte) error {
		m, err := ParseMessage(v)
		if err != nil || m.Kind != KindRequest {
			return nil
		}
		for _, r := range out {
			if m.Nonce == r.Nonce {
				drop = append(drop, bytes.Clone(k))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range drop {
		if err := ob.Delete(k); err != nil {
			return nil, err
		}
		c.outbox--
	}
	return out, nil
}

// Backup writes a consistent copy of the database to dir/trust.db.bak,
// atomically (a temporary file, fsync, rename, directory fsync), unless
// nothing was committed since the last copy. Open (after verifying the
// database) and Close call it; a long-running process calls it
// periodically. To restore, stop the process and copy trust.db.bak over
// trust.db.
func (s *Store) Backup() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed("backup")
	}
	return s.backupLocked(false)
}

func (s *Store) backupLocked(force bool) error {
	bak := filepath.Join(s.dir, BackupFile)
	if !force && s.commits == s.backedUp {
		if _, err := os.Stat(bak); err == nil {
			return nil
		}
	}
	commits := s.commits
	tmp := bak + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("trustdb: backup: %w", err)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(f)
		return err
	})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, bak)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("trustdb: backup to %s: %w", bak, err)
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.backedUp = commits
	return nil
}
