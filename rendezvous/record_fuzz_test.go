package rendezvous

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

func recordSeeds() [][]byte {
	var k addressing.PublicKey
	k[0] = 1
	now := time.Unix(1_800_000_000, 5)
	return [][]byte{
		encodeAgent(AgentRecord{Key: k, Hostname: "alice", Created: now, LastSeen: now,
			Locators: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:9"), netip.MustParseAddrPort("[2001:db8::2]:10")}}),
		encodeAgent(AgentRecord{}),
		encodePending(PendingRequest{Nonce: [16]byte{3}, Time: now, Msg: []byte("request")}),
		encodePair(TrustPair{A: k, B: k, Request: []byte("r"), Approve: []byte("a"), Created: now}),
		// Version 2 fields, and version 1 records as the previous layout wrote them.
		encodePending(PendingRequest{Nonce: [16]byte{4}, Time: now, Msg: []byte("q"), Source: netip.MustParsePrefix("198.18.7.0/24"), Member: true, MailID: 77}),
		encodeAgent(AgentRecord{Key: k, Source: netip.MustParsePrefix("2001:db8:1::/48"), Created: now}),
		appendTime(appendTime([]byte{1, 1, 'b', 0}, now), now),
		appendBytes16(appendTime(append([]byte{1}, make([]byte, 16)...), now), []byte("v1 request")),
	}
}

// FuzzDecodeRecords: the stored-record decoders never panic, and what they
// accept re-encodes canonically.
func FuzzDecodeRecords(f *testing.F) {
	for _, s := range recordSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var k addressing.PublicKey
		if r, err := decodeAgent(k, b); err == nil {
			e1 := encodeAgent(r)
			r2, err := decodeAgent(k, e1)
			if err != nil || !bytes.Equal(encodeAgent(r2), e1) {
				t.Fatalf("agent record does not round-trip: %v", err)
			}
		}
		if p, err := decodePending(k, k, b); err == nil {
			e1 := encodePending(p)
			p2, err := decodePending(k, k, e1)
			if err != nil || !bytes.Equal(encodePending(p2), e1) {
				t.Fatalf("pending record does not round-trip: %v", err)
			}
		}
		if p, err := decodePair(b); err == nil {
			e1 := encodePair(p)
			p2, err := decodePair(e1)
			if err != nil || !bytes.Equal(encodePair(p2), e1) {
				t.Fatalf("pair record does not round-trip: %v", err)
			}
		}
	})
}

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz seed corpora")

// TestWriteFuzzSeeds rewrites testdata/fuzz/FuzzDecodeRecords when run with
// -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	// Without the switch the generator still runs (it must produce valid
	// seeds), into a temporary directory.
	root := t.TempDir()
	if *updateSeeds {
		root = filepath.Join("testdata", "fuzz")
	}
	dir := filepath.Join(root, "FuzzDecodeRecords")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range recordSeeds() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
