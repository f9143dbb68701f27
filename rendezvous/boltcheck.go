package rendezvous

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Damage detection for the bbolt store. A store that exists is checked
// before bbolt may write to it, in three steps, none of which writes:
//
//  1. the file itself (checkBoltFile): not empty, both meta pages valid
//     (magic, version, checksum) with consecutive transaction IDs, and at
//     least as long as its high-water mark says. bbolt on its own would
//     initialise an empty file as a fresh store, fall back silently to the
//     previous transaction when the newest meta page is damaged, and fault
//     (SIGBUS) on a truncated file.
//  2. a read-only open and a walk over every bucket, key and value, with
//     faults turned into panics (debug.SetPanicOnFault) and panics into
//     errors, so a damaged page is an error rather than a crash;
//  3. bbolt's own consistency check (Tx.Check: page references, the
//     freelist, key order), safe to run once the walk has touched every
//     reachable page.
//
// The cost is one read of the file at start (tens of milliseconds for a
// store of tens of megabytes).

// snapshotSuffix names the last good copy of a store file, written on a
// clean close (BoltStore.Snapshot).
const snapshotSuffix = ".last-good"

// boltMeta is the part of a bbolt meta page the check reads (see bbolt's
// internal/common/meta.go; integers in the machine's byte order).
type boltMeta struct {
	pageSize uint32
	pgid     uint64 // high-water mark: pages below it are in use or free
	txid     uint64
}

const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	boltPageHeader = 16 // page id, flags, count, overflow
	boltMetaSize   = 64
)

// parseBoltMeta reads the meta page at the start of p.
func parseBoltMeta(p []byte) (boltMeta, error) {
	if len(p) < boltPageHeader+boltMetaSize {
		return boltMeta{}, errors.New("short page")
	}
	m := p[boltPageHeader : boltPageHeader+boltMetaSize]
	e := binary.NativeEndian
	switch {
	case e.Uint32(m[0:]) != boltMagic:
		return boltMeta{}, errors.New("not a bbolt meta page (bad magic)")
	case e.Uint32(m[4:]) != boltVersion:
		return boltMeta{}, fmt.Errorf("unknown bbolt version %d", e.Uint32(m[4:]))
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != e.Uint64(m[56:]) {
		return boltMeta{}, errors.New("checksum mismatch")
	}
	return boltMeta{pageSize: e.Uint32(m[8:]), pgid: e.Uint64(m[40:]), txid: e.Uint64(m[48:])}, nil
}

// checkBoltFile checks the file of an existing store without opening it
// with bbolt (step 1 above). It returns a description of the damage, or "".
func checkBoltFile(f *os.File) (string, error) {
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	return checkBoltHead(f, fi.Size())
}

// checkBoltHead is checkBoltFile on a file of size bytes read through r.
func checkBoltHead(r io.ReaderAt, size int64) (string, error) {
	if size == 0 {
		return "the file is empty (0 bytes)", nil
	}
	head := make([]byte, min(size, 2*65536))
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	m0, err0 := parseBoltMeta(head)
	pageSize := int64(0)
	if err0 == nil {
		pageSize = int64(m0.pageSize)
	} else {
		// Page 0 is unreadable: find the page size from page 1, as bbolt does.
		for ps := int64(1024); ps <= 65536; ps *= 2 {
			if m1, err := parseBoltMeta(head[min(ps, int64(len(head))):]); err == nil && int64(m1.pageSize) == ps {
				pageSize = ps
				break
			}
		}
		if pageSize == 0 {
			return fmt.Sprintf("no valid meta page (page 0: %v); not a bbolt file or both meta pages damaged", err0), nil
		}
		return fmt.Sprintf("meta page 0 is damaged (%v): bbolt would silently fall back to an older transaction", err0), nil
	}
	if pageSize < 1024 || pageSize > 65536 || pageSize&(pageSize-1) != 0 {
		return fmt.Sprintf("meta page 0 names page size %d", pageSize), nil
	}
	if size < 2*pageSize {
		return fmt.Sprintf("truncated: %d bytes, shorter than its two meta pages", size), nil
	}
	m1, err1 := parseBoltMeta(head[pageSize:])
	if err1 != nil {
		return fmt.Sprintf("meta page 1 is damaged (%v): bbolt would silently fall back to an older transaction", err1), nil
	}
	if int64(m1.pageSize) != pageSize {
		return fmt.Sprintf("meta pages disagree on the page size (%d, %d)", m0.pageSize, m1.pageSize), nil
	}
	if d := int64(m0.txid) - int64(m1.txid); d != 1 && d != -1 {
		return fmt.Sprintf("meta pages hold transactions %d and %d, not consecutive: one was overwritten", m0.txid, m1.txid), nil
	}
	cur := m0
	if m1.txid > m0.txid {
		cur = m1
	}
	// Compared by division: a damaged high-water mark times the page size
	// can overflow (found by FuzzParseBoltMeta).
	if cur.pgid > uint64(size)/uint64(pageSize) {
		return fmt.Sprintf("truncated: %d bytes, but its newest meta page names %d pages of %d bytes", size, cur.pgid, pageSize), nil
	}
	return "", nil
}

// verifyBoltStore checks an existing store file (all three steps above)
// and returns an error wrapping ErrStoreDamaged if it is damaged. It
// never writes to the file.
func verifyBoltStore(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("rendezvous: open store %s: %w", path, err)
	}
	what, err := checkBoltFile(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("rendezvous: check store %s: %w", path, err)
	}
	if what == "" {
		what, err = checkBoltTree(path)
		if err != nil {
			return err
		}
	}
	if what != "" {
		return damagedError(path, what)
	}
	return nil
}

