package message

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Sentinels for a receiver's refusal; a *RefusedError matches the one of its
// status with errors.Is.
var (
	ErrTooLarge   = errors.New("message: refused: too large")
	ErrBadRequest = errors.New("message: refused: bad request")
	ErrChecksum   = errors.New("message: refused: checksum mismatch")
	ErrRefused    = errors.New("message: refused")
)

// RefusedError is the receiver's refusal of an item. Text is the
// receiver's explanation: the peer's words, not ours, so Error leaves it
// out and PeerText returns it.
type RefusedError struct {
	Status Status
	Text   string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("message: receiver refused the item: %s", e.Status)
}

// PeerText returns the receiver's explanation.
func (e *RefusedError) PeerText() string { return e.Text }

// Is matches the sentinel of e's status.
func (e *RefusedError) Is(target error) bool {
	switch e.Status {
	case StatusTooLarge:
		return target == ErrTooLarge
	case StatusBadRequest:
		return target == ErrBadRequest
	case StatusChecksum:
		return target == ErrChecksum
	case StatusInboxFull:
		return target == ErrInboxFull
	}
	return target == ErrRefused
}

// ackTimeout bounds the wait for the receiver's ack after the last byte.
const ackTimeout = 30 * time.Second

// Send sends one item on c (a fresh stream to a peer's message port): h,
// then exactly h.Size bytes of body, then their SHA-256; and returns the
// receiver's ack. A refusal is a *RefusedError. Progress can be observed by
// wrapping body. Send closes c.
func Send(ctx context.Context, c net.Conn, h Header, body io.Reader) (Ack, error) {
	defer c.Close()
	stop := contextDeadline(ctx, c)
	defer stop()
	hb, err := AppendHeader(nil, h)
	if err != nil {
		return Ack{}, err
	}
	bw := bufio.NewWriterSize(c, 64<<10)
	hash := sha256.New()
	werr := func() error {
		if _, err := bw.Write(appendFrame(nil, hb)); err != nil {
			return err
		}
		n, err := io.CopyN(bw, io.TeeReader(body, hash), int64(h.Size))
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("message: body ended after %d of %d bytes", n, h.Size)
			}
			return err
		}
		if _, err := bw.Write(hash.Sum(nil)); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		return nil
	}()
	if ctx.Err() != nil {
		return Ack{}, ctx.Err()
	}
	// Read the ack even after a failed write: a receiver that refuses the
	// item answers and stops reading, which is what failed the write.
	c.SetReadDeadline(time.Now().Add(ackTimeout))
	fb, rerr := readFrame(c)
	if rerr != nil {
		if ctx.Err() != nil {
			return Ack{}, ctx.Err()
		}
		if werr != nil {
			return Ack{}, fmt.Errorf("message: send: %w", werr)
		}
		return Ack{}, fmt.Errorf("message: read ack: %w", rerr)
	}
	a, err := ParseAck(fb)
	if err != nil {
		return Ack{}, err
	}
	if a.Status != StatusOK {
		return a, &RefusedError{Status: a.Status, Text: a.Text}
	}
	if werr != nil {
		return Ack{}, fmt.Errorf("message: send: %w", werr)
	}
	var sum [SumSize]byte
	hash.Sum(sum[:0])
	if a.Sum != sum {
		return a, fmt.Errorf("message: receiver stored sha256 %x, we sent %x", a.Sum, sum)
	}
	return a, nil
}
