package network

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz seed corpora")

// seedDocs returns valid encodings of every kind, deterministic but for
// the random nonces and capability keys.
func seedDocs(tb testing.TB) (docs [][]byte, tokens []string) {
	owner, alice := seededSigner(1), seededSigner(2)
	info := Info{ID: 65535, Name: "a", Owner: owner.pub}
	targeted, err := NewInvite(owner, info, alice.pub, t0, time.Hour)
	require.NoError(tb, err)
	bearer, err := NewInvite(owner, Info{ID: 1, Name: "a-much-longer-network-name-of-sixty-three-characters-0123456789", Owner: owner.pub}, addressing.PublicKey{}, t0, time.Hour)
	require.NoError(tb, err)
	jt, err := NewJoin(alice, targeted, t0)
	require.NoError(tb, err)
	jb, err := NewJoin(alice, bearer, t0)
	require.NoError(tb, err)
	leave, err := NewLeave(alice, info, t0)
	require.NoError(tb, err)
	remove, err := NewRemove(owner, info, alice.pub, t0)
	require.NoError(tb, err)
	for _, d := range []Doc{targeted.Invite, bearer.Invite, jt, jb, leave, remove} {
		docs = append(docs, encode(tb, d))
	}
	return docs, []string{targeted.String(), bearer.String()}
}

func FuzzParse(f *testing.F) {
	docs, _ := seedDocs(f)
	for _, d := range docs {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Parse(b)
		if err != nil {
			return
		}
		again, err := d.AppendBinary(nil)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("round trip: %x vs %x (%v)", again, b, err)
		}
		_ = d.Verify() // must not panic
	})
}

func FuzzParseToken(f *testing.F) {
	_, tokens := seedDocs(f)
	for _, s := range tokens {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		if err := tok.Invite.Verify(); err != nil {
			t.Fatalf("ParseToken returned an invite that does not verify: %v", err)
		}
		if _, err := ParseToken(tok.String()); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

// TestWriteFuzzSeeds rewrites testdata/fuzz when run with -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	// Without the switch the generator still runs (it must produce valid
	// seeds), into a temporary directory.
	root := t.TempDir()
	if *updateSeeds {
		root = filepath.Join("testdata", "fuzz")
	}
	docs, tokens := seedDocs(t)
	write := func(target string, seeds []string) {
		dir := filepath.Join(root, target)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		old, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
		for _, name := range old {
			require.NoError(t, os.Remove(name))
		}
		for _, s := range seeds {
			name := fmt.Sprintf("seed-%x", sha256.Sum256([]byte(s)))[:21]
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644))
		}
	}
	var ds, ts []string
	for _, d := range docs {
		ds = append(ds, fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", d))
	}
	for _, s := range tokens {
		ts = append(ts, fmt.Sprintf("go test fuzz v1\nstring(%q)\n", s))
	}
	write("FuzzParse", ds)
	write("FuzzParseToken", ts)
}
