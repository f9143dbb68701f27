package rendezvous

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/rendezvous/proto"
)

func sessionSeeds() [][]byte {
	now := time.Unix(1_800_000_000, 7)
	return [][]byte{
		encodeSession(42, proto.NATEasy, []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:9"), netip.MustParseAddrPort("[2001:db8::2]:10")}, now),
		encodeSession(1, proto.NATUnknown, nil, time.Time{}),
	}
}

var limitsSeeds = []string{
	`{"key-rate": 20, "key-burst": 40, "relay-idle": "120s", "max-mailbox": 256}`,
	`{}`,
	`{"relay-burst": 100}`,
	`{"relay-idle": 30}`,
	`{"max-agents": -1}`,
	`{"key-rat": 1}`,
	`[]`,
}

var etcdURLSeeds = []string{"etcd://h1:2379,h2:2379,h3:2379", "etcd://127.0.0.1:2379/agentnet/a", "etcd://", "bbolt", "etcd://h1", "etcd://[::1]:2379"}

// FuzzDecodeSession: session records (read from etcd) never panic the
// decoder, and what it accepts re-encodes to the same bytes.
func FuzzDecodeSession(f *testing.F) {
	for _, s := range sessionSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeSession(b)
		if err != nil {
			return
		}
		e1 := encodeSession(r.Server, r.NAT, r.Locators, time.Time{})
		r2, err := decodeSession(e1)
		if err != nil || r2.Server != r.Server || r2.NAT != r.NAT || len(r2.Locators) != len(r.Locators) {
			t.Fatalf("session record does not round-trip: %v", err)
		}
	})
}

// FuzzParseLimits: any config file content is either refused with an
// error or gives Limits that the server accepts.
func FuzzParseLimits(f *testing.F) {
	for _, s := range limitsSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseLimits(b)
		if err != nil {
			return
		}
		if err := l.validate(); err != nil {
			t.Fatalf("ParseLimits accepted limits the server refuses: %v", err)
		}
	})
}

// FuzzParseEtcdURL: parsing never panics; accepted URLs have endpoints
// with ports.
func FuzzParseEtcdURL(f *testing.F) {
	for _, s := range etcdURLSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		eps, _, err := ParseEtcdURL(s)
		if err == nil && len(eps) == 0 {
			t.Fatal("accepted without endpoints")
		}
	})
}

// TestWriteEtcdFuzzSeeds rewrites the seed corpora of the fuzzers above
// with -update-seeds (and checks the generator otherwise).
func TestWriteEtcdFuzzSeeds(t *testing.T) {
	root := t.TempDir()
	if *updateSeeds {
		root = filepath.Join("testdata", "fuzz")
	}
	write := func(name string, i int, content string) {
		dir := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644))
	}
	for i, s := range sessionSeeds() {
		write("FuzzDecodeSession", i, fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s))
	}
	for i, s := range limitsSeeds {
		write("FuzzParseLimits", i, fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s))
	}
	for i, s := range etcdURLSeeds {
		write("FuzzParseEtcdURL", i, fmt.Sprintf("go test fuzz v1\nstring(%q)\n", s))
	}
}

func TestParseLimits(t *testing.T) {
	l, err := ParseLimits([]byte(`{"key-rate": 5.5, "key-burst": 10, "relay-idle": "30s", "max-network-members": 8, "max-pending-per-target": 3}`))
	require.NoError(t, err)
	require.Equal(t, Limits{KeyRate: 5.5, KeyBurst: 10, RelayIdle: 30 * time.Second, MaxNetworkMembers: 8, MaxPendingPerTarget: 3}, l)
	for in, want := range map[string]string{
		`{"key-rat": 1}`:            `unknown key "key-rat"`,
		`{"relay-idle": 30}`:        `relay-idle: want a duration string`,
		`{"relay-idle": "soon"}`:    `relay-idle: want a duration`,
		`{"max-mailbox": 1.5}`:      `max-mailbox: want a whole number`,
		`{"max-mailbox": "many"}`:   `max-mailbox: want a whole number`,
		`{"max-agents": -1}`:        `max-agents: -1 is negative`,
		`{"relay-burst": 100}`:      `below one relay frame`,
		`{"max-frame-size": 99999}`: `MaxFrameSize`,
		`[1]`:                       `want a JSON object`,
		`{`:                         `want a JSON object`,
	} {
		_, err := ParseLimits([]byte(in))
		require.ErrorContains(t, err, want, in)
	}
	require.Contains(t, LimitNames(), "max-relay-sessions")
	require.Equal(t, "max-ttl", kebab("MaxTTL"))
	require.Equal(t, "relay-packet-rate", kebab("RelayPacketRate"))
}

func TestParseEtcdURL(t *testing.T) {
	eps, prefix, err := ParseEtcdURL("etcd://h1:2379, h2:2379,[::1]:2379/agentnet/prod")
	require.NoError(t, err)
	require.Equal(t, []string{"h1:2379", "h2:2379", "[::1]:2379"}, eps)
	require.Equal(t, "/agentnet/prod/", prefix)
	for _, bad := range []string{"bbolt", "etcd://", "etcd://h1", "etcd://h1:2379,,:x"} {
		_, _, err := ParseEtcdURL(bad)
		require.Error(t, err, bad)
	}
}
