package rendezvous_test

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/agentnet/agentnet/rendezvous"
)

// startServer starts a server on 127.0.0.1 with cfg, or returns Start's
// error; a started server is closed in Cleanup.
func startServer(t *testing.T, cfg rendezvous.ServerConfig) (*rendezvous.Server, error) {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	cfg.STUNAddr, cfg.RelayAddr = "-", "-"
	srv, err := rendezvous.NewServer(cfg)
	require.NoError(t, err)
	if err := srv.Start(); err != nil {
		require.NoError(t, srv.Close())
		return nil, err
	}
	t.Cleanup(func() { srv.Close() })
	return srv, nil
}

// populatedDataDir returns a data directory whose store holds n agents and
// has a last good copy, as a server that ran and shut down cleanly leaves
// it.
func populatedDataDir(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	srv, err := startServer(t, rendezvous.ServerConfig{DataDir: dir})
	require.NoError(t, err)
	require.NoError(t, srv.Close())
	st, err := rendezvous.OpenBoltStore(filepath.Join(dir, "rendezvous.db"))
	require.NoError(t, err)
	require.NoError(t, st.Update(func(tx rendezvous.Tx) error {
		for i := range n {
			rec := rendezvous.AgentRecord{Key: newID(t).PublicKey(), Hostname: fmt.Sprintf("agent-%d", i), Created: time.Now(), LastSeen: time.Now()}
			if err := tx.PutAgent(rec); err != nil {
				return err
			}
		}
		return nil
	}))
	require.NoError(t, st.Close())
	srv, err = startServer(t, rendezvous.ServerConfig{DataDir: dir})
	require.NoError(t, err)
	require.NoError(t, srv.Close()) // writes rendezvous.db.last-good
	return dir
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

func agentCount(t *testing.T, path string) int {
	t.Helper()
	st, err := rendezvous.OpenBoltStore(path)
	require.NoError(t, err)
	defer st.Close()
	var n int
	require.NoError(t, st.View(func(tx rendezvous.Tx) (err error) {
		n, err = tx.AgentCount()
		return err
	}))
	return n
}

// usedPages returns the IDs among ids of pages the store uses (branch,
// leaf, freelist), as bbolt reports them.
func usedPages(t *testing.T, path string, ids []int) []int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	require.NoError(t, err)
	defer db.Close()
	var used []int
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		for _, id := range ids {
			info, err := tx.Page(id)
			if err != nil {
				return err
			}
			if info != nil && (info.Type == "leaf" || info.Type == "branch" || info.Type == "freelist") {
				used = append(used, id)
			}
		}
		return nil
	}))
	return used
}

// TestDamagedStoreRefused damages the store file the ways a disk or an
// operator does, and checks that the server refuses to start with a clear
// error, leaves the file byte for byte as it was, and that the restore
// command the error gives brings back every agent. (Before the check, the
// empty file opened as a fresh store, the truncated one faulted inside
// bbolt, and a damaged page 0 rolled back to an older transaction.)
func TestDamagedStoreRefused(t *testing.T) {
	const agents = 400
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
		want   string
	}{
		{"empty", func(t *testing.T, path string) { require.NoError(t, os.Truncate(path, 0)) }, "empty"},
		{"truncated to 16 KiB", func(t *testing.T, path string) { require.NoError(t, os.Truncate(path, 16<<10)) }, "truncated"},
		{"random bytes over pages 4-7", func(t *testing.T, path string) {
			require.NotEmpty(t, usedPages(t, path, []int{4, 5, 6, 7}), "pages 4-7 must hold data for the test to mean anything")
			overwrite(t, path, 4*4096, 4*4096)
		}, ""},
		{"random bytes over page 0", func(t *testing.T, path string) { overwrite(t, path, 0, 4096) }, "meta page 0"},
		{"random bytes over page 1", func(t *testing.T, path string) { overwrite(t, path, 4096, 4096) }, "meta page 1"},
		{"random bytes inside a leaf page", func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			require.NoError(t, err)
			var ids []int
			for id := 2; id < int(fi.Size()/4096); id++ {
				ids = append(ids, id)
			}
			used := usedPages(t, path, ids)
			require.NotEmpty(t, used)
			// Keep the page header: bad content, not a bad page type.
			overwrite(t, path, int64(used[len(used)/2])*4096+16, 4096-16)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := populatedDataDir(t, agents)
			path := filepath.Join(dir, "rendezvous.db")
			tc.damage(t, path)
			before := fileHash(t, path)

			_, err := startServer(t, rendezvous.ServerConfig{DataDir: dir})
			require.ErrorIs(t, err, rendezvous.ErrStoreDamaged)
			require.Contains(t, err.Error(), tc.want)
			require.Contains(t, err.Error(), "will not open or overwrite it")
			t.Logf("%v", err)
			require.Equal(t, before, fileHash(t, path), "the damaged file is left as it was")
			// Again: still refused (nothing was "repaired" into an empty store).
			_, err = startServer(t, rendezvous.ServerConfig{DataDir: dir})
			require.ErrorIs(t, err, rendezvous.ErrStoreDamaged)

			// The restore command from the error works as written.
			msg := err.Error()
			cmd := msg[strings.Index(msg, "mv "):]
			out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
			require.NoError(t, err, "%s: %s", cmd, out)
			srv, err := startServer(t, rendezvous.ServerConfig{DataDir: dir})
			require.NoError(t, err)
			require.NoError(t, srv.Close())
			require.Equal(t, agents, agentCount(t, path))
			require.Equal(t, before, fileHash(t, path+".damaged"))
		})
	}
}

