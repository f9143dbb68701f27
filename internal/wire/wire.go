// Package wire holds the bounds-checked cursor agentnet's binary codecs
// parse with. It imports only the standard library.
package wire

import (
	"encoding/binary"
	"errors"
)

// ErrShort is the error of a read past the end of the input.
var ErrShort = errors.New("truncated")

// Reader is a cursor over b. After the first failure every read returns
// zero values and Err reports the failure; callers check Err once at the
// end. The zero Reader is empty.
type Reader struct {
	b   []byte
	err error
}

// NewReader returns a Reader over b (not copied).
func NewReader(b []byte) *Reader { return &Reader{b: b} }

// Next returns the next n bytes (aliasing the input, capacity n), or nil.
func (r *Reader) Next(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = ErrShort
		r.b = nil
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if v := r.Next(1); v != nil {
		return v[0]
	}
	return 0
}

// Uint16 reads a big-endian uint16.
func (r *Reader) Uint16() uint16 {
	if v := r.Next(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

// Uint64 reads a big-endian uint64.
func (r *Reader) Uint64() uint64 {
	if v := r.Next(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// Copy fills dst from the input.
func (r *Reader) Copy(dst []byte) { copy(dst, r.Next(len(dst))) }

// Len is the number of unread bytes.
func (r *Reader) Len() int { return len(r.b) }

// Err returns the first failure.
func (r *Reader) Err() error { return r.err }

// Fail records err as the failure unless one is recorded already.
func (r *Reader) Fail(err error) {
	if r.err == nil {
		r.err = err
	}
}
