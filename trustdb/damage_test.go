package trustdb

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
)

// damageFixture makes a closed store with a trusted peer and enough data
// (large settings) to span a few dozen pages, and returns its directory,
// the peer's key and the settings written.
func damageFixture(t *testing.T) (dir string, peer addressing.PublicKey, meta map[string][]byte) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	require.NoError(t, err)
	p := newTestIdentity(t)
	e := &testEnv{s: s, peer: p, clock: time.Now().Add(-time.Hour)}
	require.NoError(t, peerRequests(t, e))
	require.NoError(t, weApprove(t, e))
	meta = map[string][]byte{}
	rng := rand.NewChaCha8([32]byte{1})
	for i := range 4 {
		v := make([]byte, 20<<10)
		rng.Read(v)
		k := "blob" + string(rune('a'+i))
		meta[k] = v
		require.NoError(t, s.SetMeta(k, v))
	}
	require.NoError(t, s.Close())
	return dir, p.PublicKey(), meta
}

// snapshot returns the name and SHA-256 of every file in dir.
func snapshot(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		out[e.Name()] = sha256.Sum256(b)
	}
	return out
}

func pageSize(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	m, err := parseBoltMeta(b)
	require.NoError(t, err)
	return int64(m.pageSize)
}

// liveMeta returns the meta page bbolt uses (the newer transaction).
func liveMeta(t *testing.T, path string) boltMeta {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	m0, err := parseBoltMeta(b)
	require.NoError(t, err)
	m1, err := parseBoltMeta(b[m0.pageSize:])
	require.NoError(t, err)
	if m1.txid > m0.txid {
		return m1
	}
	return m0
}

// scribble overwrites [off, off+n) of the file at path with random bytes.
func scribble(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{2}).Read(b)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

// TestOpenDamagedStore damages a store's files in the ways issue 9 found
// (and a few more) and requires Open to refuse every one with a
// *DamagedError whose hint names the verified backup, to write nothing (no
// file changes, none appears), and the backup to restore the store. Before
// the fix an empty or missing trust.db opened as a fresh store, a
// truncated one killed the process with SIGBUS inside bbolt, random bytes
// over the freelist page panicked ("invalid freelist page"), and random
// bytes over meta page 0 rolled back silently.
func TestOpenDamagedStore(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string, peer addressing.PublicKey)
		reason string // part of the error
		file   string // the file reported
	}{
		{"empty", func(t *testing.T, dir string, peer addressing.PublicKey) {
			require.NoError(t, os.Truncate(filepath.Join(dir, DatabaseFile), 0))
		}, "empty", DatabaseFile},
		{"truncated to 16 KiB", func(t *testing.T, dir string, peer addressing.PublicKey) {
			require.NoError(t, os.Truncate(filepath.Join(dir, DatabaseFile), 16<<10))
		}, "truncated", DatabaseFile},
		{"truncated by one page in use", func(t *testing.T, dir string, peer addressing.PublicKey) {
			p := filepath.Join(dir, DatabaseFile)
			m := liveMeta(t, p)
			require.NoError(t, os.Truncate(p, int64(m.hwm-1)*int64(m.pageSize)))
		}, "truncated", DatabaseFile},
		{"random bytes over meta page 0", func(t *testing.T, dir string, peer addressing.PublicKey) {
			p := filepath.Join(dir, DatabaseFile)
			scribble(t, p, 0, pageSize(t, p))
		}, "meta page 0", DatabaseFile},
		{"random bytes over meta page 1", func(t *testing.T, dir string, peer addressing.PublicKey) {
			p := filepath.Join(dir, DatabaseFile)
			ps := pageSize(t, p)
			scribble(t, p, ps, ps)
		}, "meta page 1", DatabaseFile},
		{"random bytes over the freelist page", func(t *testing.T, dir string, peer addressing.PublicKey) {
			p := filepath.Join(dir, DatabaseFile)
			m := liveMeta(t, p)
			scribble(t, p, int64(m.freelist)*int64(m.pageSize), int64(m.pageSize))
		}, "", DatabaseFile},
		{"random bytes over the root page", func(t *testing.T, dir string, peer addressing.PublicKey) {
			p := filepath.Join(dir, DatabaseFile)
			m := liveMeta(t, p)
			scribble(t, p, int64(m.root)*int64(m.pageSize), int64(m.pageSize))
		}, "", DatabaseFile},
		{"random file", func(t *testing.T, dir string, peer addressing.PublicKey) {
			p := filepath.Join(dir, DatabaseFile)
			fi, err := os.Stat(p)
			require.NoError(t, err)
			scribble(t, p, 0, fi.Size())
		}, "both meta pages", DatabaseFile},
		{"a record's state byte", func(t *testing.T, dir string, peer addressing.PublicKey) {
			p := filepath.Join(dir, DatabaseFile)
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			// The trusted record: version 2, state 3 (trusted), then the key.
			// Every copy (freed pages may hold older ones).
			pat := append([]byte{recordVersion, byte(StateTrusted)}, peer[:]...)
			require.Positive(t, bytes.Count(b, pat))
			b = bytes.ReplaceAll(b, pat, append([]byte{recordVersion, 9}, peer[:]...))
			require.NoError(t, os.WriteFile(p, b, 0o600))
		}, "record", DatabaseFile},
		{"trust.db missing", func(t *testing.T, dir string, peer addressing.PublicKey) {
			require.NoError(t, os.Remove(filepath.Join(dir, DatabaseFile)))
		}, "missing", DatabaseFile},
		{"identity.key missing", func(t *testing.T, dir string, peer addressing.PublicKey) {
			require.NoError(t, os.Remove(filepath.Join(dir, IdentityFile)))
		}, "missing", IdentityFile},
		{"identity.key empty", func(t *testing.T, dir string, peer addressing.PublicKey) {
			require.NoError(t, os.Truncate(filepath.Join(dir, IdentityFile), 0))
		}, "malformed", IdentityFile},
		{"identity.key garbage", func(t *testing.T, dir string, peer addressing.PublicKey) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, IdentityFile), []byte("agentnet identity v1\nseed xx\n"), 0o600))
		}, "malformed", IdentityFile},
		{"identity.key readable by others", func(t *testing.T, dir string, peer addressing.PublicKey) {
			require.NoError(t, os.Chmod(filepath.Join(dir, IdentityFile), 0o644))
		}, "0644", IdentityFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, peer, meta := damageFixture(t)
			tt.damage(t, dir, peer)
			before := snapshot(t, dir)
			s, err := Open(dir)
			if err == nil {
				s.Close()
			}
			require.Error(t, err, "a damaged store must not open")
			require.ErrorIs(t, err, ErrDamaged)
			var de *DamagedError
			require.True(t, errors.As(err, &de))
			require.Equal(t, filepath.Join(dir, tt.file), de.Path)
			require.Contains(t, err.Error(), tt.reason)
			require.NotEmpty(t, de.Hint())
			require.Equal(t, before, snapshot(t, dir), "nothing written, nothing created")

			if tt.file != DatabaseFile {
				return
			}
			// The hint names the verified last good copy; restoring it
			// brings everything back.
			bak := filepath.Join(dir, BackupFile)
			require.Equal(t, bak, de.Backup)
			require.Contains(t, de.Hint(), bak)
			b, err := os.ReadFile(bak)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(dir, DatabaseFile), b, 0o600))
			s, err = Open(dir)
			require.NoError(t, err)
			defer s.Close()
			require.True(t, s.IsTrusted(peer))
			for k, v := range meta {
				got, ok := s.Meta(k)
				require.True(t, ok)
				require.Equal(t, v, got)
			}
		})
	}
}

