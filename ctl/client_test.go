package ctl

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// serveUnix serves h on a Unix socket in a temporary directory.
func serveUnix(t *testing.T, h http.Handler) *Client {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", p)
	require.NoError(t, err)
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return NewClient(p)
}

func TestClient(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]int{"n": 1})
	})
	mux.HandleFunc("GET /err", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		json.NewEncoder(w).Encode(ErrorBody{Error: &Error{Code: CodeNotTrusted, Message: "no", Hint: "ask"}})
	})
	mux.HandleFunc("GET /garbage", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "oops", http.StatusBadGateway)
	})
	mux.HandleFunc("POST /stream", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("{\"n\":1}\n{\"n\":2}\n{\"error\":{\"code\":\"timeout\",\"message\":\"late\"}}\n"))
	})
	c := serveUnix(t, mux)
	ctx := context.Background()

	var v struct{ N int }
	require.NoError(t, c.Do(ctx, "GET", "/ok", nil, &v))
	require.Equal(t, 1, v.N)

	err := c.Do(ctx, "GET", "/err", nil, nil)
	require.Equal(t, CodeNotTrusted, CodeOf(err))
	require.Equal(t, "ask", err.(*Error).Hint)
	require.Equal(t, CodeInternal, CodeOf(c.Do(ctx, "GET", "/garbage", nil, nil)))

	s, err := c.Stream(ctx, "POST", "/stream", map[string]int{})
	require.NoError(t, err)
	require.NoError(t, s.Next(&v))
	require.NoError(t, s.Next(&v))
	require.Equal(t, 2, v.N)
	require.Equal(t, CodeTimeout, CodeOf(s.Next(&v)))
	require.ErrorIs(t, s.Next(&v), io.EOF)
	s.Close()

	// A connect refused before the switch reports the server's answer.
	_, err = c.Connect(ctx, ConnectRequest{Peer: "bob", Port: 7})
	require.Error(t, err)
	require.Contains(t, err.Error(), "404")
}

func TestClientNotRunning(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	err := c.Do(context.Background(), "GET", PathStatus, nil, nil)
	require.Equal(t, CodeNotRunning, CodeOf(err))
	require.NotEmpty(t, err.(*Error).Hint)
	_, err = c.Connect(context.Background(), ConnectRequest{})
	require.Equal(t, CodeNotRunning, CodeOf(err))
}

func TestCodes(t *testing.T) {
	seen := map[Code]bool{}
	for _, c := range Codes {
		require.False(t, seen[c.Code], "duplicate %s", c.Code)
		seen[c.Code] = true
	}
	require.Equal(t, http.StatusForbidden, CodeNotTrusted.HTTPStatus())
	require.Equal(t, http.StatusInternalServerError, Code("nope").HTTPStatus())
}