func overwrite(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, n)
	rand.Read(b)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

// TestStoreAndIdentityMustMatch: a server whose identity exists never
// starts on a missing store, a server whose identity is missing never
// invents a new one for a store that holds state, and a store of another
// server key is refused. (Before, the first two started as a fresh server.)
func TestStoreAndIdentityMustMatch(t *testing.T) {
	t.Run("store missing", func(t *testing.T) {
		dir := populatedDataDir(t, 1)
		require.NoError(t, os.Remove(filepath.Join(dir, "rendezvous.db")))
		_, err := startServer(t, rendezvous.ServerConfig{DataDir: dir})
		require.ErrorIs(t, err, rendezvous.ErrStoreMismatch)
		require.Contains(t, err.Error(), "rendezvous.db.last-good")
		_, err = os.Stat(filepath.Join(dir, "rendezvous.db"))
		require.ErrorIs(t, err, os.ErrNotExist, "no empty store was created")
		// The operator's deliberate fresh start.
		srv, err := startServer(t, rendezvous.ServerConfig{DataDir: dir, InitStore: true})
		require.NoError(t, err)
		require.NoError(t, srv.Close())
	})
	t.Run("identity missing", func(t *testing.T) {
		dir := populatedDataDir(t, 1)
		require.NoError(t, os.Remove(filepath.Join(dir, "identity.key")))
		_, err := startServer(t, rendezvous.ServerConfig{DataDir: dir})
		require.ErrorIs(t, err, rendezvous.ErrStoreMismatch)
		require.Contains(t, err.Error(), "restore the identity file")
		_, err = os.Stat(filepath.Join(dir, "identity.key"))
		require.ErrorIs(t, err, os.ErrNotExist, "no new identity was created")
	})
	// The Store cases, on each store (an EtcdStore on its own prefix of the
	// shared cluster).
	stores := []struct {
		name string
		open func(t *testing.T) rendezvous.Store
	}{
		{"bbolt", func(t *testing.T) rendezvous.Store {
			st, err := rendezvous.OpenBoltStore(filepath.Join(t.TempDir(), "other.db"))
			require.NoError(t, err)
			return st
		}},
		{"etcd", func(t *testing.T) rendezvous.Store { return openEtcd(t, sharedEtcd, t.TempDir()) }},
	}
	for _, sc := range stores {
		t.Run("another server's store/"+sc.name, func(t *testing.T) {
			st := sc.open(t)
			defer st.Close()
			srv, err := startServer(t, rendezvous.ServerConfig{Store: st, Identity: newID(t)})
			require.NoError(t, err)
			require.NoError(t, srv.Close())
			require.NoError(t, st.Update(func(tx rendezvous.Tx) error {
				return tx.PutAgent(rendezvous.AgentRecord{Key: newID(t).PublicKey(), Created: time.Now(), LastSeen: time.Now()})
			}))
			_, err = startServer(t, rendezvous.ServerConfig{Store: st, Identity: newID(t)})
			require.ErrorIs(t, err, rendezvous.ErrStoreMismatch)
			require.Contains(t, err.Error(), "belongs to server key")
		})
		t.Run("empty Store with an existing identity/"+sc.name, func(t *testing.T) {
			dir := populatedDataDir(t, 1)
			st := sc.open(t)
			defer st.Close()
			_, err := startServer(t, rendezvous.ServerConfig{DataDir: dir, Store: st})
			require.ErrorIs(t, err, rendezvous.ErrStoreMismatch)
			srv, err := startServer(t, rendezvous.ServerConfig{DataDir: dir, Store: st, InitStore: true})
			require.NoError(t, err)
			require.NoError(t, srv.Close())
			// From now on it is this server's store.
			srv, err = startServer(t, rendezvous.ServerConfig{DataDir: dir, Store: st})
			require.NoError(t, err)
			require.NoError(t, srv.Close())
		})
	}
}