// TestOpenDamagedNoBackup: without a verified copy the hint says so.
func TestOpenDamagedNoBackup(t *testing.T) {
	dir, _, _ := damageFixture(t)
	require.NoError(t, os.Truncate(filepath.Join(dir, BackupFile), 100))
	require.NoError(t, os.Truncate(filepath.Join(dir, DatabaseFile), 0))
	_, err := Open(dir)
	var de *DamagedError
	require.True(t, errors.As(err, &de))
	require.Empty(t, de.Backup, "a damaged backup is not offered")
	require.Contains(t, de.Hint(), "no verified copy")
}

// TestBackupTracksChanges: Close refreshes the copy after a change; a store
// reopened from the copy has everything committed before the clean close.
func TestBackupTracksChanges(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	require.NoError(t, err)
	require.NoError(t, s.SetMeta("k", []byte("v1")))
	require.NoError(t, s.Backup())
	fi1, err := os.Stat(filepath.Join(dir, BackupFile))
	require.NoError(t, err)
	require.NoError(t, s.Backup(), "nothing changed: no new copy")
	fi2, err := os.Stat(filepath.Join(dir, BackupFile))
	require.NoError(t, err)
	require.Equal(t, fi1.ModTime(), fi2.ModTime())
	require.NoError(t, s.SetMeta("k", []byte("v2")))
	require.NoError(t, s.Close())
	require.NoError(t, os.Rename(filepath.Join(dir, BackupFile), filepath.Join(dir, DatabaseFile)))
	s, err = Open(dir)
	require.NoError(t, err)
	defer s.Close()
	v, _ := s.Meta("k")
	require.Equal(t, "v2", string(v))
}

