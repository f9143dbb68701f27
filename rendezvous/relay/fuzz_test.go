package relay

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentnet/agentnet/internal/relayframe"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz seed corpora")

// The fuzzed session: fixed ID and secrets, side 0 bound to fuzzA, side 1
// to fuzzB.
var (
	fuzzID      = relayframe.Session{0xfe, 1, 2, 3, 4, 5, 6, 7}
	fuzzSecrets = [2][relayframe.SecretSize]byte{{1}, {2}}
	fuzzA       = netip.MustParseAddrPort("192.0.2.1:1000")
	fuzzB       = netip.MustParseAddrPort("192.0.2.2:2000")
	fuzzEvil    = netip.MustParseAddrPort("192.0.2.3:3000")
)

func relaySeeds() [][]byte {
	return [][]byte{
		relayframe.AppendBind(nil, fuzzID, 0, 5, fuzzSecrets[0]),
		relayframe.AppendBind(nil, fuzzID, 1, 5, fuzzSecrets[1]),
		relayframe.AppendBind(nil, fuzzID, 1, 5, fuzzSecrets[0]),
		relayframe.AppendData(nil, fuzzID, []byte("payload")),
		relayframe.AppendData(nil, relayframe.Session{9}, []byte("payload")),
		relayframe.AppendBindOK(nil, fuzzID, 0, 5),
		{0x00, 1},
	}
}

// FuzzHandle feeds any datagram from either bound side or a stranger to the
// relay's dispatcher and checks its promises: Data is forwarded unchanged,
// only from a bound address to the other one; a Bind is confirmed only to
// its sender, with a valid MAC and a growing counter; nothing else answers.
func FuzzHandle(f *testing.F) {
	for _, s := range relaySeeds() {
		for who := range byte(3) {
			f.Add(s, who)
		}
	}
	conn := listen(f)
	f.Fuzz(func(t *testing.T, b []byte, who byte) {
		s, err := New(Config{Conn: conn})
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		ss := &session{id: fuzzID, secrets: fuzzSecrets, bound: [2]netip.AddrPort{fuzzA, fuzzB},
			counter: [2]uint64{1, 1}, last: now,
			bytes: bucket{tokens: s.burst, last: now}, packets: bucket{tokens: s.packetBurst, last: now}}
		s.sessions[fuzzID] = ss
		from := [3]netip.AddrPort{fuzzA, fuzzB, fuzzEvil}[who%3]
		in := bytes.Clone(b)
		out, to := s.handle(in, from, now, nil)
		if !bytes.Equal(in, b) {
			t.Fatal("the datagram was modified")
		}
		if out == nil {
			return
		}
		switch {
		case len(b) > 0 && b[0] == relayframe.TypeData:
			if !bytes.Equal(out, b) {
				t.Fatal("Data changed in transit")
			}
			if !(from == fuzzA && to == fuzzB) && !(from == fuzzB && to == fuzzA) {
				t.Fatalf("Data from %v forwarded to %v", from, to)
			}
		case len(b) > 0 && b[0] == relayframe.TypeBind:
			f, err := relayframe.ParseBind(b)
			if err != nil || relayframe.VerifyBind(b, fuzzSecrets[f.Side]) != nil || f.Counter <= 1 || f.Session != fuzzID {
				t.Fatalf("a bad Bind was accepted: %+v %v", f, err)
			}
			if to != from || !bytes.Equal(out, relayframe.AppendBindOK(nil, f.Session, f.Side, f.Counter)) {
				t.Fatalf("bad BindOK %x to %v", out, to)
			}
			if ss.bound[f.Side] != from {
				t.Fatal("an accepted Bind did not bind its sender")
			}
		default:
			t.Fatalf("answered %x to %x", out, b)
		}
	})
}

// TestWriteFuzzSeeds rewrites testdata/fuzz/FuzzHandle with -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-seeds to rewrite the seed corpora")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandle")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range relaySeeds() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbyte('\\x%02x')\n", s, i%3)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
