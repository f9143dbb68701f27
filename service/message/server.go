package message

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/agentnet/agentnet/service"
	"io"
	"log/slog"
	"net"
	"os"
	"time"
	"unicode/utf8"

	"github.com/agentnet/agentnet/addressing"
)

// Limits bound what a peer can make the receiver store. A zero field takes
// its default.
type Limits struct {
	MaxMessage int64 // text, JSON and binary messages; default 1 MiB
	MaxFile    int64 // files; default 1 GiB
}

// Default limits.
const (
	DefaultMaxMessage = 1 << 20
	DefaultMaxFile    = 1 << 30
)

func (l Limits) withDefaults() Limits {
	if l.MaxMessage <= 0 {
		l.MaxMessage = DefaultMaxMessage
	}
	if l.MaxFile <= 0 {
		l.MaxFile = DefaultMaxFile
	}
	return l
}

// For returns the limit for items of kind k.
func (l Limits) For(k Kind) int64 {
	l = l.withDefaults()
	if k == KindFile {
		return l.MaxFile
	}
	return l.MaxMessage
}

// Timeouts of the receiver.
const (
	headerTimeout = 10 * time.Second
	idleTimeout   = 30 * time.Second // no byte of the body for this long ends the transfer
)

// Server receives items into an Inbox. Set the fields, then call Serve. It
// is safe for concurrent use.
type Server struct {
	Inbox  *Inbox
	Limits Limits
	// HostnameFunc, if set, names the peer at addr for the item's metadata.
	HostnameFunc func(addr net.Addr) string
	// ReceiveFunc, if set, is called after each item is stored.
	ReceiveFunc func(Item)
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger

	acc service.Acceptor
}

// Serve accepts streams on l and receives one item from each. It returns
// when l fails or the Server is closed; it closes l.
func (s *Server) Serve(l net.Listener) error { return s.acc.Serve(l, s.handle) }

// Close closes the listeners and every transfer in progress, and waits for
// them. It is idempotent.
func (s *Server) Close() error { return s.acc.Close() }

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// handle receives one item from c.
func (s *Server) handle(c net.Conn) {
	defer c.Close()
	ack := s.receive(c)
	b := appendFrame(nil, AppendAck(nil, ack))
	c.SetWriteDeadline(time.Now().Add(headerTimeout))
	c.Write(b)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	if ack.Status != StatusOK {
		s.log().Info("refused inbox item", "remote", c.RemoteAddr(), "status", ack.Status.String(), "err", ack.Text)
	}
}

func refuse(st Status, format string, args ...any) Ack {
	return Ack{Status: st, Text: fmt.Sprintf(format, args...)}
}

func (s *Server) receive(c net.Conn) Ack {
	c.SetReadDeadline(time.Now().Add(headerTimeout))
	br := bufio.NewReader(c)
	fb, err := readFrame(br)
	if err != nil {
		return refuse(StatusBadRequest, "read header: %v", err)
	}
	h, err := ParseHeader(fb)
	if err != nil {
		return refuse(StatusBadRequest, "%v", err)
	}
	limit := s.Limits.For(h.Kind)
	if h.Size > uint64(limit) {
		return refuse(StatusTooLarge, "%s of %d bytes exceeds the limit of %d bytes", h.Kind, h.Size, limit)
	}
	size := int64(h.Size)
	if err := s.Inbox.reserve(size); err != nil {
		return refuse(StatusInboxFull, "%v", err)
	}
	defer s.Inbox.unreserve(size)

	f, err := s.Inbox.tempFile()
	if err != nil {
		return refuse(StatusInternal, "create file: %v", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	hash := sha256.New()
	r := &idleReader{c: c, r: br}
	if _, err := io.CopyN(io.MultiWriter(f, hash), r, size); err != nil {
		return refuse(StatusBadRequest, "read body: %v", err)
	}
	var sum, want [SumSize]byte
	if _, err := io.ReadFull(r, want[:]); err != nil {
		return refuse(StatusBadRequest, "read checksum: %v", err)
	}
	hash.Sum(sum[:0])
	if sum != want {
		return refuse(StatusChecksum, "sha256 %x, sender says %x", sum, want)
	}
	if err := f.Sync(); err != nil {
		return refuse(StatusInternal, "sync: %v", err)
	}
	if err := f.Close(); err != nil {
		return refuse(StatusInternal, "close: %v", err)
	}
	if err := checkContent(h.Kind, tmp); err != nil {
		return refuse(StatusBadRequest, "%v", err)
	}
	it := Item{Kind: h.Kind, From: addrString(c.RemoteAddr()), Name: h.Name, Bytes: size, SHA256: hex.EncodeToString(sum[:])}
	if s.HostnameFunc != nil {
		it.Hostname = s.HostnameFunc(c.RemoteAddr())
	}
	it, err = s.Inbox.commit(tmp, it)
	if err != nil {
		return refuse(StatusInternal, "%v", err)
	}
	ok = true
	s.log().Info("inbox item received", "peer", it.From, "id", it.ID, "kind", it.KindName, "bytes", it.Bytes)
	if s.ReceiveFunc != nil {
		s.ReceiveFunc(it)
	}
	return Ack{Status: StatusOK, Sum: sum, ID: it.ID, Text: it.Name}
}

// checkContent checks that a text message is UTF-8 and a JSON message one
// JSON value (messages are small: they are read back whole).
func checkContent(k Kind, p string) error {
	if k != KindText && k != KindJSON {
		return nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if k == KindText && !utf8.Valid(b) {
		return errors.New("text message is not valid UTF-8")
	}
	if k == KindJSON {
		dec := json.NewDecoder(bytes.NewReader(b))
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("json message: %v", err)
		}
		if dec.More() {
			return errors.New("json message: more than one value")
		}
	}
	return nil
}

// addrString names the peer at a (a SockAddr) by its address without the
// port.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	if sa, ok := a.(addressing.SockAddr); ok {
		return sa.Addr().String()
	}
	s := a.String()
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return s
}

// idleReader refreshes the read deadline before each read.
type idleReader struct {
	c net.Conn
	r io.Reader
}

func (r *idleReader) Read(b []byte) (int, error) {
	r.c.SetReadDeadline(time.Now().Add(idleTimeout))
	return r.r.Read(b)
}

// contextDeadline makes c's I/O fail when ctx ends; call the returned stop.
func contextDeadline(ctx context.Context, c net.Conn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
}