// TestCreateInterrupted: a creation that died after writing the key but
// before installing its database is finished by the next Open; a leftover
// database of another identity is not installed.
func TestCreateInterrupted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	require.NoError(t, err)
	id := s.Identity().PublicKey()
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(filepath.Join(dir, BackupFile)))
	require.NoError(t, os.Rename(filepath.Join(dir, DatabaseFile), filepath.Join(dir, DatabaseFile+".new")))
	s, err = Open(dir)
	require.NoError(t, err, "the interrupted creation is finished")
	require.Equal(t, id, s.Identity().PublicKey())
	require.NoError(t, s.Close())

	// Another identity's database under the temporary name: damage.
	other := filepath.Join(t.TempDir(), "other")
	s2, err := Open(other)
	require.NoError(t, err)
	require.NoError(t, s2.Close())
	require.NoError(t, os.Remove(filepath.Join(dir, DatabaseFile)))
	b, err := os.ReadFile(filepath.Join(other, DatabaseFile))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, DatabaseFile+".new"), b, 0o600))
	_, err = Open(dir)
	require.ErrorIs(t, err, ErrDamaged)
	require.ErrorContains(t, err, "missing")
}

// TestFreshStoreLeavesNoTemporaryFiles: a new store is exactly the key,
// the database and (after Close) its copy.
func TestFreshStoreLeavesNoTemporaryFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	var names []string
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	require.Equal(t, []string{IdentityFile, DatabaseFile, BackupFile}, names)
}

// boltFileSeeds returns a store file and the seeds of FuzzCheckBoltMetas's
// corpus: that file cut after the pages its meta pages use (valid; the
// whole file, 64 KiB, is four times that quoted), and small made-up files
// of 1 KiB pages: valid, truncated, with meta page 0 damaged, and empty.
func boltFileSeeds(tb testing.TB) (good []byte, seeds [][]byte) {
	dir := filepath.Join(tb.TempDir(), "state")
	s, err := Open(dir)
	require.NoError(tb, err)
	require.NoError(tb, s.SetMeta("x", bytes.Repeat([]byte("y"), 9000)))
	require.NoError(tb, s.Close())
	good, err = os.ReadFile(filepath.Join(dir, DatabaseFile))
	require.NoError(tb, err)
	m0, err := parseBoltMeta(good)
	require.NoError(tb, err)
	m1, err := parseBoltMeta(good[m0.pageSize:])
	require.NoError(tb, err)
	used := good[:max(m0.hwm, m1.hwm)*uint64(m0.pageSize)]
	small := boltTestFile(4, 4)
	truncated := boltTestFile(5, 4)
	damaged := bytes.Clone(small)
	damaged[boltPageHeader+20] ^= 1 // the root page number, under the checksum
	for _, b := range [][]byte{used, small} {
		require.NoError(tb, checkBoltMetas(bytes.NewReader(b), int64(len(b))))
	}
	require.ErrorContains(tb, checkBoltMetas(bytes.NewReader(truncated), int64(len(truncated))), "truncated")
	require.ErrorContains(tb, checkBoltMetas(bytes.NewReader(damaged), int64(len(damaged))), "meta page 0 is damaged (checksum mismatch)")
	return good, [][]byte{used, small, truncated, damaged, {}}
}

// boltTestFile is a made-up bbolt file of the given number of 1 KiB pages
// whose two meta pages name hwm pages (root at 3, freelist at 2).
func boltTestFile(hwm, pages int) []byte {
	b := make([]byte, pages*boltMinPage)
	ne := binary.NativeEndian
	for i := range 2 {
		p := b[i*boltMinPage:]
		ne.PutUint64(p[0:], uint64(i))
		ne.PutUint16(p[8:], 0x04) // meta page flag
		m := p[boltPageHeader : boltPageHeader+boltMetaSize]
		ne.PutUint32(m[0:], boltMagic)
		ne.PutUint32(m[4:], boltVersion)
		ne.PutUint32(m[8:], boltMinPage)
		ne.PutUint64(m[16:], 3)
		ne.PutUint64(m[32:], 2)
		ne.PutUint64(m[40:], uint64(hwm))
		ne.PutUint64(m[48:], uint64(7+i))
		h := fnv.New64a()
		h.Write(m[:56])
		ne.PutUint64(m[56:], h.Sum64())
	}
	return b
}

// FuzzCheckBoltMetas feeds checkBoltMetas arbitrary file contents: it must
// never panic, and a file it accepts must have two valid meta pages that
// fit the file.
func FuzzCheckBoltMetas(f *testing.F) {
	good, seeds := boltFileSeeds(f)
	f.Add(good)
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := checkBoltMetas(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		m0, err := parseBoltMeta(b)
		require.NoError(t, err)
		m1, err := parseBoltMeta(b[m0.pageSize:])
		require.NoError(t, err)
		require.LessOrEqual(t, int64(m0.hwm)*int64(m0.pageSize), int64(len(b)))
		require.LessOrEqual(t, int64(m1.hwm)*int64(m1.pageSize), int64(len(b)))
	})
}
