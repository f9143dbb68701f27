package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
	"github.com/agentnet/agentnet/trustdb"
)

// checkNoLeaks fails if goroutines started by the test outlive it.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		var after int
		for i := 0; i < 100; i++ {
			after = runtime.NumGoroutine()
			if after <= before {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("goroutines leaked: %d before, %d after\n%s", before, after, buf)
	})
}

type testDaemon struct {
	*Daemon
	c    *ctl.Client
	stop func()
}

// startDaemon runs a daemon in dir until the test ends.
func startDaemon(t *testing.T, cfg Config) *testDaemon {
	t.Helper()
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	if os.Getenv("AGENTNET_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("daemon", filepath.Base(cfg.StateDir))
	}
	d, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("daemon did not start in time")
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("daemon did not stop in time")
		}
	}
	t.Cleanup(stop)
	return &testDaemon{Daemon: d, c: ctl.NewClient(d.Socket()), stop: stop}
}

func (td *testDaemon) do(t *testing.T, method, path string, in, out any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return td.c.Do(ctx, method, path, in, out)
}

func (td *testDaemon) must(t *testing.T, method, path string, in, out any) {
	t.Helper()
	require.NoError(t, td.do(t, method, path, in, out))
}

func requireCode(t *testing.T, err error, code ctl.Code) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, ctl.CodeOf(err), "error: %v", err)
}

// pair starts two daemons on one rendezvous and makes them trust each
// other. a has hostname alice, b bob.
func pair(t *testing.T, cfgB Config) (a, b *testDaemon) {
	t.Helper()
	return pairWith(t, rendezvoustest.New(t), cfgB)
}

