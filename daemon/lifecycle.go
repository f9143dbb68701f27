package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"os"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/trustdb"
)

// handleShutdown answers, then asks Run to shut down as on SIGTERM.
func (d *Daemon) handleShutdown(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > 0 {
		var empty struct{}
		if err := decode(w, r, maxSmallBody, &empty); err != nil {
			return err
		}
	}
	writeOK(w, ctl.ShutdownResult{PID: os.Getpid(), StateDir: d.cfg.StateDir, Stopping: true})
	http.NewResponseController(w).Flush()
	d.stopOnce.Do(func() { close(d.stopReq) })
	return nil
}

// publishTrustEvents announces trust changes on our own bus: a new request
// waiting for our decision as ctl.TopicTrustRequest, every other change of a
// record with a known key as ctl.TopicTrustChanged, so that agents can wait
// for them instead of polling. It returns the store subscription's cancel.
func (d *Daemon) publishTrustEvents() (cancel func()) {
	return d.store.Subscribe(func(ev trustdb.Event) {
		if ev.Network != nil || ev.Key.IsZero() {
			return
		}
		rec := ev.Record
		te := ctl.TrustEvent{
			Addr: rec.Addr().String(), Key: rec.Key.String(), Hostname: rec.Hostname,
			State: rec.State.String(),
		}
		if ev.Old != 0 {
			te.Old = ev.Old.String()
		}
		topic := ctl.TopicTrustChanged
		switch {
		case ev.Old == rec.State:
			return // a refresh (a repeated request), not a change
		case rec.State == trustdb.StatePendingIn:
			topic = ctl.TopicTrustRequest
			te.Note = rec.Note
		}
		b, _ := json.Marshal(te)
		d.bus.Publish(topic, b, d.node.Addr())
	})
}

// WaitRendezvous blocks until the node is registered at its rendezvous, ctx
// ends, or the rendezvous refused us for a reason only the operator can fix
// (rendezvous.ErrServerKey, ErrHostnameTaken, ErrNodeIDTaken), and returns
// that error. Call it after Ready.
func (d *Daemon) WaitRendezvous(ctx context.Context) error { return d.node.WaitRendezvous(ctx) }

// RendezvousUnreachable returns why the node reached the rendezvous neither
// over UDP nor over TCP on its last attempt (nil once either works, and
// before the first attempt ended), with the addresses tried.
func (d *Daemon) RendezvousUnreachable() error { return d.node.Reach().Err }
