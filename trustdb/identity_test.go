package trustdb

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestIdentityCreateReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "identity.key")

	id, created, err := LoadOrCreateIdentity(path)
	require.NoError(t, err)
	require.True(t, created)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	again, created, err := LoadOrCreateIdentity(path)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, id.PublicKey(), again.PublicKey())
	require.Equal(t, id.PrivateKey(), again.PrivateKey())
	require.Equal(t, id.PublicKey().NodeID(), again.NodeID())
	require.Equal(t, id.NodeID(), id.Addr().Node())
	require.Zero(t, id.Addr().Network())

	// No temporary files left behind.
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, ents, 1)

	sig := id.Sign([]byte("hello"))
	require.True(t, again.PublicKey().Verify([]byte("hello"), sig))
}

func TestIdentityRefusesWideMode(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o666} {
		t.Run(fmt.Sprintf("%#o", mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "identity.key")
			_, _, err := LoadOrCreateIdentity(path)
			require.NoError(t, err)
			before, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.Chmod(path, mode))

			_, _, err = LoadOrCreateIdentity(path)
			require.Error(t, err)
			require.Contains(t, err.Error(), path)
			require.Contains(t, err.Error(), fmt.Sprintf("%#o", mode))

			after, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, before, after, "a refused file is never overwritten")
		})
	}
	t.Run("0400 is fine", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "identity.key")
		id, _, err := LoadOrCreateIdentity(path)
		require.NoError(t, err)
		require.NoError(t, os.Chmod(path, 0o400))
		again, _, err := LoadOrCreateIdentity(path)
		require.NoError(t, err)
		require.Equal(t, id.PublicKey(), again.PublicKey())
	})
}

func TestIdentityCorruptFile(t *testing.T) {
	id, err := GenerateIdentity()
	require.NoError(t, err)
	good := string(encodeKeyFile(id))
	other, err := GenerateIdentity()
	require.NoError(t, err)
	lines := strings.Split(good, "\n")

	tests := []struct {
		name, contents string
	}{
		{"empty", ""},
		{"garbage", "hello world\n"},
		{"wrong magic", strings.Replace(good, "v1", "v2", 1)},
		{"no trailing newline", strings.TrimSuffix(good, "\n")},
		{"extra line", good + "more\n"},
		{"short seed", lines[0] + "\nseed AAAA\n" + lines[2] + "\n"},
		{"bad base64", lines[0] + "\nseed " + strings.Repeat("!", 43) + "\n" + lines[2] + "\n"},
		{"public mismatch", lines[0] + "\n" + lines[1] + "\npublic " + other.PublicKey().String() + "\n"},
		{"missing public", lines[0] + "\n" + lines[1] + "\n"},
		{"huge", strings.Repeat("x", 10000)},
		{"crlf", strings.ReplaceAll(good, "\n", "\r\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "identity.key")
			require.NoError(t, os.WriteFile(path, []byte(tt.contents), 0o600))
			_, _, err := LoadOrCreateIdentity(path)
			require.Error(t, err)
			require.Contains(t, err.Error(), "malformed")
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, tt.contents, string(b), "never overwritten")
		})
	}
	t.Run("directory", func(t *testing.T) {
		path := t.TempDir()
		_, _, err := LoadOrCreateIdentity(path)
		require.ErrorContains(t, err, "not a regular file")
	})
}

func TestIdentityNeverPrintsPrivateKey(t *testing.T) {
	id, err := GenerateIdentity()
	require.NoError(t, err)
	priv := id.PrivateKey()
	secrets := []string{
		hex.EncodeToString(priv.Seed()),
		strings.ToUpper(hex.EncodeToString(priv.Seed())),
		base64.StdEncoding.EncodeToString(priv.Seed()),
		base64.RawURLEncoding.EncodeToString(priv.Seed()),
		base64.StdEncoding.EncodeToString(priv),
		hex.EncodeToString(priv[:8]),
		fmt.Sprint([]byte(priv[:8])), // "[12 34 ...]"
		strings.Trim(fmt.Sprint([]byte(priv[:6])), "[]"),
	}
	type nested struct {
		id   Identity
		ptr  *Identity
		Pub  Identity
		Ptr2 *Identity
	}
	n := nested{*id, id, *id, id}
	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		outputs = append(outputs,
			fmt.Sprintf(verb, id), fmt.Sprintf(verb, *id), fmt.Sprintf(verb, n), fmt.Sprintf(verb, &n),
			fmt.Sprintf(verb, []*Identity{id}), fmt.Sprintf(verb, map[string]Identity{"a": *id}))
	}
	for _, out := range outputs {
		for _, s := range secrets {
			require.NotContains(t, out, s)
		}
	}
	require.Contains(t, id.String(), id.PublicKey().String())
	require.Contains(t, fmt.Sprintf("%v", id), id.Addr().String())
}

func TestIdentityFromPrivateKey(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	id, err := IdentityFromPrivateKey(priv)
	require.NoError(t, err)
	require.True(t, bytes.Equal(priv, id.PrivateKey()))
	// The Identity keeps its own copy.
	got := id.PrivateKey()
	got[0] ^= 1
	require.True(t, bytes.Equal(priv, id.PrivateKey()))

	_, err = IdentityFromPrivateKey(priv[:32])
	require.Error(t, err)
	bad := append(ed25519.PrivateKey(nil), priv...)
	bad[40] ^= 1
	_, err = IdentityFromPrivateKey(bad)
	require.Error(t, err)
}