// pairWith is pair on the rendezvous srv.
func pairWith(t *testing.T, srv *rendezvoustest.Server, cfgB Config) (a, b *testDaemon) {
	t.Helper()
	dir := t.TempDir()
	a = startDaemon(t, Config{StateDir: filepath.Join(dir, "a"), RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey(), Hostname: "alice"})
	cfgB.StateDir = filepath.Join(dir, "b")
	cfgB.RendezvousAddr, cfgB.RendezvousKey, cfgB.Hostname = srv.Addr().String(), srv.PublicKey(), "bob"
	b = startDaemon(t, cfgB)
	waitRegistered(t, a)
	waitRegistered(t, b)

	var res ctl.TrustResult
	a.must(t, "POST", ctl.PathTrustRequest, ctl.TrustRequest{Peer: "bob", Note: "hi"}, &res)
	require.True(t, res.Delivered, res.Warning)
	var pend ctl.TrustList
	require.Eventually(t, func() bool {
		b.must(t, "GET", ctl.PathTrustPending, nil, &pend)
		return len(pend.Records) == 1
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, "alice", pend.Records[0].Hostname)
	b.must(t, "POST", ctl.PathTrustApprove, ctl.PeerRequest{Peer: pend.Records[0].Addr}, &res)
	require.Equal(t, "trusted", res.State)
	require.Eventually(t, func() bool {
		var l ctl.TrustList
		a.must(t, "GET", ctl.PathTrust, nil, &l)
		return len(l.Records) == 1 && l.Records[0].State == "trusted"
	}, 10*time.Second, 20*time.Millisecond)
	return a, b
}

func waitRegistered(t *testing.T, d *testDaemon) {
	t.Helper()
	require.Eventually(t, func() bool {
		var st ctl.Status
		d.must(t, "GET", ctl.PathStatus, nil, &st)
		return st.Rendezvous.Registered
	}, 10*time.Second, 20*time.Millisecond)
}

func TestMessagesFilesEventsRevoke(t *testing.T) {
	checkNoLeaks(t)
	a, b := pair(t, Config{MaxMessage: 64 << 10, MaxFile: 5 << 20})
	var st ctl.Status
	b.must(t, "GET", ctl.PathStatus, nil, &st)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A typed message.
	var del ctl.DeliveryResult
	a.must(t, "POST", ctl.PathMessages, ctl.MessageRequest{Peer: "bob", Text: "hello bob"}, &del)
	require.Equal(t, "text", del.Kind)
	a.must(t, "POST", ctl.PathMessages, ctl.MessageRequest{Peer: st.Addr, JSON: map[string]any{"task": 1}}, &del)
	var e ctl.InboxEntry
	b.must(t, "GET", ctl.PathInbox+"/"+del.ID, nil, &e)
	require.JSONEq(t, `{"task":1}`, string(mustJSON(t, e.JSON)))

	// Oversized: over b's limit (64 KiB) but under a's (1 MiB).
	big := make([]byte, 100<<10)
	err := a.do(t, "POST", ctl.PathMessages, ctl.MessageRequest{Peer: "bob", DataBase64: b64(big)}, nil)
	requireCode(t, err, ctl.CodeTooLarge)

	// A file over b's file limit is refused before its body is sent.
	huge := make([]byte, 6<<20)
	err = a.c.Upload(ctx, ctl.PathFiles, map[string][]string{"peer": {"bob"}, "name": {"huge"}}, bytes.NewReader(huge), int64(len(huge)), nil)
	requireCode(t, err, ctl.CodeTooLarge)

	// A file whose name tries to escape the inbox.
	data := make([]byte, 3<<20)
	rand.Read(data)
	require.NoError(t, a.c.Upload(ctx, ctl.PathFiles, map[string][]string{"peer": {"bob"}, "name": {"../../x"}}, bytes.NewReader(data), int64(len(data)), &del))
	require.Equal(t, "x", del.Name)
	var inbox ctl.InboxList
	b.must(t, "GET", ctl.PathInbox, nil, &inbox)
	require.Len(t, inbox.Items, 3)
	f := inbox.Items[2]
	require.Equal(t, filepath.Join(b.StateDir(), "inbox", "files", "x"), f.Path)
	got, err := os.ReadFile(f.Path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got))
	_, err = os.Stat(filepath.Join(b.StateDir(), "..", "x"))
	require.True(t, os.IsNotExist(err))

	// Events: b subscribes to a's bus; a publishes.
	s, err := b.c.Stream(ctx, "POST", ctl.PathEventsSubscribe, ctl.SubscribeRequest{Patterns: []string{"jobs.*"}, From: "alice", Count: 1})
	require.NoError(t, err)
	var pub ctl.PublishResult
	a.must(t, "POST", ctl.PathEventsPublish, ctl.PublishRequest{Topic: "jobs.done", Data: "42"}, &pub)
	require.Equal(t, 1, pub.Delivered)
	var ev ctl.Event
	require.NoError(t, s.Next(&ev))
	require.Equal(t, "jobs.done", ev.Topic)
	require.Equal(t, "42", ev.Data)
	require.ErrorIs(t, s.Next(&ev), io.EOF)
	s.Close()

	// Revoke: everything against the peer fails with not_trusted.
	var tr ctl.TrustResult
	b.must(t, "POST", ctl.PathTrustRevoke, ctl.PeerRequest{Peer: "alice"}, &tr)
	require.Equal(t, "revoked", tr.State)
	requireCode(t, b.do(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: "alice", Count: 1}, nil), ctl.CodeNotTrusted)
	requireCode(t, b.do(t, "POST", ctl.PathMessages, ctl.MessageRequest{Peer: "alice", Text: "x"}, nil), ctl.CodeNotTrusted)
	require.Eventually(t, func() bool {
		err := a.do(t, "POST", ctl.PathPing, ctl.PingRequest{Peer: "bob", Count: 1}, nil)
		return ctl.CodeOf(err) == ctl.CodeNotTrusted
	}, 10*time.Second, 50*time.Millisecond)
}

func TestConnectBridgesBytes(t *testing.T) {
	checkNoLeaks(t)
	a, _ := pair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := a.c.Connect(ctx, ctl.ConnectRequest{Peer: "bob", Port: 7})
	require.NoError(t, err)
	defer c.Close()
	data := make([]byte, 4<<20)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got))
}

