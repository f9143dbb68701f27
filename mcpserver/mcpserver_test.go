package mcpserver

import (
	"encoding/base64"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/ctl"
)

func newTestServer(t testing.TB) *Server {
	s, err := New(Config{Client: ctl.NewClient("/nonexistent/agentnet.sock")})
	require.NoError(t, err)
	return s
}

// TestRequestState: an ask-mode approval is bound to its tool and
// arguments, used once, and unforgeable.
func TestRequestState(t *testing.T) {
	s := newTestServer(t)
	args := []byte(`{"peer":"0:3f2a.91c0.0b17"}`)
	st := s.newState("trust_approve", args)
	require.False(t, s.checkState(st, "trust_request", args), "another tool")
	require.False(t, s.checkState(st, "trust_approve", []byte(`{"peer":"0:0000.0000.0001"}`)), "other arguments")
	require.True(t, s.checkState(st, "trust_approve", args))
	require.False(t, s.checkState(st, "trust_approve", args), "single use")
	b, _ := base64.RawURLEncoding.DecodeString(s.newState("trust_approve", args))
	b[len(b)-1] ^= 1
	require.False(t, s.checkState(base64.RawURLEncoding.EncodeToString(b), "trust_approve", args), "tampered")
	other := newTestServer(t)
	require.False(t, other.checkState(s.newState("trust_approve", args), "trust_approve", args), "another server's secret")
	require.False(t, s.checkState("", "trust_approve", args))
}

func TestNewPolicyChecks(t *testing.T) {
	_, err := New(Config{Client: ctl.NewClient("x"), Policy: Policy{Approve: "sometimes"}})
	require.ErrorContains(t, err, "want never, ask or allow")
	_, err = New(Config{Client: ctl.NewClient("x"), Policy: Policy{Disable: []string{"nope"}}})
	require.ErrorContains(t, err, "unknown tool")
	s, err := New(Config{Client: ctl.NewClient("x"), Policy: Policy{Tools: []string{"status", "wait"}, Disable: []string{"wait"}}})
	require.NoError(t, err)
	require.Equal(t, []string{"status"}, s.Tools())
	require.Equal(t, ApproveNever, s.cfg.Policy.Approve, "the default is never")
}

func TestBound(t *testing.T) {
	d := bound([]byte("héllo"), 0, 6, 2) // "h" + half of "é"
	require.Equal(t, "h", d.Text)
	require.True(t, d.Truncated)
	require.EqualValues(t, 6, d.Bytes)
	d = bound([]byte{0xff, 0x00}, 0, 2, 16)
	require.Equal(t, "/wA=", d.Base64)
	require.False(t, d.Truncated)
	d = boundString("abc", 16)
	require.Equal(t, Data{Text: "abc", Bytes: 3}, d)
}

func TestShellQuote(t *testing.T) {
	require.Equal(t, "0:3f2a.91c0.0b17", shellQuote("0:3f2a.91c0.0b17"))
	require.Equal(t, `'a b'`, shellQuote("a b"))
	require.Equal(t, `'it'\''s; rm -rf /'`, shellQuote("it's; rm -rf /"))
	require.Equal(t, `''`, shellQuote(""))
}

func TestHeaderChecks(t *testing.T) {
	require.True(t, validToken("Mcp-Session-Id"))
	require.False(t, validToken("Bad Header"))
	require.False(t, validToken(""))
	require.True(t, validValue("a\tb"))
	require.False(t, validValue("a\r\nInjected: 1"))
	require.True(t, validHost("localhost"))
	require.True(t, validHost("127.0.0.1:9000"))
	require.False(t, validHost("evil.com/x"))
	require.False(t, validHost("a b"))
}

// FuzzRequestState: a state the server did not make for exactly this tool
// and these arguments never passes.
func FuzzRequestState(f *testing.F) {
	s := newTestServer(f)
	// A genuine state for other arguments, and for another tool.
	f.Add(s.newState("trust_approve", []byte(`{"peer":"bob"}`)), "trust_approve", []byte(`{"peer":"eve"}`))
	f.Add(s.newState("trust_approve", []byte(`{"peer":"bob"}`)), "network_join", []byte(`{"peer":"bob"}`))
	f.Add("", "", []byte(nil))
	f.Add(strings.Repeat("A", 75), "network_join", []byte("{}"))
	f.Fuzz(func(t *testing.T, state, tool string, args []byte) {
		if s.checkState(state, tool, args) {
			t.Fatalf("forged state accepted: %q", state)
		}
	})
}

// FuzzBound: the bounded form is valid UTF-8 or base64, never over max,
// and says truncated exactly when something was cut.
func FuzzBound(f *testing.F) {
	f.Add([]byte("héllo wörld"), 3)
	f.Add([]byte{0xff, 0xfe, 0x00}, 1)
	f.Add([]byte(""), 16)
	f.Fuzz(func(t *testing.T, b []byte, max int) {
		if max <= 0 || max > 1<<16 {
			return
		}
		d := bound(b, 0, int64(len(b)), max)
		if d.Base64 != "" {
			raw, err := base64.StdEncoding.DecodeString(d.Base64)
			if err != nil || len(raw) > max {
				t.Fatalf("base64 %q: %v", d.Base64, err)
			}
		} else if !utf8.ValidString(d.Text) || len(d.Text) > max {
			t.Fatalf("text %q", d.Text)
		}
		got := len(d.Text)
		if d.Base64 != "" {
			raw, _ := base64.StdEncoding.DecodeString(d.Base64)
			got = len(raw)
		}
		if d.Truncated != (got < len(b)) || d.Bytes != int64(len(b)) {
			t.Fatalf("truncated=%v got %d of %d", d.Truncated, got, len(b))
		}
	})
}
