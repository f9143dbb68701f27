package rendezvous

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

func stunSeeds() [][]byte {
	build := func(setters ...stun.Setter) []byte {
		m, err := stun.Build(setters...)
		if err != nil {
			panic(err)
		}
		return m.Raw
	}
	tid := stun.NewTransactionIDSetter([stun.TransactionIDSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	sw := stun.NewSoftware("agentnet/1 stun binding request padding")
	return [][]byte{
		build(tid, stun.BindingRequest, sw, stun.Fingerprint),
		build(tid, stun.BindingRequest, sw),
		build(tid, stun.BindingRequest),
		build(tid, stun.BindingSuccess, sw),
		build(tid, stun.NewType(stun.MethodBinding, stun.ClassIndication), sw),
		[]byte("\x00not stun"),
	}
}

// FuzzSTUNAnswer checks the responder's promises on any datagram: it
// answers only binding requests, never with more bytes than the request,
// with a binding success of the same transaction carrying the source.
func FuzzSTUNAnswer(f *testing.F) {
	for _, s := range stunSeeds() {
		f.Add(s, true)
	}
	from := netip.MustParseAddrPort("198.51.100.9:40000")
	from6 := netip.MustParseAddrPort("[2001:db8::9]:40001")
	f.Fuzz(func(t *testing.T, b []byte, v4 bool) {
		r := &stunResponder{limit: newRateLimiter[netip.Addr](1e9, 1e9, 16)}
		src := from
		if !v4 {
			src = from6
		}
		var req, resp stun.Message
		in := append([]byte(nil), b...)
		out := r.answer(&req, &resp, in, src, time.Now())
		if string(in) != string(b) {
			t.Fatal("the request was modified")
		}
		if out == nil {
			if r.dropped.Load() != 1 || r.answered.Load() != 0 {
				t.Fatal("a drop not counted")
			}
			return
		}
		if len(out) > len(b) {
			t.Fatalf("amplification: %d-byte answer to %d bytes", len(out), len(b))
		}
		q := &stun.Message{Raw: append([]byte(nil), b...)}
		if err := q.Decode(); err != nil || q.Type != stun.BindingRequest {
			t.Fatalf("answered a datagram that is not a binding request (%v)", err)
		}
		m := &stun.Message{Raw: append([]byte(nil), out...)}
		if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess || m.TransactionID != q.TransactionID {
			t.Fatalf("bad answer %x: %v", out, err)
		}
		var xor stun.XORMappedAddress
		if err := xor.GetFrom(m); err != nil {
			t.Fatal(err)
		}
		ip, _ := netip.AddrFromSlice(xor.IP)
		if got := netip.AddrPortFrom(ip, uint16(xor.Port)); got != src {
			t.Fatalf("mapped %v, want %v", got, src)
		}
	})
}

// TestWriteSTUNSeeds rewrites testdata/fuzz/FuzzSTUNAnswer with -update-seeds.
func TestWriteSTUNSeeds(t *testing.T) {
	// Without the switch the generator still runs (it must produce valid
	// seeds), into a temporary directory.
	root := t.TempDir()
	if *updateSeeds {
		root = filepath.Join("testdata", "fuzz")
	}
	dir := filepath.Join(root, "FuzzSTUNAnswer")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range stunSeeds() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbool(true)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
