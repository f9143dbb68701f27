package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/agentnet/agentnet/ctl"
)

// maxMessageRead bounds what message send reads: more than any daemon's
// message limit is sensible for, so it never reads a huge file into memory.
const maxMessageRead = 64 << 20

func init() {
	deliveryCodes := append([]ctl.Code{ctl.CodeTooLarge, ctl.CodeInboxFull}, peerCodes...)
	registerCLI(&cliCommand{
		noun: "message", verb: "send", summary: "send a typed message (text, JSON or binary) to a peer's inbox",
		args:   []cliArg{{Name: "peer", Help: "address or hostname"}},
		output: ctl.DeliveryResult{}, errors: deliveryCodes,
		example: `agentnet message send bob --data-json '{"task":"build","ref":"main"}'`,
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			text := fs.String("text", "", "a text message")
			js := fs.String("data-json", "", "a JSON message (one JSON value)")
			dataFile := fs.String("data-file", "", "a binary message read from this file ('-' for standard input)")
			return func(x *cliCtx) (any, error) {
				req := ctl.MessageRequest{Peer: x.args[0], Text: *text}
				n := 0
				if flagSet(fs, "text") {
					n++
				}
				if *js != "" {
					n++
					var v any
					if err := json.Unmarshal([]byte(*js), &v); err != nil {
						return nil, badUsage("--data-json: %v", err)
					}
					req.JSON = json.RawMessage(*js)
				}
				if *dataFile != "" {
					n++
					var b []byte
					var err error
					in := x.stdin
					if *dataFile != "-" {
						f, err := os.Open(*dataFile)
						if err != nil {
							return nil, badUsage("--data-file: %v", err)
						}
						defer f.Close()
						in = f
					}
					b, err = io.ReadAll(io.LimitReader(in, maxMessageRead+1))
					if err != nil {
						return nil, badUsage("--data-file: %v", err)
					}
					if len(b) > maxMessageRead {
						return nil, &ctl.Error{Code: ctl.CodeTooLarge, Message: fmt.Sprintf("--data-file: over %d bytes, more than a message may be", maxMessageRead), Hint: "send it as a file (agentnet file send)"}
					}
					req.DataBase64 = base64.StdEncoding.EncodeToString(b)
				}
				if n != 1 {
					return nil, badUsage("give exactly one of --text, --data-json, --data-file")
				}
				var res ctl.DeliveryResult
				return res, x.call(http.MethodPost, ctl.PathMessages, req, &res)
			}
		},
		human: printDelivery,
	})
	registerCLI(&cliCommand{
		noun: "file", verb: "send", summary: "send a file to a peer's inbox with a progress bar; SHA-256 verified on arrival",
		args:   []cliArg{{Name: "peer", Help: "address or hostname"}, {Name: "path", Help: "the file to send"}},
		output: ctl.DeliveryResult{}, errors: deliveryCodes,
		example: "agentnet file send bob ./report.pdf",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			name := fs.String("name", "", "the name the peer sees (default: the file's base name)")
			progress := fs.Bool("progress", false, "show the progress bar even when standard error is not a terminal")
			return func(x *cliCtx) (any, error) {
				return sendFile(x, x.args[0], x.args[1], *name, *progress)
			}
		},
		human: printDelivery,
	})
	registerCLI(&cliCommand{
		noun: "inbox", verb: "list", summary: "list messages and files received (the default verb)",
		output: ctl.InboxList{},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var l ctl.InboxList
				return l, x.call(http.MethodGet, ctl.PathInbox, nil, &l)
			}
		},
		human: func(w io.Writer, v any) {
			l := v.(ctl.InboxList)
			if len(l.Items) == 0 {
				fmt.Fprintln(w, "inbox empty")
				return
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tFROM\tSIZE\tRECEIVED\tNAME")
			for _, it := range l.Items {
				from := it.From
				if it.Hostname != "" {
					from = it.Hostname
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", it.ID, it.Kind, from, bytesHuman(it.Bytes), it.Received.Local().Format(time.DateTime), it.Name)
			}
			tw.Flush()
			fmt.Fprintf(w, "%d items, %s\n", len(l.Items), bytesHuman(l.Bytes))
		},
	})
	registerCLI(&cliCommand{
		noun: "inbox", verb: "show", summary: "show one inbox item and, for messages, its content",
		args:   []cliArg{{Name: "id", Help: "the item's ID (agentnet inbox)"}},
		output: ctl.InboxEntry{}, errors: []ctl.Code{ctl.CodeNotFound},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var e ctl.InboxEntry
				return e, x.call(http.MethodGet, ctl.PathInbox+"/"+url.PathEscape(x.args[0]), nil, &e)
			}
		},
		human: printEntry,
	})
	registerCLI(&cliCommand{
		noun: "inbox", verb: "rm", summary: "delete an inbox item and its content",
		args:   []cliArg{{Name: "id", Help: "the item's ID"}},
		output: ctl.InboxEntry{}, errors: []ctl.Code{ctl.CodeNotFound},
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) {
				var e ctl.InboxEntry
				return e, x.call(http.MethodDelete, ctl.PathInbox+"/"+url.PathEscape(x.args[0]), nil, &e)
			}
		},
		human: func(w io.Writer, v any) { fmt.Fprintf(w, "deleted %s\n", v.(ctl.InboxEntry).Item.ID) },
	})
}

