package rendezvous

import (
	"bytes"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
)

// FuzzDecodeNetworkRecords: the network record decoders never panic, and
// what they accept re-encodes canonically.
func FuzzDecodeNetworkRecords(f *testing.F) {
	var k addressing.PublicKey
	k[0] = 2
	now := time.Unix(1_800_000_000, 5)
	f.Add(encodeNetwork(NetworkRecord{ID: 1, Name: "builders", Owner: k, Created: now}))
	f.Add(encodeMember(MemberRecord{Join: []byte("join"), Exit: []byte("exit"), Time: now}))
	f.Add(encodeMember(MemberRecord{Exit: []byte("exit")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeNetwork(1, b); err == nil {
			e1 := encodeNetwork(r)
			r2, err := decodeNetwork(1, e1)
			if err != nil || !bytes.Equal(encodeNetwork(r2), e1) {
				t.Fatalf("network record does not round-trip: %v", err)
			}
		}
		if m, err := decodeMember(1, k, b); err == nil {
			e1 := encodeMember(m)
			m2, err := decodeMember(1, k, e1)
			if err != nil || !bytes.Equal(encodeMember(m2), e1) {
				t.Fatalf("member record does not round-trip: %v", err)
			}
		}
	})
}
