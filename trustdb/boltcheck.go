package trustdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt's file layout, as far as checkBoltFile needs it (go.etcd.io/bbolt
// internal/common: page.go, meta.go). Every page starts with a 16-byte
// header; pages 0 and 1 are the two meta pages, written alternately by
// commits, each carrying a checksum:
//
//	page header: id (8) | flags (2) | count (2) | overflow (4)
//	meta, at page offset 16, native byte order:
//	  magic (4) = 0xED0CDAED | version (4) = 2 | page size (4) | flags (4)
//	  root bucket: root page (8) | sequence (8)
//	  freelist page (8) | high water mark (8) | txid (8)
//	  checksum (8) = FNV-1a 64 of the 56 meta bytes before it
const (
	boltPageHeader = 16
	boltMetaSize   = 64 // meta bytes including the checksum
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	boltMinPage    = 1024
	boltMaxPage    = 64 << 10
	boltNoFreelist = ^uint64(0)
)

// boltMeta is a decoded meta page.
type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	hwm      uint64 // high water mark: pages [0, hwm) are in use
	txid     uint64
}

// parseBoltMeta decodes the meta page at the start of b and checks its
// magic, version, checksum and internal consistency.
func parseBoltMeta(b []byte) (boltMeta, error) {
	if len(b) < boltPageHeader+boltMetaSize {
		return boltMeta{}, errors.New("shorter than a meta page")
	}
	m := b[boltPageHeader : boltPageHeader+boltMetaSize]
	ne := binary.NativeEndian
	if ne.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, errors.New("no bbolt magic number")
	}
	if v := ne.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("bbolt format version %d, want %d", v, boltVersion)
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if ne.Uint64(m[56:]) != h.Sum64() {
		return boltMeta{}, errors.New("checksum mismatch")
	}
	meta := boltMeta{
		pageSize: ne.Uint32(m[8:]),
		root:     ne.Uint64(m[16:]),
		freelist: ne.Uint64(m[32:]),
		hwm:      ne.Uint64(m[40:]),
		txid:     ne.Uint64(m[48:]),
	}
	ps := meta.pageSize
	if ps < boltMinPage || ps > boltMaxPage || ps&(ps-1) != 0 {
		return boltMeta{}, fmt.Errorf("page size %d", ps)
	}
	switch {
	case meta.hwm < 4 || meta.hwm > 1<<40:
		return boltMeta{}, fmt.Errorf("high water mark %d out of range", meta.hwm)
	case meta.root < 2 || meta.root >= meta.hwm:
		return boltMeta{}, fmt.Errorf("root page %d outside [2, %d)", meta.root, meta.hwm)
	case meta.freelist != boltNoFreelist && (meta.freelist < 2 || meta.freelist >= meta.hwm):
		return boltMeta{}, fmt.Errorf("freelist page %d outside [2, %d)", meta.freelist, meta.hwm)
	}
	return meta, nil
}

// checkBoltMetas checks the two meta pages of a bbolt file of size bytes,
// read through r. Both must be valid, agree on the page size, and point
// only at pages the file holds. bbolt itself opens a file with one
// damaged meta page by silently using the other (the previous
// transaction), and maps a truncated file so that reading a page past its
// end kills the process with SIGBUS; this check refuses both.
func checkBoltMetas(r io.ReaderAt, size int64) error {
	if size == 0 {
		return errors.New("the file is empty (0 bytes)")
	}
	if size < 4*boltMinPage {
		return fmt.Errorf("the file is %d bytes, shorter than an empty database", size)
	}
	buf := make([]byte, boltPageHeader+boltMetaSize)
	if _, err := r.ReadAt(buf, 0); err != nil {
		return fmt.Errorf("read meta page 0: %w", err)
	}
	m0, err0 := parseBoltMeta(buf)
	var m1 boltMeta
	var err1 error
	if err0 == nil {
		if _, err := r.ReadAt(buf, int64(m0.pageSize)); err != nil {
			return fmt.Errorf("read meta page 1: %w", err)
		}
		m1, err1 = parseBoltMeta(buf)
	} else {
		// Find meta page 1 without knowing the page size, to say whether
		// only page 0 is damaged.
		err1 = errors.New("not found")
		for ps := int64(boltMinPage); ps <= boltMaxPage && ps+int64(len(buf)) <= size; ps *= 2 {
			if _, err := r.ReadAt(buf, ps); err != nil {
				break
			}
			if m, err := parseBoltMeta(buf); err == nil && int64(m.pageSize) == ps {
				m1, err1 = m, nil
				break
			}
		}
	}
	switch {
	case err0 != nil && err1 != nil:
		return fmt.Errorf("both meta pages are damaged (page 0: %v; page 1: %v)", err0, err1)
	case err0 != nil:
		return fmt.Errorf("meta page 0 is damaged (%v); bbolt would silently roll back to the transaction in page 1", err0)
	case err1 != nil:
		return fmt.Errorf("meta page 1 is damaged (%v); bbolt would silently roll back to the transaction in page 0", err1)
	case m0.pageSize != m1.pageSize:
		return fmt.Errorf("the meta pages disagree on the page size (%d, %d)", m0.pageSize, m1.pageSize)
	}
	for i, m := range []boltMeta{m0, m1} {
		if need := int64(m.hwm) * int64(m.pageSize); need > size {
			return fmt.Errorf("the file is %d bytes, but meta page %d (transaction %d) uses %d pages of %d bytes (%d bytes): truncated",
				size, i, m.txid, m.hwm, m.pageSize, need)
		}
	}
	return nil
}

// checkBoltFile runs checkBoltMetas on the file at path.
func checkBoltFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (mode %s)", fi.Mode())
	}
	return checkBoltMetas(f, fi.Size())
}
