package quicnode

import (
	"io"
	"net"
)

// startEcho runs the built-in echo service on port 7, for streams (bytes
// are copied back until EOF) and datagrams (each is sent back to its
// sender).
func (n *Node) startEcho() error {
	l, err := n.Listen(PortEcho)
	if err != nil {
		return err
	}
	pc, err := n.ListenPacket(PortEcho)
	if err != nil {
		l.Close()
		return err
	}
	n.goFunc(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.goFunc(func() {
				defer c.Close()
				stop := make(chan struct{})
				defer close(stop)
				go func() { // unblock the copy when the node closes
					select {
					case <-n.ctx.Done():
						c.Close()
					case <-stop:
					}
				}()
				io.Copy(c, c)
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			})
		}
	})
	n.goFunc(func() {
		buf := make([]byte, 2048)
		for {
			m, from, err := pc.ReadFrom(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return
			}
			pc.WriteTo(buf[:m], from)
		}
	})
	return nil
}