func TestBadInputChangesNothing(t *testing.T) {
	checkNoLeaks(t)
	a, _ := pair(t, Config{})
	var before ctl.TrustList
	a.must(t, "GET", ctl.PathTrust, nil, &before)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", a.Socket())
	}}}
	cases := []struct {
		name, method, path, body string
		code                     ctl.Code
	}{
		{"malformed json", "POST", ctl.PathTrustRevoke, `{"peer":`, ctl.CodeInvalidArgument},
		{"unknown field", "POST", ctl.PathTrustRevoke, `{"peer":"bob","force":true}`, ctl.CodeInvalidArgument},
		{"two objects", "POST", ctl.PathTrustRevoke, `{"peer":"bob"}{"peer":"bob"}`, ctl.CodeInvalidArgument},
		{"wrong type", "POST", ctl.PathTrustRevoke, `{"peer":7}`, ctl.CodeInvalidArgument},
		{"empty", "POST", ctl.PathTrustRevoke, ``, ctl.CodeInvalidArgument},
		{"port out of range", "POST", ctl.PathSend, `{"peer":"bob","port":70000,"data":"x"}`, ctl.CodeInvalidArgument},
		{"port zero", "POST", ctl.PathExpose, `{"port":0,"to":"127.0.0.1:1"}`, ctl.CodeInvalidArgument},
		{"bad peer", "POST", ctl.PathTrustRequest, `{"peer":"Not A Host!"}`, ctl.CodeInvalidArgument},
		{"oversized", "POST", ctl.PathTrustRequest, `{"peer":"bob","note":"` + strings.Repeat("x", 100<<10) + `"}`, ctl.CodeInvalidArgument},
		{"bad pattern", "POST", ctl.PathEventsSubscribe, `{"patterns":["a..b"]}`, ctl.CodeInvalidArgument},
		{"bad inbox id", "DELETE", ctl.PathInbox + "/..%2F..%2Fx", ``, ctl.CodeInvalidArgument},
		{"unknown path", "GET", "/v1/nope", ``, ctl.CodeNotFound},
		{"wrong method", "DELETE", ctl.PathStatus, ``, ctl.CodeInvalidArgument},
		{"unknown network", "GET", ctl.PathNetworks + "/nope", ``, ctl.CodeNotFound},
		{"network bad field", "POST", ctl.PathNetworks, `{"name":"x","owner":"y"}`, ctl.CodeInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, "http://agentnet"+tc.path, strings.NewReader(tc.body))
			require.NoError(t, err)
			resp, err := hc.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			var eb ctl.ErrorBody
			require.NoError(t, jsonDecode(resp.Body, &eb))
			require.NotNil(t, eb.Error)
			require.Equal(t, tc.code, eb.Error.Code, eb.Error.Message)
			want := tc.code.HTTPStatus()
			if tc.name == "wrong method" {
				want = http.StatusMethodNotAllowed
			}
			require.Equal(t, want, resp.StatusCode)
		})
	}
	hc.CloseIdleConnections()
	var after ctl.TrustList
	a.must(t, "GET", ctl.PathTrust, nil, &after)
	require.Equal(t, before, after)
}

func TestSecondDaemonSameStateDir(t *testing.T) {
	checkNoLeaks(t)
	srv := rendezvoustest.New(t)
	dir := t.TempDir()
	startDaemon(t, Config{StateDir: dir, RendezvousAddr: srv.Addr().String(), RendezvousKey: srv.PublicKey()})
	d, err := New(Config{StateDir: dir, Socket: filepath.Join(t.TempDir(), "s.sock"), RendezvousAddr: srv.Addr().String(), ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	err = d.Run(context.Background())
	require.Error(t, err)
	require.True(t, errors.Is(err, trustdb.ErrInUse), err)
	require.Contains(t, err.Error(), "in use by another agentnet daemon")
}
