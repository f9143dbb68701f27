package rendezvous

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// boltTestMeta writes a bbolt meta page (page id, magic, version, page
// size, high-water mark, transaction, checksum) at the start of p.
func boltTestMeta(p []byte, id uint64, pageSize uint32, pgid, txid uint64) {
	e := binary.NativeEndian
	e.PutUint64(p[0:], id)
	e.PutUint16(p[8:], 0x04) // meta page flag
	m := p[boltPageHeader : boltPageHeader+boltMetaSize]
	e.PutUint32(m[0:], boltMagic)
	e.PutUint32(m[4:], boltVersion)
	e.PutUint32(m[8:], pageSize)
	e.PutUint64(m[16:], 3) // root bucket page
	e.PutUint64(m[32:], 2) // freelist page
	e.PutUint64(m[40:], pgid)
	e.PutUint64(m[48:], txid)
	fixBoltChecksum(m)
}

// fixBoltChecksum sets the checksum of the meta m (the 64 bytes after the
// page header) to match its other fields.
func fixBoltChecksum(m []byte) {
	h := fnv.New64a()
	h.Write(m[:56])
	binary.NativeEndian.PutUint64(m[56:], h.Sum64())
}

// boltTestFile is a file of pgid pages of pageSize bytes whose two meta
// pages hold transactions tx0 and tx1.
func boltTestFile(pageSize uint32, pgid, tx0, tx1 uint64) []byte {
	b := make([]byte, uint64(pageSize)*pgid)
	boltTestMeta(b, 0, pageSize, pgid, tx0)
	boltTestMeta(b[pageSize:], 1, pageSize, pgid, tx1)
	return b
}

func boltMetaSeeds(t testing.TB) [][]byte {
	good := boltTestFile(1024, 2, 2, 3)
	damaged := bytes.Clone(good)
	damaged[boltPageHeader+20] ^= 1 // page 0's root, under its checksum
	skipped := boltTestFile(1024, 2, 2, 5)
	pages2k := boltTestFile(2048, 2, 8, 7)
	// A real store's file: cut inside its second meta page.
	path := filepath.Join(t.TempDir(), "r.db")
	st, err := OpenBoltStore(path)
	require.NoError(t, err)
	require.NoError(t, st.Close())
	file, err := os.ReadFile(path)
	require.NoError(t, err)
	return [][]byte{good, damaged, skipped, pages2k, good[:len(good)-1], file[:4096+boltPageHeader+boltMetaSize], {}, []byte("not a bbolt file")}
}

// FuzzParseBoltMeta feeds the bbolt meta page parser and the store file
// check (checkBoltHead) arbitrary file contents. With fix set, the
// checksums of the meta pages at 0 and at every possible page size are made
// to match first, so the fuzzer gets past them to the fields the checks
// read. Neither may panic, and a file the check accepts must hold two valid
// meta pages of one page size with consecutive transactions, and every page
// the newer one names.
func FuzzParseBoltMeta(f *testing.F) {
	for _, s := range boltMetaSeeds(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix {
			b = bytes.Clone(b)
			for _, off := range []int{0, 1024, 2048, 4096, 8192, 16384, 32768, 65536} {
				if off+boltPageHeader+boltMetaSize <= len(b) {
					fixBoltChecksum(b[off+boltPageHeader : off+boltPageHeader+boltMetaSize])
				}
			}
		}
		_, _ = parseBoltMeta(b)
		what, err := checkBoltHead(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("reading from memory failed: %v", err)
		}
		if what != "" {
			return
		}
		m0, err := parseBoltMeta(b)
		if err != nil {
			t.Fatalf("accepted with meta page 0 damaged: %v", err)
		}
		ps := uint64(m0.pageSize)
		if ps < 1024 || ps > 65536 || ps&(ps-1) != 0 {
			t.Fatalf("accepted with page size %d", ps)
		}
		m1, err := parseBoltMeta(b[ps:])
		if err != nil {
			t.Fatalf("accepted with meta page 1 damaged: %v", err)
		}
		if m1.pageSize != m0.pageSize {
			t.Fatalf("accepted with page sizes %d and %d", m0.pageSize, m1.pageSize)
		}
		if m0.txid != m1.txid+1 && m1.txid != m0.txid+1 {
			t.Fatalf("accepted with transactions %d and %d", m0.txid, m1.txid)
		}
		cur := m0
		if m1.txid > m0.txid {
			cur = m1
		}
		if cur.pgid > uint64(len(b))/ps {
			t.Fatalf("accepted a %d-byte file whose newest meta page names %d pages of %d bytes", len(b), cur.pgid, ps)
		}
	})
}

func TestCheckBoltHead(t *testing.T) {
	s := boltMetaSeeds(t)
	for i, want := range []string{"", "meta page 0 is damaged (checksum mismatch)", "not consecutive", "", "truncated", "truncated", "empty", "no valid meta page"} {
		what, err := checkBoltHead(bytes.NewReader(s[i]), int64(len(s[i])))
		require.NoError(t, err)
		if want == "" {
			require.Empty(t, what, "seed %d", i)
		} else {
			require.Contains(t, what, want, "seed %d", i)
		}
	}
	// A high-water mark whose size in bytes overflows an int64.
	b := boltTestFile(1024, 2, 2, 3)
	boltTestMeta(b[1024:], 1, 1024, 1<<60, 3)
	what, err := checkBoltHead(bytes.NewReader(b), int64(len(b)))
	require.NoError(t, err)
	require.Contains(t, what, "truncated: 2048 bytes, but its newest meta page names 1152921504606846976 pages of 1024 bytes")
}

// TestWriteBoltMetaSeeds rewrites testdata/fuzz/FuzzParseBoltMeta with
// -update-seeds (and checks the generator otherwise).
func TestWriteBoltMetaSeeds(t *testing.T) {
	root := t.TempDir()
	if *updateSeeds {
		root = filepath.Join("testdata", "fuzz")
	}
	dir := filepath.Join(root, "FuzzParseBoltMeta")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for i, s := range boltMetaSeeds(t) {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbool(false)\n", s)
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644))
	}
}