// checkBoltTree opens path read-only and reads every page reachable from
// its root, then runs bbolt's consistency check (steps 2 and 3).
func checkBoltTree(path string) (what string, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			// A panic inside bbolt may leave the read-only handle open; the
			// server does not start, so the leak is bounded by one.
			what = fmt.Sprintf("reading it failed: %v", r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true, Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return "", fmt.Errorf("rendezvous: open store %s: in use by another process", path)
		}
		if errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch) {
			return err.Error(), nil
		}
		return "", fmt.Errorf("rendezvous: open store %s: %w", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		if err := walkBolt(tx); err != nil {
			return err
		}
		var errs []error
		for err := range tx.Check() { // drain: Check's goroutine sends them all
			if len(errs) < 4 {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return err.Error(), nil
	}
	return "", nil
}

// walkBolt reads every key and value of every bucket of tx, which touches
// every reachable branch, leaf and overflow page.
func walkBolt(tx *bolt.Tx) error {
	var sum byte
	var walk func(b *bolt.Bucket, depth int) error
	walk = func(b *bolt.Bucket, depth int) error {
		if depth > 4 {
			return errors.New("buckets nested deeper than the store makes them")
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v != nil {
				for _, x := range v {
					sum ^= x
				}
				continue
			}
			child := b.Bucket(k)
			if child == nil {
				return fmt.Errorf("key %x has no value and is not a bucket", k)
			}
			if err := walk(child, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error { return walk(b, 1) })
	_ = sum
	return err
}

// damagedError describes a damaged store file and how to recover.
func damagedError(path, what string) error {
	hint := fmt.Sprintf("move it aside and restore the last good copy: mv %s %s.damaged && cp %s%s %s",
		path, path, path, snapshotSuffix, path)
	if _, err := os.Stat(path + snapshotSuffix); err != nil {
		hint = fmt.Sprintf("no last good copy (%s%s) exists; restore %s from a backup", path, snapshotSuffix, path)
	}
	return fmt.Errorf("%w: %s: %s; the server will not open or overwrite it: %s", ErrStoreDamaged, path, what, hint)
}

// Snapshot writes a consistent copy of the store to path (via a temporary
// file, synced, then renamed over path), mode 0600. BoltStore.Close does this
// for stores opened by a Server with a DataDir, so the last good copy is
// DataDir/rendezvous.db.last-good.
func (s *BoltStore) Snapshot(path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("rendezvous: snapshot: %w", err)
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
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rendezvous: snapshot %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
