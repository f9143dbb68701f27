package tunnel

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseProxyURL(t *testing.T) {
	for in, want := range map[string]string{
		"proxy.example:8080":                  "http://proxy.example:8080",
		"proxy.example":                       "http://proxy.example:3128",
		"http://proxy.example:8080":           "http://proxy.example:8080",
		"http://alice:s%3Acret@10.0.0.1:3128": "http://alice:s%3Acret@10.0.0.1:3128",
		"http://alice@proxy.example":          "http://alice@proxy.example:3128",
		"http://[::1]:8080":                   "http://[::1]:8080",
		"[::1]":                               "http://[::1]:3128",
	} {
		u, err := ParseProxyURL(in)
		require.NoError(t, err, in)
		require.Equal(t, want, u.String(), in)
	}
	u, err := ParseProxyURL("http://alice:secret@proxy.example:8080")
	require.NoError(t, err)
	require.Equal(t, "alice", u.User.Username())
	pass, _ := u.User.Password()
	require.Equal(t, "secret", pass)
	require.Equal(t, "http://alice:xxxxx@proxy.example:8080", Redacted(u))
	for in, want := range map[string]string{
		"https://proxy.example:443":   `scheme "https"`,
		"socks5://proxy.example:1080": `scheme "socks5"`,
		"":                            "no host",
		"http://":                     "no host",
		"http://:8080":                "no host",
		"http://alice:pw@:8080":       "no host",
		"proxy.example:0":             `port "0"`,
		"proxy.example:65536":         `port "65536"`,
		"proxy.example:http":          "bad proxy URL",
		"http://pro xy:1":             "bad proxy URL",
		"%zz":                         "bad proxy URL",
	} {
		_, err := ParseProxyURL(in)
		require.ErrorContains(t, err, want, "%q", in)
	}
}

// FuzzParseProxyURL: the proxy URL parser (fed by HTTPS_PROXY, the config
// and a proxy command's output) never panics, and what it accepts is an
// http URL with a host name and a port in range that parses back to
// itself.
func FuzzParseProxyURL(f *testing.F) {
	for _, s := range []string{"proxy.example:8080", "http://alice:secret@proxy.example", "https://proxy.example:443", "http://:8080", "", "\x00garbage"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseProxyURL(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "bad proxy URL") {
				t.Fatalf("error %q does not say it is a bad proxy URL", err)
			}
			return
		}
		if u.Scheme != "http" || u.Hostname() == "" || u.Port() == "" {
			t.Fatalf("%q accepted as %q (scheme %q, host %q, port %q)", s, u, u.Scheme, u.Hostname(), u.Port())
		}
		u2, err := ParseProxyURL(u.String())
		if err != nil {
			t.Fatalf("%q accepted as %q, which is refused: %v", s, u, err)
		}
		if u2.String() != u.String() || u2.Host != u.Host || u2.User.String() != u.User.String() {
			t.Fatalf("%q accepted as %q, which parses as %q", s, u, u2)
		}
	})
}
