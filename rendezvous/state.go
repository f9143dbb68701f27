package rendezvous

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/agentnet/agentnet/addressing"
	"github.com/agentnet/agentnet/trustdb"
)

// Files in ServerConfig.DataDir.
const (
	identityFile = "identity.key"
	storeFile    = "rendezvous.db"
)

// openState loads the identity and opens the store (Start), refusing any
// combination that would serve from the wrong state: a store file that is
// missing while the identity exists, a store of another server key, an
// identity file that is missing while the store holds state, or (for a
// ServerConfig.Store) a store with no server key while the identity
// existed. ServerConfig.InitStore allows the empty store in the first and
// last cases. The store file is created before the identity on a first
// start, so a crash in between never looks like a lost store.
func (s *Server) openState() (err error) {
	dir := s.cfg.DataDir
	idPath, dbPath := filepath.Join(dir, identityFile), filepath.Join(dir, storeFile)
	idExisted := false
	if s.id == nil && dir != "" {
		switch _, err := os.Stat(idPath); {
		case err == nil:
			idExisted = true
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("rendezvous: server identity: %w", err)
		}
	}
	switch {
	case s.cfg.Store != nil:
		s.store = s.cfg.Store
	case dir != "":
		if idExisted && !s.cfg.InitStore {
			if _, err := os.Stat(dbPath); errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w: %s is missing but the server identity %s exists: refusing to start with an empty store "+
					"(restore %s, or its last good copy %s%s; to start empty on purpose, set InitStore / -init-store)",
					ErrStoreMismatch, dbPath, idPath, dbPath, dbPath, snapshotSuffix)
			}
		}
		var bs *BoltStore
		if bs, err = OpenBoltStore(dbPath); err != nil {
			return err
		}
		s.store, s.ownStore, s.snapshot = bs, true, dbPath+snapshotSuffix
	default:
		if s.store, err = openTempStore(); err != nil {
			return err
		}
		s.ownStore = true
	}

	var marked addressing.PublicKey
	var hasMark, hasState bool
	err = s.store.View(func(tx Tx) error {
		var err error
		if marked, hasMark, err = tx.ServerKey(); err != nil {
			return err
		}
		n, err := tx.AgentCount()
		hasState = n > 0
		return err
	})
	if err != nil {
		return fmt.Errorf("rendezvous: read store: %w", err)
	}
	if s.id == nil {
		if dir == "" {
			s.id, err = trustdb.GenerateIdentity()
		} else {
			if !idExisted && hasMark && hasState {
				return fmt.Errorf("%w: %s is missing but the store %s belongs to server key %s and holds registrations: "+
					"restore the identity file (a new key would not match the key agents pinned)", ErrStoreMismatch, idPath, dbPath, marked)
			}
			s.id, _, err = trustdb.LoadOrCreateIdentity(idPath)
		}
		if err != nil {
			return fmt.Errorf("rendezvous: server identity: %w", err)
		}
	}
	me := s.id.PublicKey()
	switch {
	case hasMark && marked == me:
		return nil
	case hasMark && hasState:
		return fmt.Errorf("%w: the store belongs to server key %s, but this server's key is %s", ErrStoreMismatch, marked, me)
	case !hasMark && idExisted && s.cfg.Store != nil && !s.cfg.InitStore:
		return fmt.Errorf("%w: the store has no record of this server (empty, or another store): refusing to start with it "+
			"while the identity %s exists (to start empty on purpose, set InitStore / -init-store)", ErrStoreMismatch, idPath)
	}
	// A new store, one from before server keys were recorded, or an empty
	// one left by a first start that crashed before its identity was
	// written: it is ours now.
	err = s.store.Update(func(tx Tx) error { return tx.PutServerKey(me) })
	if err != nil {
		return fmt.Errorf("rendezvous: write store: %w", err)
	}
	return nil
}
