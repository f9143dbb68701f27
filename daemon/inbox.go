package daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/service"
	"github.com/agentnet/agentnet/service/message"
)

func (d *Daemon) handleMessage(w http.ResponseWriter, r *http.Request) error {
	var req ctl.MessageRequest
	if err := decode(w, r, d.maxJSONBody(), &req); err != nil {
		if errors.As(err, new(*bodyLimitError)) {
			return d.tooLarge(-1)
		}
		return err
	}
	t, err := d.checkPeer(req.Peer)
	if err != nil {
		return err
	}
	var kind message.Kind
	var body []byte
	set := 0
	if req.Text != "" {
		set++
		kind, body = message.KindText, []byte(req.Text)
		if !utf8.ValidString(req.Text) {
			return invalid("text is not valid UTF-8")
		}
	}
	if req.JSON != nil {
		set++
		kind = message.KindJSON
		if body, err = json.Marshal(req.JSON); err != nil {
			return invalid("json: %v", err)
		}
	}
	if req.DataBase64 != "" {
		set++
		kind = message.KindBinary
		if body, err = base64.StdEncoding.DecodeString(req.DataBase64); err != nil {
			return invalid("data_base64: %v", err)
		}
	}
	if set != 1 {
		return ctl.Errorf(ctl.CodeInvalidArgument, "a message is text, json or data_base64", "set exactly one of text, json, data_base64 (got %d)", set)
	}
	if int64(len(body)) > d.limits.For(kind) {
		return d.tooLarge(len(body))
	}
	to, err := timeout(req.TimeoutMS, defaultTimeout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), to)
	defer cancel()
	c, err := d.dial(ctx, t, service.PortMessages)
	if err != nil {
		return err
	}
	addr := remoteNode(c)
	ack, err := message.Send(ctx, c, message.Header{Kind: kind, Size: uint64(len(body))}, bytes.NewReader(body))
	if err != nil {
		return ctxErr(ctx, err)
	}
	return writeOK(w, ctl.DeliveryResult{Peer: req.Peer, Addr: addr, Kind: kind.String(), ID: ack.ID, Bytes: int64(len(body)), SHA256: fmt.Sprintf("%x", ack.Sum)})
}

// tooLarge is the answer to a message over this daemon's limit for the
// messages it sends (its own --max-message); n < 0: size unknown (the
// request body was over the bound).
func (d *Daemon) tooLarge(n int) *ctl.Error {
	lim := d.limits.For(message.KindText)
	msg := fmt.Sprintf("message over this daemon's limit of %d bytes (--max-message)", lim)
	if n >= 0 {
		msg = fmt.Sprintf("message of %d bytes over this daemon's limit of %d bytes (--max-message)", n, lim)
	}
	return &ctl.Error{Code: ctl.CodeTooLarge, Message: msg, Hint: "send it as a file (agentnet file send), or raise --max-message"}
}

// handleFile sends the raw request body as a file: POST
// /v1/files?peer=P&name=N with a Content-Length.
func (d *Daemon) handleFile(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	for k := range q {
		if k != "peer" && k != "name" && k != "timeout_ms" {
			return invalid("unknown query parameter %q (want peer, name, timeout_ms)", k)
		}
	}
	t, err := d.checkPeer(q.Get("peer"))
	if err != nil {
		return err
	}
	name := q.Get("name")
	if name == "" || len(name) > message.MaxName {
		return invalid("name: want 1-%d bytes", message.MaxName)
	}
	if r.ContentLength < 0 {
		return ctl.Errorf(ctl.CodeInvalidArgument, "send the file with a Content-Length (curl -T does)", "file size unknown")
	}
	tms := 0
	if s := q.Get("timeout_ms"); s != "" {
		if tms, err = strconv.Atoi(s); err != nil {
			return invalid("timeout_ms %q: %v", s, err)
		}
	}
	to, err := timeout(tms, 24*time.Hour)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), to)
	defer cancel()
	c, err := d.dial(ctx, t, service.PortMessages)
	if err != nil {
		return err
	}
	addr := remoteNode(c)
	size := r.ContentLength
	ack, err := message.Send(ctx, c, message.Header{Kind: message.KindFile, Size: uint64(size), Name: name}, r.Body)
	if err != nil {
		return ctxErr(ctx, err)
	}
	return writeOK(w, ctl.DeliveryResult{Peer: q.Get("peer"), Addr: addr, Kind: "file", ID: ack.ID, Name: ack.Text, Bytes: size, SHA256: fmt.Sprintf("%x", ack.Sum)})
}

func inboxItem(it message.Item) ctl.InboxItem {
	return ctl.InboxItem{ID: it.ID, Kind: it.KindName, From: it.From, Hostname: it.Hostname, Name: it.Name, Path: it.Path, Bytes: it.Bytes, SHA256: it.SHA256, Received: it.Received}
}

func (d *Daemon) handleInboxList(w http.ResponseWriter, r *http.Request) error {
	out := ctl.InboxList{Items: []ctl.InboxItem{}, Bytes: d.inbox.Bytes()}
	for _, it := range d.inbox.List() {
		out.Items = append(out.Items, inboxItem(it))
	}
	return writeOK(w, out)
}

func (d *Daemon) inboxLookup(r *http.Request) (message.Item, error) {
	id := r.PathValue("id")
	if !message.ValidID(id) {
		return message.Item{}, ctl.Errorf(ctl.CodeInvalidArgument, "\"agentnet inbox\" lists the IDs", "inbox id %q malformed", id)
	}
	return d.inbox.Get(id)
}

// entry returns an item with its content if it is a message.
func entry(it message.Item) (ctl.InboxEntry, error) {
	e := ctl.InboxEntry{Item: inboxItem(it)}
	if it.Kind == message.KindFile {
		return e, nil
	}
	b, err := os.ReadFile(it.Path)
	if err != nil {
		return e, err
	}
	switch it.Kind {
	case message.KindText:
		e.Text = string(b)
	case message.KindJSON:
		e.JSON = json.RawMessage(b)
	default:
		e.DataBase64 = base64.StdEncoding.EncodeToString(b)
	}
	return e, nil
}

func (d *Daemon) handleInboxGet(w http.ResponseWriter, r *http.Request) error {
	it, err := d.inboxLookup(r)
	if err != nil {
		return err
	}
	e, err := entry(it)
	if err != nil {
		return err
	}
	return writeOK(w, e)
}

func (d *Daemon) handleInboxData(w http.ResponseWriter, r *http.Request) error {
	it, err := d.inboxLookup(r)
	if err != nil {
		return err
	}
	f, err := os.Open(it.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(it.Bytes, 10))
	w.Header().Set("X-Agentnet-Sha256", it.SHA256)
	io.Copy(w, f)
	return nil
}

func (d *Daemon) handleInboxDelete(w http.ResponseWriter, r *http.Request) error {
	it, err := d.inboxLookup(r)
	if err != nil {
		return err
	}
	e, _ := entry(it)
	if _, err := d.inbox.Delete(it.ID); err != nil {
		return err
	}
	e.Deleted = true
	return writeOK(w, e)
}