func printDelivery(w io.Writer, v any) {
	r := v.(ctl.DeliveryResult)
	what := r.Kind + " message"
	if r.Kind == "file" {
		what = "file " + r.Name
	}
	fmt.Fprintf(w, "delivered %s (%s) to %s, inbox id %s, sha256 %s\n", what, bytesHuman(r.Bytes), r.Peer, r.ID, r.SHA256)
}

func printEntry(w io.Writer, v any) {
	e := v.(ctl.InboxEntry)
	it := e.Item
	fmt.Fprintf(w, "id %s, %s from %s", it.ID, it.Kind, it.From)
	if it.Hostname != "" {
		fmt.Fprintf(w, " (%s)", it.Hostname)
	}
	fmt.Fprintf(w, ", %s, received %s\n", bytesHuman(it.Bytes), it.Received.Local().Format(time.DateTime))
	switch {
	case it.Kind == "file":
		fmt.Fprintf(w, "stored at %s\n", it.Path)
	case e.Text != "":
		fmt.Fprintln(w, e.Text)
	case e.JSON != nil:
		b, _ := json.MarshalIndent(e.JSON, "", "  ")
		fmt.Fprintln(w, string(b))
	default:
		fmt.Fprintln(w, e.DataBase64)
	}
}

// sendFile uploads path to the daemon, which streams it to the peer; the
// SHA-256 the peer verified must match ours.
func sendFile(x *cliCtx, peer, path, name string, forceBar bool) (any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, badUsage("%v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, badUsage("%s: not a regular file", path)
	}
	if name == "" {
		name = filepath.Base(path)
	}
	h := sha256.New()
	var body io.Reader = io.TeeReader(f, h)
	if !x.json && (forceBar || isTerminal(os.Stderr)) {
		bar := progressbar.NewOptions64(fi.Size(),
			progressbar.OptionSetWriter(x.stderr),
			progressbar.OptionSetDescription("sending "+name),
			progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(x.stderr) }),
		)
		r := progressbar.NewReader(body, bar)
		body = &r
	}
	q := url.Values{"peer": {peer}, "name": {name}}
	var res ctl.DeliveryResult
	if err := x.client.Upload(x.ctx, ctl.PathFiles, q, body, fi.Size(), &res); err != nil {
		return nil, err
	}
	if sum := hexSum(h); sum != res.SHA256 {
		return nil, &ctl.Error{Code: ctl.CodeInternal, Message: fmt.Sprintf("the peer stored sha256 %s, we sent %s", res.SHA256, sum), Hint: "was the file changed while it was sent?"}
	}
	return res, nil
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
