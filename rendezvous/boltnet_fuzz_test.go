package rendezvous

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentnet/agentnet/addressing"
)

// networkRecordSeeds are encoded network and member records (a member,
// a member who left and rejoined, a former member) and cut-off ones.
func networkRecordSeeds() [][]byte {
	var k addressing.PublicKey
	k[0] = 2
	now := time.Unix(1_800_000_000, 5)
	nw := encodeNetwork(NetworkRecord{ID: 1, Name: "builders", Owner: k, Created: now})
	rejoined := encodeMember(MemberRecord{Join: []byte("join"), Exit: []byte("exit"), Time: now})
	return [][]byte{
		nw,
		encodeMember(MemberRecord{Join: []byte("join"), Time: now}),
		rejoined,
		encodeMember(MemberRecord{Exit: []byte("exit")}),
		nw[:len(nw)-1],
		rejoined[:len(rejoined)/2],
	}
}

// FuzzDecodeNetworkRecords: the network record decoders never panic, and
// what they accept re-encodes canonically.
func FuzzDecodeNetworkRecords(f *testing.F) {
	for _, s := range networkRecordSeeds() {
		f.Add(s)
	}
	var k addressing.PublicKey
	k[0] = 2
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

// TestWriteNetworkRecordSeeds rewrites testdata/fuzz/FuzzDecodeNetworkRecords
// with -update-seeds (and checks the generator otherwise).
func TestWriteNetworkRecordSeeds(t *testing.T) {
	root := t.TempDir()
	if *updateSeeds {
		root = filepath.Join("testdata", "fuzz")
	}
	dir := filepath.Join(root, "FuzzDecodeNetworkRecords")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for i, s := range networkRecordSeeds() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644))
	}
}
